"""Clean virtual environments for the tests that need another stack than the project's (other transformers releases).

Each venv sees torch 2.13.0 (the CPU build on local disk; a bare `torch` would download a CUDA build): it is
installed once, into a folder of its own that every venv reads through a `.pth` file (copying its 1.9 GB into each
venv took most of their build time), before the packages asked for. A package named without a version gets the one constraints.txt pins (the stack CI tests);
the rest of what they need is left to pip, because another transformers release may need other versions of its
own dependencies (5.16.1 needs huggingface_hub < 2). Venvs are built in parallel, once per test session.
"""

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONSTRAINTS = REPO / "constraints.txt"
INSTALL_TIMEOUT_S = 1200


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[; @]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def pinned(requirement: str) -> str:
    """`requirement` as given if it has a version, else at the version constraints.txt pins."""
    if re.search(r"[<>=!~@]", requirement):
        return requirement
    for line in CONSTRAINTS.read_text().splitlines():
        if not line.startswith("#") and _name(line) == _name(requirement):
            return line.strip()
    raise ValueError(f"{requirement!r} has no version and constraints.txt does not pin it.")


def create_venvs(root: Path, specs: dict[str, list[str]]) -> dict[str, Path]:
    """Build one venv per `specs` entry (name -> requirements) in parallel; returns name -> its python.

    Raises with the end of the install log when an install fails.
    """
    root.mkdir(parents=True, exist_ok=True)
    torch_site = root / "torch-site"
    done = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-input",
                           "--target", str(torch_site), "torch==2.13.0"], capture_output=True, text=True,
                          timeout=INSTALL_TIMEOUT_S)
    if done.returncode != 0:
        raise RuntimeError(f"Installing torch 2.13.0 for the venvs failed:\n{done.stderr[-4000:]}")
    running = {}
    for name, requirements in specs.items():
        folder = root / name
        python = folder / "bin" / "python"
        purelib = f"$({python} -c 'import sysconfig; print(sysconfig.get_paths()[\"purelib\"])')"
        script = (f"set -e; {sys.executable} -m venv {folder}; echo {torch_site} > {purelib}/shared-torch.pth; "
                  f"{python} -m pip install -q --disable-pip-version-check --no-input "
                  + " ".join(f"'{pinned(r)}'" for r in requirements))
        log = root / f"{name}.log"
        running[name] = (subprocess.Popen(["bash", "-c", script], stdout=log.open("w"), stderr=subprocess.STDOUT),
                         log, folder)
    pythons = {}
    try:
        for name, (process, log, folder) in running.items():
            try:
                code = process.wait(timeout=INSTALL_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                code = "timeout"
            if code != 0:
                raise RuntimeError(f"Building the venv {name!r} failed ({code}):\n{log.read_text()[-4000:]}")
            pythons[name] = folder / "bin" / "python"
    finally:
        for process, _, _ in running.values():
            if process.poll() is None:
                process.kill()
    return pythons
