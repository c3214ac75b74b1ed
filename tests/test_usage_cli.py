"""The `mmmmodal` command itself: `--version`, `--log-level`, and which code loads a checkpoint."""

import json
import logging
import os
import subprocess
import sys
from importlib.metadata import version

import pytest

from mmmmodal.loading import load_checkpoint
from mmmmodal.build import build_tiny_checkpoint

CLI = [sys.executable, "-m", "mmmmodal.cli"]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}


def _run(*args, stdin="", env=ENV, timeout=240):
    return subprocess.run([*CLI, *args], input=stdin, capture_output=True, text=True, timeout=timeout, env=env)


def test_version_names_the_package_and_its_stack():
    result = _run("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == (f"mmmmodal {version('mmmmodal')} (transformers {version('transformers')}, "
                                     f"torch {version('torch')})")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return build_tiny_checkpoint(tmp_path_factory.mktemp("cli"))[2]


def test_info_messages_show_by_default_and_log_level_sets_the_threshold(checkpoint, tmp_path, capsys):
    from mmmmodal.cli import main

    (checkpoint / "notes.txt").write_text("not for the hub")
    try:
        assert main(["publish", str(checkpoint), "--repo-id", "me/tiny", "--dry-run", str(tmp_path / "a")]) == 0
        shown = capsys.readouterr().err
        assert main(["--log-level", "warning", "publish", str(checkpoint), "--repo-id", "me/tiny",
                     "--dry-run", str(tmp_path / "b")]) == 0
        hidden = capsys.readouterr().err
        logging.getLogger("processing.jsonl_io").info("rows: 3 to do")  # still at warning: not shown
        assert main(["publish", str(checkpoint), "--repo-id", "me/tiny", "--dry-run", str(tmp_path / "c"),
                     "--log-level", "info"]) == 0  # after the command works too
        logging.getLogger("processing.jsonl_io").info("rows: 3 to do")  # the data side's loggers follow
        logging.getLogger("httpx").info("noise")  # other libraries' info stays quiet
        again = capsys.readouterr().err
    finally:
        (checkpoint / "notes.txt").unlink()
    assert "INFO mmmmodal.publish: Not uploading (not part of a model repository): notes.txt" in shown
    assert "Not uploading" not in hidden and "3 to do" not in hidden
    assert "Not uploading" in again and again.count("INFO processing.jsonl_io: rows: 3 to do") == 1
    assert "noise" not in again


def test_the_checkpoints_own_code_runs_only_with_trust_remote_code(checkpoint, tmp_path, monkeypatch, caplog):
    from mmmmodal.cli import build_parser

    marker = tmp_path / "ran"
    monkeypatch.setenv("MMMMODAL_TEST_MARKER", str(marker))
    code = checkpoint / "modeling_mmmmodal.py"
    original = code.read_text()
    code.write_text("import os as _os\nopen(_os.environ['MMMMODAL_TEST_MARKER'], 'w').write('ran')\n" + original)
    try:
        for command in ("chat", "serve"):
            assert build_parser().parse_args([command, str(checkpoint)]).trust_remote_code is False
            assert build_parser().parse_args([command, str(checkpoint), "--trust-remote-code"]).trust_remote_code
        with caplog.at_level(logging.INFO, logger="mmmmodal.loading"):
            model, processor = load_checkpoint(str(checkpoint))
        assert not marker.exists()
        assert type(model).__module__ == "modeling_mmmmodal.modeling_mmmmodal"
        assert type(processor).__module__ == "modeling_mmmmodal.processing_mmmmodal"
        assert "modeling_mmmmodal.py differ from the installed mmmmodal package's" in caplog.text
        assert "with the installed mmmmodal classes" in caplog.text
        model, processor = load_checkpoint(str(checkpoint), trust_remote_code=True)
        assert marker.read_text() == "ran" and type(model).__module__.startswith("transformers_modules.")
    finally:
        code.write_text(original)


def test_a_checkpoint_of_another_model_type_is_refused_before_loading(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "auto_map": {"AutoConfig": "evil.X"}}))
    with pytest.raises(ValueError, match="is a 'llama' checkpoint, not an MMMModal one"):
        load_checkpoint(str(tmp_path))
    with pytest.raises(ValueError, match="Cannot read the config"):
        load_checkpoint(str(tmp_path / "missing"))


def test_task_flags_come_from_the_task_configs_fields(capsys):
    """`mmmmodal data synthetic` writes one flag per TaskConfig field (its help from the field), and each reaches the
    config; no flag given gives the config's own defaults."""
    from dataclasses import fields

    from mmmmodal.cli import build_parser, dataclass_from_args
    from processing.synthetic_task import TaskConfig

    parser = build_parser()
    base = ["data", "synthetic", "--out", "x"]
    assert dataclass_from_args(TaskConfig, parser.parse_args(base)) == TaskConfig()
    args = parser.parse_args(base + ["--image-size", "48", "--clip-seconds", "1", "--beep-seconds", "0.1",
                                     "--max-images", "1", "--max-audios", "2", "--max-turns", "3", "--languages", "ms",
                                     "--one-word-comparisons"])
    expected = TaskConfig(image_size=48, clip_seconds=1.0, beep_seconds=0.1, max_images=1, max_audios=2, max_turns=3,
                          languages=("ms",), explain_comparisons=False)
    assert dataclass_from_args(TaskConfig, args) == expected
    assert {f.name for f in fields(TaskConfig)} - set(vars(args)) == {"weights"}  # a dict has no flag
    with pytest.raises(SystemExit):
        parser.parse_args(["data", "synthetic", "--help"])
    shown = " ".join(capsys.readouterr().out.split())
    assert all(" ".join(f.metadata["help"].split()) in shown for f in fields(TaskConfig) if f.name != "weights")


def test_a_bad_task_flag_is_refused_with_the_reason(tmp_path, capsys):
    from mmmmodal.cli import main

    with pytest.raises(SystemExit, match="expected some of \\['en', 'ms'\\], found \\['fr'\\]"):
        main(["data", "synthetic", "--out", str(tmp_path / "s"), "--train", "1", "--test", "1", "--languages", "fr"])
    assert not (tmp_path / "s" / "train.jsonl").exists()


def test_demo_flags_are_the_demo_arguments_fields():
    from dataclasses import fields

    from mmmmodal.cli import build_parser, dataclass_from_args
    from mmmmodal.demo import DemoArguments

    parser = build_parser()
    assert dataclass_from_args(DemoArguments, parser.parse_args(["demo", "--out", "d"])) == DemoArguments(out="d")
    args = parser.parse_args(["demo", "--out", "d", "--vision", "v", "--audio", "a", "--text", "t", "--minutes", "3.5",
                              "--seed", "4", "--quick", "--threads", "2"])
    given = DemoArguments("d", "v", "a", "t", 3.5, 4, True, 2)
    assert dataclass_from_args(DemoArguments, args) == given and given.budget_minutes == 3.5
    assert DemoArguments("d").budget_minutes == 10 and DemoArguments("d", quick=True).budget_minutes == 2
    assert {f.name for f in fields(DemoArguments)} <= set(vars(args))
    with pytest.raises(SystemExit):  # --out is required
        parser.parse_args(["demo"])
