"""Load a saved MMMModal checkpoint (local folder or hub id) for the CLI and the apps.

By default the checkpoint is loaded with the classes of the installed `modeling_mmmmodal` package, after its
`config.json` says `model_type: "mmmmodal"`: the installed classes are entered in transformers' auto mappings, so
transformers resolves the checkpoint to them and never imports (nor asks to import) the code files the checkpoint
carries. Only `trust_remote_code=True` (`--trust-remote-code`) runs the checkpoint's own code.
"""

import logging
import os
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

CODE_FILES = ("configuration_mmmmodal.py", "modeling_mmmmodal.py", "processing_mmmmodal.py")


def add_loading_arguments(parser):
    """`--device`, `--dtype` and `--trust-remote-code`, shared by the commands that load a checkpoint."""
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"))
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="Run the checkpoint's own code files instead of the installed mmmmodal classes. Only for "
                             "checkpoints whose code you have read: it runs with your permissions.")


def register_installed_classes():
    """Enter the installed config, model and processor classes in transformers' auto mappings (idempotent)."""
    from transformers import AutoConfig, AutoModel, AutoModelForImageTextToText, AutoProcessor

    from modeling_mmmmodal import MMMModalConfig, MMMModalForConditionalGeneration, MMMModalProcessor

    AutoConfig.register(MMMModalConfig.model_type, MMMModalConfig, exist_ok=True)
    for auto in (AutoModel, AutoModelForImageTextToText):
        auto.register(MMMModalConfig, MMMModalForConditionalGeneration, exist_ok=True)
    AutoProcessor.register(MMMModalConfig, MMMModalProcessor, exist_ok=True)


def checkpoint_config(checkpoint: str) -> dict:
    """The checkpoint's `config.json`, read as JSON (no code runs)."""
    from transformers import PretrainedConfig

    try:
        return PretrainedConfig.get_config_dict(checkpoint)[0]
    except OSError as error:
        raise ValueError(f"Cannot read the config of {checkpoint!r}: {error}") from None


def _checkpoint_classes(checkpoint: str, auto_map: dict):
    """The model and processor classes of the checkpoint's own code files (imports them: runs that code).

    Named through `auto_map` rather than resolved by the auto classes: once the installed classes are registered
    (an earlier load in this process), the auto classes prefer them even with `trust_remote_code=True`.
    """
    from transformers.dynamic_module_utils import get_class_from_dynamic_module

    missing = [key for key in ("AutoModelForImageTextToText", "AutoProcessor") if key not in auto_map]
    if missing:
        raise ValueError(f"{checkpoint!r} carries no code for {missing} in its auto_map; load it without "
                         "--trust-remote-code to use the installed classes.")
    return tuple(get_class_from_dynamic_module(auto_map[key], checkpoint)
                 for key in ("AutoModelForImageTextToText", "AutoProcessor"))


def load_checkpoint(checkpoint: str, device: str = "cpu", dtype: str = "auto", trust_remote_code: bool = False,
                    attn_implementation: str | None = None):
    """Return `(model, processor)` for `checkpoint`, in eval mode.

    Args:
        checkpoint (`str`): a folder written by `save_pretrained` or a hub repository id.
        device (`str`): where to put the model (`"cpu"`, `"cuda"`, `"cuda:1"`, ...).
        dtype (`str`): `"auto"` keeps the saved dtype; or `"float32"`, `"bfloat16"`, `"float16"`.
        trust_remote_code (`bool`): run the checkpoint's own code files instead of the installed classes.
        attn_implementation (`str`, *optional*): `"sdpa"`, `"eager"`, ...; transformers' default when `None`.
    """
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from modeling_mmmmodal import MMMModalConfig

    config = checkpoint_config(checkpoint)
    if config.get("model_type") != MMMModalConfig.model_type:
        raise ValueError(
            f"{checkpoint!r} is a {config.get('model_type')!r} checkpoint, not an MMMModal one (model_type "
            f"{MMMModalConfig.model_type!r}); this command loads MMMModal checkpoints only."
        )
    _warn_if_code_differs(checkpoint, trust_remote_code)
    if trust_remote_code:
        model_class, processor_class = _checkpoint_classes(checkpoint, config.get("auto_map") or {})
    else:
        register_installed_classes()
        model_class, processor_class = AutoModelForImageTextToText, AutoProcessor
    torch_dtype = dtype if dtype == "auto" else getattr(torch, dtype)
    processor = processor_class.from_pretrained(checkpoint, trust_remote_code=trust_remote_code)
    extra = {"attn_implementation": attn_implementation} if attn_implementation else {}
    model = model_class.from_pretrained(checkpoint, trust_remote_code=trust_remote_code, dtype=torch_dtype, **extra)
    model.to(device).eval()
    code = "the checkpoint's own code" if trust_remote_code else "the installed mmmmodal classes"
    logger.info(f"Loaded {checkpoint} on {device} ({model.dtype}) with {code}.")
    return model, processor


def _warn_if_code_differs(checkpoint: str, trust_remote_code: bool = False):
    """A local checkpoint whose code files differ from the installed ones may behave differently with either: say
    which of the two runs."""
    import modeling_mmmmodal

    installed = Path(modeling_mmmmodal.__file__).parent
    differ = [name for name in CODE_FILES if os.path.isfile(os.path.join(checkpoint, name))
              and Path(checkpoint, name).read_bytes() != (installed / name).read_bytes()]
    if differ and trust_remote_code:
        logger.warning(
            f"{checkpoint}: its {', '.join(differ)} differ from the installed mmmmodal package's; running the "
            "checkpoint's own code (trust_remote_code), which may behave differently from the installed classes."
        )
    elif differ:
        logger.warning(
            f"{checkpoint}: its {', '.join(differ)} differ from the installed mmmmodal package's; loading with the "
            "installed classes. Pass --trust-remote-code to run the checkpoint's own code instead."
        )


def context_limit(model) -> int | None:
    """Longest sequence (prompt + answer) the language model's positions allow, if it says."""
    return getattr(model.config.text_config, "max_position_embeddings", None)
