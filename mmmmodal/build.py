"""`mmmmodal build`: compose a new MMMModal checkpoint from a SigLIP, a Whisper and a causal LM.

    mmmmodal build --vision google/siglip-base-patch16-384 --audio openai/whisper-small \\
        --text TinyLlama/TinyLlama-1.1B-Chat-v1.0 --out mmmmodal-tinyllama

The checkpoint's chat template is the language model's own, extended so that image and audio parts render as
`<image>` / `<audio>` and assistant answers are marked for `--assistant_only_loss`: a text-only chat renders to the
language model's own ids. A language model without a chat template gets ChatML, and the build says so.

`--tiny` builds the parts offline from tiny configs instead (for trying things without a download).
"""

import logging
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def build(vision=None, audio=None, text=None, dtype=None, **config_kwargs):
    """(model, processor) composed from the three sources (hub ids or local folders): the one builder.

    `audio_kernel_size` / `audio_stride` go to the processor (which the model then takes them from), everything
    else to `compose_model` (`mean_resizing`, feature layers, other config fields).
    """
    from .compose import compose_model, compose_processor

    projector = {k: config_kwargs.pop(k) for k in ("audio_kernel_size", "audio_stride") if k in config_kwargs}
    processor = compose_processor(vision, audio, text, **projector)
    model = compose_model(vision, audio, text, processor=processor, dtype=dtype, **config_kwargs)
    return model, processor


def build_checkpoint(out, vision=None, audio=None, text=None, dtype=None, **config_kwargs):
    """`build`, then save a complete remote-code checkpoint to `out`; returns (model, processor)."""
    model, processor = build(vision, audio, text, dtype=dtype, **config_kwargs)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return model, processor


def build_tiny(out_dir, sizes=None, corpus=None, vision=True, audio=True, seed=0, **config_kwargs):
    """Build a tiny MMMModal (model, processor) from freshly saved tiny parts (`mmmmodal.tiny`, `TinySizes`)."""
    from .tiny import save_tiny_parts  # here, not at the top: `mmmmodal --help` need not import the model classes

    parts = save_tiny_parts(Path(out_dir) / "parts", sizes, corpus, seed)
    return build(parts["vision"] if vision else None, parts["audio"] if audio else None, parts["text"], **config_kwargs)


def build_tiny_checkpoint(out_dir, name: str = "checkpoint", sizes=None, **kwargs):
    """`build_tiny`, then save model and processor as a remote-code checkpoint `out_dir/name`.

    Returns (model in eval mode, processor, checkpoint path).
    """
    model, processor = build_tiny(Path(out_dir) / "build", sizes, **kwargs)
    path = Path(out_dir) / name
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return model.eval(), processor, path


def run(args) -> int:
    if args.tiny:
        from .tiny import save_tiny_parts

        parts = save_tiny_parts(Path(args.out) / "parts")
        vision, audio, text = (None if args.no_vision else parts["vision"]), parts["audio"], parts["text"]
        if args.no_audio:
            audio = None
    else:
        if not args.text:
            raise SystemExit("mmmmodal build: --text is required (or use --tiny).")
        vision, audio, text = args.vision, args.audio, args.text
    try:
        model, processor = build_checkpoint(
            args.out,
            vision,
            audio,
            text,
            dtype=DTYPES[args.dtype] if args.dtype else None,
            vision_feature_layer=args.vision_feature_layer,
            audio_feature_layer=args.audio_feature_layer,
        )
    except ValueError as error:  # a part without a tokenizer, a template that cannot be extended, ...
        raise SystemExit(f"mmmmodal build: {error}") from error
    from .chat_template import CHAT_TEMPLATE

    n_params = sum(p.numel() for p in model.parameters())
    print(f"Saved MMMModal ({n_params / 1e6:.1f}M parameters) to {args.out}")
    if processor.chat_template == CHAT_TEMPLATE:
        print(f"Chat template: ChatML, because the language model {text} has none of its own.")
    else:
        print(f"Chat template: the language model's own ({text}), extended with image and audio parts.")
    return 0


def register(subparsers):
    parser = subparsers.add_parser(
        "build",
        help="compose a new model from a SigLIP, a Whisper and a causal LM (hub ids or local folders)",
        description=__doc__,
        formatter_class=__import__("argparse").RawDescriptionHelpFormatter,
    )
    parser.add_argument("--vision", help="SigLIP checkpoint (hub id or folder); omit for an audio-only model")
    parser.add_argument("--audio", help="Whisper checkpoint (hub id or folder); omit for a vision-only model")
    parser.add_argument("--text", help="causal LM checkpoint (hub id or folder)")
    parser.add_argument("--out", required=True, help="output folder for the new checkpoint")
    parser.add_argument("--dtype", choices=sorted(DTYPES), help="dtype to load and save the parts in")
    parser.add_argument("--vision-feature-layer", type=int, default=-2)
    parser.add_argument("--audio-feature-layer", type=int, default=-2)
    parser.add_argument("--tiny", action="store_true", help="build tiny parts offline instead of loading sources")
    parser.add_argument("--no-vision", action="store_true", help="with --tiny: leave out the vision tower")
    parser.add_argument("--no-audio", action="store_true", help="with --tiny: leave out the audio tower")
    parser.set_defaults(func=run)
