"""`mmmmodal publish` and `push_to_hub`: a complete Hub repository, checked at the `huggingface_hub` boundary."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf
from huggingface_hub import HfApi, ModelCard
from PIL import Image

from mmmmodal.cli import main
from mmmmodal.publish import CODE_FILES, check_repository
from mmmmodal.build import build_tiny

BASES = ["google/siglip-base-patch16-384", "openai/whisper-small", "TinyLlama/TinyLlama-1.1B-Chat-v1.0"]
EXPECTED_FILES = {
    "README.md", "config.json", "generation_config.json", "model.safetensors", "processor_config.json",
    "tokenizer.json", "tokenizer_config.json", "chat_template.jinja", *CODE_FILES,
}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("publish")
    model, processor = build_tiny(root / "build")
    model.config.base_models = BASES  # as `compose_model` records them when built from hub ids
    folder = root / "checkpoint"
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    (folder / "optimizer.pt").write_bytes(b"training state, not for the hub")
    (folder / "runs").mkdir()
    return SimpleNamespace(folder=folder, model=model, processor=processor, root=root)


def _stage(checkpoint, out):
    argv = ["publish", str(checkpoint.folder), "--repo-id", "someone/tiny-mmmmodal", "--dataset", "someone/shapes-beeps"]
    return main(argv + ["--dry-run", str(out)] if out else argv)


def _snippet(readme: str) -> str:
    return re.search(r"```python\n(.*?)```", readme, re.S).group(1)


def test_dry_run_writes_a_complete_repository_with_a_model_card(checkpoint, tmp_path):
    out = tmp_path / "repo"
    assert _stage(checkpoint, out) == 0
    assert {p.name for p in out.iterdir()} == EXPECTED_FILES  # optimizer.pt and runs/ stay out
    config = json.loads((out / "config.json").read_text())
    assert config["auto_map"]["AutoModelForImageTextToText"] == "modeling_mmmmodal.MMMModalForConditionalGeneration"
    card = ModelCard.load(out / "README.md")
    assert card.data.license == "apache-2.0"
    assert card.data.library_name == "transformers"
    assert card.data.pipeline_tag == "any-to-any"
    assert card.data.base_model == BASES
    assert card.data.datasets == ["someone/shapes-beeps"]
    assert 'repo_id = "someone/tiny-mmmmodal"' in _snippet(card.content)
    with pytest.raises(ValueError, match="not empty"):
        _stage(checkpoint, out)


def test_the_staged_folder_loads_and_generates_in_a_clean_process(checkpoint, tmp_path):
    out = tmp_path / "repo"
    _stage(checkpoint, out)
    Image.new("RGB", (40, 40), (220, 30, 30)).save(tmp_path / "picture.png")
    sf.write(tmp_path / "clip.wav", np.sin(np.arange(16_000) * 0.1).astype(np.float32), 16_000)
    # The card's own snippet, pointed at the folder; this package is made unimportable, so only the repository's
    # code files can serve.
    code = _snippet((out / "README.md").read_text()).replace("someone/tiny-mmmmodal", str(out))
    guard = "import sys\nfor name in ('modeling_mmmmodal', 'mmmmodal', 'processing'):\n    sys.modules[name] = None\n"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    code = code.replace("max_new_tokens=64", "max_new_tokens=5")
    code += "print('NEW_TOKENS', output.shape[1] - inputs['input_ids'].shape[1], type(model).__module__)\n"
    result = subprocess.run([sys.executable, "-c", guard + code], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    new_tokens, module = result.stdout.strip().splitlines()[-1].split()[1:]
    assert int(new_tokens) >= 1 and module.startswith("transformers_modules.")
    assert (tmp_path / "modules" / "transformers_modules").is_dir()  # loaded through remote code


def test_publish_uploads_the_staged_folder_through_hfapi(checkpoint, tmp_path, monkeypatch):
    calls = {}

    def create_repo(self, repo_id, **kwargs):
        calls["create_repo"] = (repo_id, kwargs)
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        folder = Path(folder_path)
        calls["upload_folder"] = (repo_id, kwargs)
        calls["files"] = {p.name: p.read_bytes() for p in folder.iterdir()}
        return "commit-url"

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    assert _stage(checkpoint, None) == 0
    assert calls["create_repo"] == ("someone/tiny-mmmmodal", {"private": False, "exist_ok": True, "repo_type": "model"})
    assert calls["upload_folder"][0] == "someone/tiny-mmmmodal"
    assert set(calls["files"]) == EXPECTED_FILES
    assert calls["files"]["model.safetensors"] == (checkpoint.folder / "model.safetensors").read_bytes()
    staged = tmp_path / "staged"
    _stage(checkpoint, staged)
    assert calls["files"]["README.md"] == (staged / "README.md").read_bytes()  # what --dry-run shows is what goes up


def test_push_to_hub_on_model_and_processor_sends_complete_files(checkpoint, monkeypatch):
    from huggingface_hub.errors import EntryNotFoundError

    commits = []

    def create_commit(self, repo_id, operations, **kwargs):
        commits.append({op.path_in_repo: Path(op.path_or_fileobj).read_bytes() for op in operations})
        return SimpleNamespace(commit_url="commit-url", oid="0" * 40)

    def no_card(*args, **kwargs):
        raise EntryNotFoundError("no README.md yet")

    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kw: SimpleNamespace(repo_id=repo_id))
    monkeypatch.setattr(HfApi, "create_commit", create_commit)
    monkeypatch.setattr(ModelCard, "load", classmethod(no_card))
    checkpoint.model.push_to_hub("someone/tiny-mmmmodal")
    checkpoint.processor.push_to_hub("someone/tiny-mmmmodal")
    model_files, processor_files = map(set, commits)
    assert {"model.safetensors", "config.json", "modeling_mmmmodal.py", "configuration_mmmmodal.py"} <= model_files
    assert json.loads(commits[0]["config.json"])["auto_map"]["AutoModel"].startswith("modeling_mmmmodal.")
    assert {"processor_config.json", "chat_template.jinja", "tokenizer.json", "processing_mmmmodal.py"} <= processor_files


def test_an_incomplete_checkpoint_is_refused(checkpoint, tmp_path):
    partial = tmp_path / "partial"
    partial.mkdir()
    for name in ("config.json", "model.safetensors"):
        (partial / name).write_bytes((checkpoint.folder / name).read_bytes())
    with pytest.raises(ValueError, match="processor_config.json.*no code file"):
        check_repository(partial)
