"""Clean virtual environments for the tests that need another stack than the project's (other transformers releases).

Each venv sees torch 2.13.0 (the CPU build on local disk; a bare `torch` would download a CUDA build): it is
installed once, into a folder of its own that every venv reads through a `.pth` file (copying its 1.9 GB into each
venv took most of their build time), before the packages asked for. A package named without a version gets the one constraints.txt pins (the stack CI tests);
the rest of what they need is left to pip, because another transformers release may need other versions of its
own dependencies (5.16.1 needs huggingface_hub < 2). `-e PATH[extra]` installs a local project (this one, into
vLLM's venv) as it is; `-c FILE` applies a constraints file to the whole install, as README's commands do. Venvs
are built in parallel, once per test session; the torch folder is shared by every call. A venv made with another
interpreter (`interpreters`, the newest Python lane) cannot read that folder: it installs torch 2.13.0 itself, which
on any Python but 3.11 is PyPI's CUDA build (about 5 GB installed), before its requirements, without pip's cache.
"""

import glob
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONSTRAINTS = REPO / "constraints.txt"
INSTALL_TIMEOUT_S = 1200
NEWEST_PYTHON = "3.13"  # the newest CPython the compatibility lane installs the package on (README)
_TORCH_SITE = []  # the folder torch 2.13.0 was installed into by this session's first `create_venvs`


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[; @]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def pinned(requirement: str) -> str:
    """`requirement` as given if it has a version, else at the version constraints.txt pins."""
    if re.search(r"[<>=!~@]", requirement) or requirement.startswith(("-e ", "-c ")):
        return requirement
    for line in CONSTRAINTS.read_text().splitlines():
        if not line.startswith("#") and _name(line) == _name(requirement):
            return line.strip()
    raise ValueError(f"{requirement!r} has no version and constraints.txt does not pin it.")


def _torch_site(root: Path) -> Path:
    if not _TORCH_SITE:
        torch_site = root / "torch-site"
        done = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check",
                               "--no-input", "--target", str(torch_site), "torch==2.13.0"], capture_output=True,
                              text=True, timeout=INSTALL_TIMEOUT_S)
        if done.returncode != 0:
            raise RuntimeError(f"Installing torch 2.13.0 for the venvs failed:\n{done.stderr[-4000:]}")
        _TORCH_SITE.append(torch_site)
    return _TORCH_SITE[0]


def _quoted(requirement: str) -> str:
    requirement = pinned(requirement)
    return f"{requirement[:3]}'{requirement[3:]}'" if requirement.startswith(("-e ", "-c ")) else f"'{requirement}'"


def find_python(version: str) -> str | None:
    """An interpreter of `version` ("3.13") that runs: `MMMMODAL_PYTHON_<3_13>`, `pythonX.Y` on PATH (a pyenv shim
    of a version that is not activated fails, and is passed over), then pyenv's own folder; None if there is none."""
    found = [os.environ.get(f"MMMMODAL_PYTHON_{version.replace('.', '_')}"), shutil.which(f"python{version}"),
             *sorted(glob.glob(os.path.join(os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv")), "versions",
                                            f"{version}.*", "bin", f"python{version}")), reverse=True)]
    for python in filter(None, found):
        check = subprocess.run([python, "-c", "import sys, venv; print('%d.%d' % sys.version_info[:2])"],
                               capture_output=True, text=True, timeout=60)
        if check.returncode == 0 and check.stdout.strip() == version:
            return python
    return None


def create_venvs(root: Path, specs: dict[str, list[str]], uninstall: dict[str, list[str]] | None = None,
                 interpreters: dict[str, str] | None = None) -> dict[str, Path]:
    """Build one venv per `specs` entry (name -> requirements) in parallel; returns name -> its python.

    `uninstall` names packages to remove from a venv after its install (what a package pulls in but must not have).
    `interpreters` gives a venv another Python than this one (name -> interpreter); it installs its own torch.
    Raises with the end of the install log when an install fails.
    """
    root.mkdir(parents=True, exist_ok=True)
    interpreters = interpreters or {}
    torch_site = _torch_site(root) if set(specs) - set(interpreters) else None
    running = {}
    for name, requirements in specs.items():
        folder = root / name
        python = folder / "bin" / "python"
        purelib = f"$({python} -c 'import sysconfig; print(sysconfig.get_paths()[\"purelib\"])')"
        pip = f"{python} -m pip -q --disable-pip-version-check --no-input"
        if name in interpreters:  # no second copy of its CUDA downloads left in pip's cache
            pip += " --no-cache-dir"
            torch = f"{interpreters[name]} -m venv {folder}; {pip} install torch==2.13.0"
        else:
            torch = f"{sys.executable} -m venv {folder}; echo {torch_site} > {purelib}/shared-torch.pth"
        script = f"set -e; {torch}; {pip} install " + " ".join(_quoted(r) for r in requirements)
        if (uninstall or {}).get(name):
            script += f"; {pip} uninstall -y " + " ".join(uninstall[name])
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
