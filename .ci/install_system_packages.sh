#!/usr/bin/env bash
# The Debian packages the tests drive (the Python packages come with the `test` extra):
# - chromium, for the web demo's browser test. Never `playwright install`: it downloads a browser build; the test
#   drives Debian's /usr/bin/chromium instead.
# - FFmpeg's libraries, which torchcodec needs to decode audio (datasets' `Audio` feature decodes through it).
# If a package cannot be installed (no apt-get, no root), this says so and the tests that need it skip with that
# reason.
set -uo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v ffmpeg >/dev/null 2>&1 || missing+=(ffmpeg)
if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then
    SUDO="sudo -n"
fi
if command -v apt-get >/dev/null 2>&1; then
    if $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"; then
        exit 0
    fi
fi
echo "install_system_packages.sh: could not install Debian's ${missing[*]}; tests/test_usage_gradio.py (chromium)" \
     "and the datasets Audio tests (ffmpeg) will be skipped." >&2
exit 0
