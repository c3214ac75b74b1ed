"""Load a checkpoint with remote code only, as a user of any transformers release would, and report what it gives.

Run by tests/test_compat_transformers.py with the python of a clean venv (one transformers release, this package not
installed) and with the project's python; the two reports must agree. Imports nothing from this repository.

    python tests/_compat_probe.py CHECKPOINT MEDIA.json OUT.json
"""

import json
import sys
import tempfile

sys.modules["modeling_mmmmodal"] = None  # only the checkpoint's own code may run

import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import AutoConfig, AutoModel, AutoModelForImageTextToText, AutoProcessor  # noqa: E402


def conversation(media: dict) -> list:
    """Three user turns, two answers: two images and two clips, interleaved across turns, and a system message."""
    return [
        {"role": "system", "content": [{"type": "text", "text": "Answer briefly."}]},
        {"role": "user", "content": [{"type": "image", "path": media["image0"]},
                                     {"type": "audio", "path": media["audio0"]},
                                     {"type": "text", "text": "What is in picture 1 and audio 1?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "A red circle and three beeps."}]},
        {"role": "user", "content": [{"type": "text", "text": "And these?"}, {"type": "audio", "path": media["audio1"]},
                                     {"type": "image", "path": media["image1"]}]},
        {"role": "assistant", "content": "Two beeps, a blue square."},
        {"role": "user", "content": [{"type": "text", "text": "Which is louder?"}]},
    ]


def generate(model, processor, messages) -> dict:
    inputs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True,
                                           return_tensors="pt")
    with torch.no_grad():
        logits = model(**inputs).logits[0, -1]
        tokens = model.generate(**inputs, max_new_tokens=8, min_new_tokens=8, do_sample=False)[0].tolist()
    return {"input_ids": inputs["input_ids"][0].tolist(), "logits": logits.tolist(), "tokens": tokens}


def conventions(model, processor, messages) -> dict:
    """What transformers' common model and processor tests check, and the library's own tools rely on."""
    inputs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True,
                                           return_tensors="pt")
    with torch.no_grad():
        as_tuple = model(**inputs, return_dict=False)
        base_tuple = model.model(**inputs, return_dict=False)
        image_tuple = model.get_image_features(inputs["pixel_values"], return_dict=False)
        audio_tuple = model.get_audio_features(inputs["input_features"], inputs["input_features_mask"],
                                               return_dict=False)
    no_video = [processor(text="hello", videos=videos) for videos in (None, [], [[]])]  # what harnesses pass
    with tempfile.TemporaryDirectory() as folder:
        processor.save_pretrained(folder)
        reloaded = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    return {
        "model_tuple": type(as_tuple).__name__,
        "base_tuple": type(base_tuple).__name__,
        "image_features_tuple": type(image_tuple).__name__,
        "audio_features_tuple": type(audio_tuple).__name__,
        "logits_in_tuple": bool(torch.equal(as_tuple[0][0, -1], model(**inputs).logits[0, -1])),
        "videos_none_or_empty": [len(out["input_ids"]) for out in no_video],
        "processor_round_trip": reloaded.to_dict() == processor.to_dict(),
        "processor_auto_map": reloaded.to_dict().get("auto_map"),
    }


def assistant_masks(processor, messages) -> dict:
    """A right-padded training batch of two conversations, as TRL's vision collator asks for it."""
    short = [{"role": "user", "content": [{"type": "text", "text": "Hi"}]},
             {"role": "assistant", "content": [{"type": "text", "text": "Hello."}]}]
    out = processor.apply_chat_template([messages + [{"role": "assistant", "content": "The first."}], short],
                                        tokenize=True, return_dict=True, return_assistant_tokens_mask=True,
                                        return_tensors="pt",
                                        processor_kwargs={"padding": True, "padding_side": "right"})
    return {"input_ids": out["input_ids"].tolist(), "assistant_masks": out["assistant_masks"].tolist()}


def main(checkpoint: str, media_file: str, out_file: str):
    media = json.load(open(media_file))
    messages = conversation(media)
    config = AutoConfig.from_pretrained(checkpoint, trust_remote_code=True)
    model = AutoModel.from_pretrained(checkpoint, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(checkpoint, trust_remote_code=True)
    report = {"transformers": transformers.__version__, "config_class": type(config).__name__,
              "model_class": type(model).__name__, "model_module": type(model).__module__,
              "first": generate(model, processor, messages),
              "conventions": conventions(model, processor, messages),
              "masks": assistant_masks(processor, messages)}
    image_text = AutoModelForImageTextToText.from_pretrained(checkpoint, trust_remote_code=True).eval()
    report["image_text_to_text"] = generate(image_text, processor, messages)["tokens"]
    with tempfile.TemporaryDirectory() as folder:  # save again with this release, and load what it wrote
        model.save_pretrained(folder)
        processor.save_pretrained(folder)
        resaved = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
        report["resaved"] = generate(resaved, AutoProcessor.from_pretrained(folder, trust_remote_code=True),
                                     messages)["tokens"]
    json.dump(report, open(out_file, "w"))


if __name__ == "__main__":
    main(*sys.argv[1:4])
