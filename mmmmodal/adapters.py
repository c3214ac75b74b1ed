"""`mmmmodal lora-for-vllm`: LoRA fine-tunes made by our recipe, split into what vLLM's LoRA can serve.

    mmmmodal lora-for-vllm checkpoints/stage2-lora-en checkpoints/stage2-lora-ms --base checkpoints/stage1 --out served
    python -m vllm.entrypoints.openai.api_server --model served/base --enable-lora --max-lora-rank 64 \
        --lora-modules en=served/stage2-lora-en ms=served/stage2-lora-ms ...

The LoRA recipe (`examples/recipes/stage2_lora.yaml`) puts LoRA on the language model and trains both projectors
fully (PEFT's `modules_to_save`). vLLM 0.32 applies adapters to the language model only and refuses
`modules_to_save` ("vLLM only supports modules_to_save being either None or [classifier, score]"). This command
writes, from the stage-1 base and the adapters:

- `OUT/base`: the base checkpoint with the adapters' projectors in place of its own (every other file and tensor
  as it is), the checkpoint vLLM serves;
- `OUT/<adapter folder name>`: each adapter without its `modules_to_save`: LoRA on the language model only.

PEFT on `OUT/base` with an adapter of `OUT` computes what PEFT on the stage-1 base with the original adapter does.
One serving base holds one pair of projectors, so adapters whose projectors differ cannot share it: the command
refuses them, naming the module, and each such adapter is served on a base of its own (run the command once per
adapter, one server each). It also refuses, before writing anything, an adapter vLLM could not apply as it is
meant: not LoRA, LoRA outside the language model (towers, projectors), or tensors whose names or shapes do not fit
the base (an adapter trained on another base).
"""

import json
import logging
import shutil
from pathlib import Path

logger = logging.getLogger(__name__)

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."
LANGUAGE_MODEL_PREFIXES = ("model.language_model.", "lm_head.")


def _read_adapter(folder: Path) -> tuple[dict, dict]:
    """(adapter_config.json, tensors by name) of a PEFT adapter folder."""
    from safetensors.torch import load_file

    config_file, weights_file = folder / ADAPTER_CONFIG, folder / ADAPTER_WEIGHTS
    if not config_file.is_file() or not weights_file.is_file():
        raise ValueError(f"{folder} is not a PEFT adapter folder: it needs {ADAPTER_CONFIG} and {ADAPTER_WEIGHTS}.")
    config = json.loads(config_file.read_text())
    if config.get("peft_type") != "LORA":
        raise ValueError(f"{folder}: peft_type is {config.get('peft_type')!r}; only LoRA adapters serve on vLLM.")
    return config, load_file(weights_file)


def _base_shapes(base: Path) -> dict:
    """Tensor name -> (shape, file name) of a saved checkpoint, read from the safetensors headers only."""
    from safetensors import safe_open

    files = sorted(base.glob("*.safetensors"))
    if not files:
        raise ValueError(f"{base} holds no .safetensors weights: pass the checkpoint the adapters were trained on.")
    shapes = {}
    for file in files:
        with safe_open(file, framework="pt") as handle:
            for name in handle.keys():
                shapes[name] = (tuple(handle.get_slice(name).get_shape()), file.name)
    return shapes


def _split(folder: Path, tensors: dict, shapes: dict) -> tuple[dict, dict]:
    """(LoRA tensors, fully trained module tensors by base name) of one adapter, each checked against the base."""
    lora, full = {}, {}
    for name, tensor in tensors.items():
        inner = name.removeprefix(PEFT_PREFIX)
        if ".lora_A." in inner or ".lora_B." in inner:
            module, kind = inner.split(".lora_", 1)
            if not module.startswith(LANGUAGE_MODEL_PREFIXES):
                raise ValueError(f"{folder}: LoRA on {module!r}, outside the language model. vLLM applies MMMModal "
                                 "adapters to the language model only: train the towers and projectors fully "
                                 "(modules_to_save) or not at all.")
            base = shapes.get(module + ".weight")
            if base is None:
                raise ValueError(f"{folder}: LoRA on {module!r}, which the base has no weight for: the adapter was "
                                 "trained on another base.")
            dim = base[0][1] if kind.startswith("A") else base[0][0]
            if tensor.shape[1 if kind.startswith("A") else 0] != dim:
                raise ValueError(f"{folder}: {name} has shape {tuple(tensor.shape)}, which does not fit the base's "
                                 f"{module} {base[0]}: the adapter was trained on another base.")
            lora[name] = tensor
        else:
            if inner not in shapes:
                raise ValueError(f"{folder}: {name} is not a weight of the base: the adapter was trained on another "
                                 "base, or saves a module this command does not know.")
            if tuple(tensor.shape) != shapes[inner][0]:
                raise ValueError(f"{folder}: {name} has shape {tuple(tensor.shape)} but the base's is "
                                 f"{shapes[inner][0]}: the adapter was trained on another base.")
            full[inner] = tensor
    if not lora:
        raise ValueError(f"{folder} holds no LoRA weights.")
    return lora, full


def split_for_vllm(adapters: list, base, out) -> dict:
    """Write `out/base` (base + the adapters' projectors) and one LLM-only adapter per adapter under `out`; returns
    {adapter name: its new folder}. Checks everything before writing; refuses adapters whose projectors differ."""
    import torch
    from safetensors.torch import load_file, save_file

    base, out = Path(base), Path(out)
    if not (base / "config.json").is_file():
        raise ValueError(f"{base} is not a checkpoint folder (no config.json).")
    shapes = _base_shapes(base)
    names = [Path(a).name for a in adapters]
    if len(set(names)) != len(names) or "base" in names:
        raise ValueError(f"The adapters' folder names {names} must be distinct and not 'base': they name the outputs.")
    split, projectors = {}, {}
    for folder in map(Path, adapters):
        config, tensors = _read_adapter(folder)
        lora, full = _split(folder, tensors, shapes)
        if split and set(full) != set(projectors):
            raise ValueError(f"{folder} and {adapters[0]} fully train different weights ({sorted(full)} vs "
                             f"{sorted(projectors)}): one serving base cannot hold both. Serve each on a base of its "
                             "own (run this command once per adapter, one server per base).")
        for name, tensor in full.items():
            if name in projectors and not torch.equal(projectors[name][1], tensor):
                raise ValueError(
                    f"{folder} and {projectors[name][0]} were trained with different {name}: one serving base holds "
                    "one set of projectors. Serve each on a base of its own (run this command once per adapter and "
                    "start one server per base), or train adapters that share the projectors.")
            projectors.setdefault(name, (folder, tensor))
        split[folder] = (config, lora)
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"{out} exists and is not empty; choose a new folder.")
    serving_base = out / "base"
    shutil.copytree(base, serving_base)
    for file in sorted({shapes[name][1] for name in projectors}):
        weights = load_file(base / file)
        weights.update({name: tensor.contiguous() for name, (_, tensor) in projectors.items() if name in weights})
        save_file(weights, serving_base / file, metadata={"format": "pt"})
    written = {}
    for folder, (config, lora) in split.items():
        target = out / folder.name
        target.mkdir()
        config = {**config, "modules_to_save": None, "base_model_name_or_path": str(serving_base.resolve())}
        (target / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        save_file({k: v.contiguous() for k, v in lora.items()}, target / ADAPTER_WEIGHTS, metadata={"format": "pt"})
        written[folder.name] = target
    logger.info("Wrote the serving base %s (projectors: %s) and %d LLM-only adapters.", serving_base,
                ", ".join(sorted({n.rsplit(".", 2)[0] for n in projectors})) or "the base's own", len(written))
    return written


def register(subparsers):
    parser = subparsers.add_parser(
        "lora-for-vllm", help="Split LoRA fine-tunes (LLM LoRA + trained projectors) into a serving base and "
                              "LLM-only adapters that vLLM's --enable-lora serves.")
    parser.add_argument("adapters", nargs="+", help="PEFT adapter folders trained on --base (the LoRA recipe's).")
    parser.add_argument("--base", required=True, help="The checkpoint the adapters were trained on (stage 1).")
    parser.add_argument("--out", required=True, help="New folder: OUT/base and one adapter folder per adapter.")
    parser.set_defaults(func=_main)


def _main(args) -> int:
    try:
        written = split_for_vllm(args.adapters, args.base, args.out)
    except ValueError as error:
        raise SystemExit(f"mmmmodal lora-for-vllm: {error}") from error
    modules = " ".join(f"{name}={path}" for name, path in written.items())
    print(f"Serve with: python -m vllm.entrypoints.openai.api_server --model {Path(args.out) / 'base'} "
          f"--enable-lora --lora-modules {modules} --max-lora-rank R   (R >= the adapters' rank)")
    return 0
