"""`mmmmodal publish`: turn a saved checkpoint into a complete Hub repository and upload it.

    mmmmodal publish ./my-checkpoint --repo-id me/mmmmodal-tinyllama --dataset mesolitica/... --dry-run staged/
    mmmmodal publish ./my-checkpoint --repo-id me/mmmmodal-tinyllama

The repository holds the weights (safetensors only), `config.json` with `auto_map`, the processor files and chat
template, the three code files, and a model card (`README.md`) whose YAML header names the license,
`library_name: transformers`, the pipeline tag, the three base models and the datasets, and whose usage snippet
loads the repository with `trust_remote_code=True` and generates. `--dry-run DIR` writes exactly that folder and
stops; otherwise it goes up through `huggingface_hub.HfApi` (`create_repo`, then `upload_folder`).

After a first publish, `model.push_to_hub(repo_id)` / `processor.push_to_hub(repo_id)` update the files and keep
the card (transformers loads the existing card before it uploads).
"""

import fnmatch
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

from transformers.utils import logging

logger = logging.get_logger(__name__)

# What a repository carries, by file name: everything else in a checkpoint folder (optimizer states, trainer logs,
# the build's `parts/`, pickled weights) stays out.
REPO_FILES = (
    "*.safetensors",
    "*.safetensors.index.json",
    "config.json",
    "generation_config.json",
    "processor_config.json",
    "preprocessor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
    "*.py",
)
CODE_FILES = ("configuration_mmmmodal.py", "modeling_mmmmodal.py", "processing_mmmmodal.py")
PIPELINE_TAG = "any-to-any"  # transformers' pipeline for AutoModelForMultimodalLM: image + audio + text in, text out
PART_NAMES = ("vision", "audio", "text")


def part_sources(config, override: list[str] | None = None) -> dict[str, str]:
    """What each part was built from, by part: `--base-model` values, else `config.base_models` (hub ids as given,
    local folders by their recorded name). A path (recorded by an older build) is cut to its folder's name."""
    present = [name for name, sub in zip(PART_NAMES, (config.vision_config, config.audio_config, True)) if sub]
    sources = override if override else list(getattr(config, "base_models", None) or [])
    if len(sources) != len(present):
        if sources:
            logger.warning(f"Expected {len(present)} base models ({', '.join(present)}), got {sources}; not linking them.")
        return {}
    return {name: Path(source).name if os.path.isabs(source) else source for name, source in zip(present, sources)}


def base_models(config, override: list[str] | None = None) -> dict[str, str]:
    """Hub ids of the parts the model was built from, by part (see `part_sources`).

    Local folders are left out (the Hub only links repositories).
    """
    return {name: source for name, source in part_sources(config, override).items() if _is_repo_id(source)}


def _is_repo_id(source: str) -> bool:
    return bool(re.fullmatch(r"[\w.-]+/[\w.-]+", source)) and not os.path.exists(source)


def stage_repository(checkpoint, out_dir, repo_id: str, license: str = "apache-2.0", datasets=(), base_model=None,
                     link_weights: bool = False) -> Path:
    """Write the folder that will be uploaded: the checkpoint's repository files plus `README.md`.

    Args:
        checkpoint: a folder written by `save_pretrained` (model and processor).
        out_dir: where to write; must be empty or missing.
        repo_id (`str`): `user/name`, used in the card's usage snippet.
        license, datasets, base_model: model card metadata (`base_model` overrides `config.base_models`).
        link_weights (`bool`): symlink the weight files instead of copying them (for a temporary upload folder).
    """
    from modeling_mmmmodal import MMMModalConfig

    source, out = Path(checkpoint), Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"{out} is not empty: give --dry-run a new or empty folder.")
    out.mkdir(parents=True, exist_ok=True)
    skipped = []
    for path in sorted(source.iterdir()):
        if not path.is_file() or not any(fnmatch.fnmatch(path.name, pattern) for pattern in REPO_FILES):
            skipped.append(path.name)
            continue
        if link_weights and path.suffix == ".safetensors":
            os.symlink(path.resolve(), out / path.name)
        else:
            shutil.copy2(path, out / path.name)
    if skipped:
        logger.info(f"Not uploading (not part of a model repository): {', '.join(skipped)}")
    check_repository(out)
    config = MMMModalConfig.from_pretrained(out)
    card = model_card(config, repo_id, license, list(datasets), part_sources(config, base_model))
    (out / "README.md").write_text(card, encoding="utf-8")
    return out


def check_repository(folder) -> None:
    """Raise `ValueError` naming what is missing for a repository that loads with `trust_remote_code=True`."""
    folder = Path(folder)
    names = {p.name for p in folder.iterdir()}
    problems = []
    if not any(name.endswith(".safetensors") for name in names):
        problems.append("no *.safetensors weights (save with `model.save_pretrained(dir)`)")
    problems += [f"no {name}" for name in ("config.json", "processor_config.json", "tokenizer_config.json") if name not in names]
    problems += [f"no code file {name}" for name in CODE_FILES if name not in names]
    if "config.json" in names:
        auto_map = json.loads((folder / "config.json").read_text()).get("auto_map", {})
        problems += [f"config.json auto_map lacks {key}" for key in ("AutoConfig", "AutoModel", "AutoProcessor")
                     if key not in auto_map and not (key == "AutoProcessor" and "processor_config.json" in names)]
    if not names & {"chat_template.jinja", "chat_template.json"}:
        problems.append("no chat template (chat_template.jinja)")
    if problems:
        raise ValueError(
            f"{folder} is not a complete MMMModal checkpoint: {'; '.join(problems)}. "
            "Save both model and processor with save_pretrained into the same folder."
        )


def model_card(config, repo_id: str, license: str, datasets: list[str], sources: dict[str, str]) -> str:
    """The model card: YAML metadata (through `huggingface_hub.ModelCardData`) and a usage snippet that runs.

    `sources` (from `part_sources`) fills the parts table; its hub ids are the card's `base_model`.
    """
    from huggingface_hub import ModelCardData

    bases = {name: source for name, source in sources.items() if _is_repo_id(source)}

    data = ModelCardData(
        license=license,
        library_name="transformers",
        pipeline_tag=PIPELINE_TAG,
        base_model=list(bases.values()) or None,
        datasets=datasets or None,
        language=["en", "ms"],
        tags=["mmmmodal", "multimodal", "image-text-to-text", "audio-text-to-text", "custom_code"],
    )
    parts = "\n".join(
        f"| {name} | {_part_kind(config, name)} | {_part_base(name, sources, bases)} |" for name in PART_NAMES
        if name == "text" or getattr(config, f"{name}_config") is not None
    )
    body = CARD_TEMPLATE.format(repo_id=repo_id, parts=parts, name=repo_id.split("/")[-1],
                                datasets=", ".join(f"[{d}](https://huggingface.co/datasets/{d})" for d in datasets) or "not recorded")
    return f"---\n{data.to_yaml()}\n---\n{body}"


def _part_base(name: str, sources: dict[str, str], bases: dict[str, str]) -> str:
    if name in bases:
        return bases[name]
    return f"{sources[name]} (a local folder)" if name in sources else "built locally"


def _part_kind(config, name: str) -> str:
    sub = {"vision": config.vision_config, "audio": config.audio_config, "text": config.text_config}[name]
    layer = {"vision": f", features from layer {config.vision_feature_layer}",
             "audio": f", features from layer {config.audio_feature_layer}", "text": ""}[name]
    return f"{sub.model_type} ({sub.hidden_size if hasattr(sub, 'hidden_size') else sub.d_model} wide{layer})"


CARD_TEMPLATE = '''
# {name}

An MMMModal model: multi-image, multi-audio, multi-turn chat, after *MMMModal — Multi-Images Multi-Audio Multi-turn
Multi-Modal* (Zolkepli, Razak, Adha, Nazhan). A SigLIP vision tower and a Whisper encoder feed a causal LM through
LLaVA-style projectors (vision: Linear-GELU-Linear; audio: Conv1d over time, then GELU and Linear), so one
conversation can hold any number of images and audio clips, at any turn.

| part | model | base |
|---|---|---|
{parts}

Training data: {datasets}.

## Usage

The code ships in this repository, so load it with `trust_remote_code=True` (transformers 5.23):

```python
from transformers import AutoModelForImageTextToText, AutoProcessor

repo_id = "{repo_id}"
model = AutoModelForImageTextToText.from_pretrained(repo_id, trust_remote_code=True)
processor = AutoProcessor.from_pretrained(repo_id, trust_remote_code=True)
messages = [{{"role": "user", "content": [
    {{"type": "image", "path": "picture.png"}},
    {{"type": "audio", "path": "clip.wav"}},
    {{"type": "text", "text": "What is related between picture 1 and audio 1?"}},
]}}]
inputs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                       return_dict=True, return_tensors="pt")
output = model.generate(**inputs, max_new_tokens=64)
print(processor.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))
```

Images and audio may be paths, URLs or in-memory objects (`{{"type": "image", "image": pil_image}}`); any audio
sampling rate is resampled to 16 kHz. In plain text, `<image>` and `<audio>` mark where the n-th image / clip goes.
With the `mmmmodal` package: `mmmmodal chat {repo_id}` (terminal chat) and `mmmmodal serve {repo_id}`
(OpenAI-compatible server).
'''


def publish(checkpoint, repo_id: str, private: bool = False, token=None, commit_message: str | None = None, **card):
    """Stage the repository in a temporary folder and upload it with `HfApi.create_repo` + `HfApi.upload_folder`."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    with tempfile.TemporaryDirectory(prefix="mmmmodal-publish-") as tmp:
        folder = stage_repository(checkpoint, Path(tmp) / "repo", repo_id, link_weights=True, **card)
        repo_url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        commit = api.upload_folder(
            repo_id=repo_id,
            folder_path=str(folder),
            repo_type="model",
            commit_message=commit_message or "Upload MMMModal model (mmmmodal publish)",
        )
    logger.info(f"Published {checkpoint} to {repo_url}")
    return commit


def register(subparsers):
    parser = subparsers.add_parser("publish", help="Upload a checkpoint to the Hub as a complete repository.")
    parser.add_argument("checkpoint", help="A folder written by save_pretrained (model and processor).")
    parser.add_argument("--repo-id", required=True, help="user/name on the Hub.")
    parser.add_argument("--dry-run", metavar="DIR", help="Write the folder that would be uploaded to DIR and stop.")
    parser.add_argument("--license", default="apache-2.0")
    parser.add_argument("--dataset", action="append", default=[], help="Training dataset id (repeat for several).")
    parser.add_argument("--base-model", action="append", default=None,
                        help="Hub id of a part, in the order vision, audio, text (default: config.base_models).")
    parser.add_argument("--private", action="store_true")
    parser.add_argument("--commit-message", default=None)
    parser.set_defaults(func=_main)


def _main(args) -> int:
    card = {"license": args.license, "datasets": args.dataset, "base_model": args.base_model}
    if args.dry_run:
        folder = stage_repository(args.checkpoint, args.dry_run, args.repo_id, **card)
        print(f"Wrote the repository for {args.repo_id} to {folder} (dry run: nothing uploaded):")
        for path in sorted(folder.iterdir()):
            print(f"  {path.name}  ({path.stat().st_size:,} bytes)")
        return 0
    commit = publish(args.checkpoint, args.repo_id, private=args.private, commit_message=args.commit_message, **card)
    print(f"Published to https://huggingface.co/{args.repo_id} ({commit})")
    return 0
