#!/usr/bin/env bash
# Debian's Chromium for the web demo's browser test (the Python packages come with the `test` extra).
# Never `playwright install`: it downloads a browser build; the test drives Debian's /usr/bin/chromium instead.
# If Chromium cannot be installed (no apt-get, no root), this says so and the browser test skips with that reason.
set -uo pipefail
cd "$(dirname "$0")/.."

if command -v chromium >/dev/null 2>&1; then
    exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then
    SUDO="sudo -n"
fi
if command -v apt-get >/dev/null 2>&1; then
    if $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium; then
        chromium --version || true
        exit 0
    fi
fi
echo "install_browser.sh: could not install Debian's chromium; tests/test_usage_gradio.py will be skipped." >&2
exit 0
