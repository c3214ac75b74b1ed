"""README's commands and example are the real ones."""

import re
import subprocess
import sys
from pathlib import Path

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


def test_declared_ranges_are_in_readme_and_hold_the_pinned_stack():
    from packaging.requirements import Requirement

    setup = (ROOT / "setup.py").read_text()
    block = setup[setup.index("install_requires=[") : setup.index("],", setup.index("install_requires=["))]
    declared = re.findall(r'"([^"]+)"', block)
    pins = {Requirement(line).name.lower(): Requirement(line) for line in
            (ROOT / "constraints.txt").read_text().splitlines() if line and not line.startswith("#")}
    readme = (ROOT / "README.md").read_text()
    for text in declared:
        requirement = Requirement(text)
        if requirement.specifier:  # a range: written in README, and the CI stack inside it
            assert f"`{text}`" in readme, text
            pinned = next(iter(pins[requirement.name.lower()].specifier)).version
            assert requirement.specifier.contains(pinned), (requirement, pinned)
