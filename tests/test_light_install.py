"""README's first command, the plain install (no extras), in a clean venv: no DeepSpeed, and still every command,
the server and the quick demo; a training run that asks for DeepSpeed stops with the command that installs it.

One subprocess does all the checks, because each start of a fresh interpreter there imports torch, transformers and
TRL again (the venv build itself is most of this file's time).
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests._venvs import CONSTRAINTS, REPO, create_venvs

CHECKS = r'''
import contextlib, importlib.metadata, io, json, os, runpy, sys
import fastapi, uvicorn, mmmmodal.build, mmmmodal.chat, mmmmodal.data, mmmmodal.demo, mmmmodal.publish, mmmmodal.serve
from mmmmodal.cli import main

report = {"installed": sorted(d.metadata["Name"].lower() for d in importlib.metadata.distributions())}
help_text = io.StringIO()
with contextlib.redirect_stdout(help_text), contextlib.suppress(SystemExit):
    main(["--help"])
report["help"] = help_text.getvalue()
report["demo"] = main(["demo", "--quick", "--out", sys.argv[1]])
require = runpy.run_path("examples/sft.py", run_name="sft")["require_deepspeed_if_asked"]
report["refused"] = {}
for how, argv, environ in [("--deepspeed", ["--deepspeed", "examples/deepspeed/zero2_offload.json"], {}),
                           ("an accelerate config", [], {"ACCELERATE_USE_DEEPSPEED": "true"})]:
    try:
        require(argv, environ)
        report["refused"][how] = None
    except SystemExit as stop:
        report["refused"][how] = str(stop)
print(json.dumps(report))
'''


@pytest.fixture(scope="module")
def light(tmp_path_factory) -> dict:
    """What the checks saw in a venv made by README's first command: torch 2.13.0, `pip install -e . -c
    constraints.txt`."""
    root = tmp_path_factory.mktemp("light_venv")
    python = create_venvs(root, {"light": [f"-e {REPO}", f"-c {CONSTRAINTS}"]})["light"]
    result = subprocess.run([str(python), "-c", CHECKS, str(root / "demo")], capture_output=True, text=True,
                            timeout=900, cwd=REPO, env={"PATH": f"{python.parent}:/usr/bin:/bin", "HOME": str(Path.home())})
    assert result.returncode == 0, result.stderr[-4000:]
    return {**json.loads(result.stdout.strip().splitlines()[-1]), "demo_out": root / "demo"}


def test_the_plain_install_has_no_deepspeed_and_every_command(light):
    assert {"mmmmodal", "trl", "accelerate", "fastapi", "uvicorn"} <= set(light["installed"])
    assert "deepspeed" not in light["installed"]
    assert all(command in light["help"] for command in ("build", "demo", "chat", "serve", "publish", "data"))


def test_the_quick_demo_runs_on_the_plain_install(light):
    assert light["demo"] == 0
    assert json.loads((light["demo_out"] / "report.json").read_text())["quick"] is True


@pytest.mark.parametrize("how", ["an accelerate config", "--deepspeed"])
def test_a_run_that_asks_for_deepspeed_names_the_install_command(light, how):
    """`accelerate launch` with a DeepSpeed config sets ACCELERATE_USE_DEEPSPEED in every process it starts;
    `--deepspeed` is TrainingArguments' own flag. Either way examples/sft.py stops before it trains."""
    message = light["refused"][how]
    assert message and 'pip install "mmmmodal[deepspeed]"' in message
    assert 'pip install -e ".[deepspeed]" -c constraints.txt' in message


def test_the_project_venv_has_deepspeed_for_the_suite():
    """README's second command (the `test` extra) is the one that brings DeepSpeed."""
    result = subprocess.run([sys.executable, "-c", "import importlib.metadata as m; print(m.version('deepspeed'))"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stdout.strip() == "0.19.8", result.stderr[-2000:]
