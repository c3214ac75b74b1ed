"""README's commands and example are the real ones."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _blocks(language):
    return re.findall(rf"```{language}\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)


def test_ci_runs_the_readme_test_command():
    setup_and_demo, setup_and_tests = _blocks("bash")[:2]
    assert "mmmmodal demo" in setup_and_demo and setup_and_demo.startswith("pip install torch==2.13.0")
    assert setup_and_tests.strip() in (ROOT / ".ci" / "run").read_text()


def test_quickstart_in_readme_is_the_example_and_runs(tmp_path):
    script = (ROOT / "examples" / "quickstart.py").read_text()
    code = "\n".join(line for line in script.splitlines() if not line.startswith("#")).strip()
    assert _blocks("python")[0].strip() == code
    result = subprocess.run([sys.executable, str(ROOT / "examples" / "quickstart.py")], cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip()


def _setup_list(start: str) -> list[str]:
    setup = (ROOT / "setup.py").read_text()
    return re.findall(r'"([^"]+)"', setup[setup.index(start) : setup.index("]", setup.index(start) + len(start))])


def test_the_plain_install_leaves_deepspeed_to_its_extra_and_the_tests_take_it():
    """`pip install mmmmodal` (README's first command) has no DeepSpeed; the `deepspeed` extra and the `test` extra
    (README's second command, .ci/run) bring the same requirement."""
    setup = (ROOT / "setup.py").read_text()
    assert not any(r.startswith("deepspeed") for r in _setup_list("install_requires=["))
    assert _setup_list("DEEPSPEED = [") == ["deepspeed>=0.19.8,<0.20"]
    assert '"deepspeed": DEEPSPEED,' in setup and '"test": [*DEEPSPEED,' in setup
    setup_and_demo, setup_and_tests = _blocks("bash")[:2]
    assert 'pip install -e . -c constraints.txt' in setup_and_demo and '".[test]"' in setup_and_tests


PYTHON_3_10 = sorted(Path("/root/.pyenv/versions").glob("3.10.*/bin/python3.10"))


def test_the_declared_python_is_the_one_tested():
    """setup.py's python_requires holds the Python CI runs, and README names it and the newest Python the
    compatibility lane installs on."""
    from tests._venvs import NEWEST_PYTHON

    setup = (ROOT / "setup.py").read_text()
    assert 'python_requires=">=3.11",' in setup and sys.version_info[:2] >= (3, 11)
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert 'Python: 3.11 and later (`python_requires=">=3.11"`' in readme and "CI runs the suite on 3.11" in readme
    assert f"installs the package on {NEWEST_PYTHON} too" in readme


@pytest.mark.skipif(not PYTHON_3_10, reason="no Python 3.10 on this machine (a new machine has only 3.11)")
def test_python_3_10_is_refused_at_once_not_after_a_resolve(tmp_path):
    """On 3.10, README's install stops on the project's own Requires-Python, naming it, instead of failing to
    resolve trl and transformers (which need 3.11)."""
    venv = tmp_path / "py310"
    subprocess.run([str(PYTHON_3_10[-1]), "-m", "venv", str(venv)], check=True, timeout=300)
    result = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--dry-run", "--no-deps", "-e",
                             str(ROOT)], capture_output=True, text=True, timeout=600)
    assert result.returncode != 0
    assert "requires a different Python" in result.stderr and ">=3.11" in result.stderr, result.stderr[-2000:]


def test_declared_ranges_are_in_readme_and_hold_the_pinned_stack():
    from packaging.requirements import Requirement

    declared = _setup_list("install_requires=[") + _setup_list("DEEPSPEED = [")
    pins = {Requirement(line).name.lower(): Requirement(line) for line in
            (ROOT / "constraints.txt").read_text().splitlines() if line and not line.startswith("#")}
    readme = (ROOT / "README.md").read_text()
    for text in declared:
        requirement = Requirement(text)
        if requirement.specifier:  # a range: written in README, and the CI stack inside it
            assert f"`{text}`" in readme, text
            pinned = next(iter(pins[requirement.name.lower()].specifier)).version
            assert requirement.specifier.contains(pinned), (requirement, pinned)
