"""Run in lmms-eval's venv: the model class, found through lmms-eval's registry (the entry point), given bad input.

    python tests/_lmms_bad_input.py CHECKPOINT NOT_MMMMODAL_CHECKPOINT IMAGE WAV  -> one JSON object on stdout
"""

import json
import sys

import soundfile as sf
from lmms_eval.api.instance import Instance
from lmms_eval.models import get_model
from PIL import Image


def error_of(call) -> str:
    try:
        call()
    except Exception as error:  # every case must raise, and say why
        return f"{type(error).__name__}: {error}"
    return "no error"


def request(kind: str, arguments: tuple) -> Instance:
    return Instance(request_type=kind, arguments=arguments, idx=0, metadata={"task": "bad", "doc_id": 0, "repeats": 1})


def main(checkpoint, other, image_path, wav_path) -> dict:
    simple_class = get_model("mmmmodal", force_simple=True)
    chat_class = get_model("mmmmodal")
    found = {"classes": [simple_class.__name__, chat_class.__name__]}
    found["missing"] = error_of(lambda: chat_class.create_from_arg_string("pretrained=/no/such/checkpoint"))
    found["not_mmmmodal"] = error_of(lambda: chat_class.create_from_arg_string(f"pretrained={other}"))
    found["unknown_arg"] = error_of(lambda: chat_class.create_from_arg_string(f"pretrained={checkpoint},beams=2"))
    model = simple_class.create_from_arg_string(f"pretrained={checkpoint},device=cpu", {"batch_size": 2})
    with Image.open(image_path) as image:
        picture = image.convert("RGB")
    array, rate = sf.read(wav_path, dtype="float32")
    clip = {"array": array, "sampling_rate": rate}
    docs = [{"visuals": [picture]}, {"visuals": [clip, picture]}]
    model.task_dict = {"bad": {"test": docs}}
    visual = lambda doc: doc["visuals"]
    greedy = {"max_new_tokens": 6, "do_sample": False, "until": []}
    found["mismatch"] = error_of(lambda: model.generate_until([request("generate_until", ("<audio> What is it?", greedy, visual, 0, "bad", "test"))]))
    found["too_few_placeholders"] = error_of(lambda: model.generate_until([request("generate_until", ("<image> and?", greedy, visual, 1, "bad", "test"))]))
    # `until` cuts the answer at the first stop string; the answer without one is the reference
    full = model.generate_until([request("generate_until", ("Describe it.", greedy, visual, 0, "bad", "test"))])[0]
    stop = full[len(full) // 2 :][:2]
    cut = model.generate_until([request("generate_until", ("Describe it.", {**greedy, "until": [stop]}, visual, 0, "bad", "test"))])[0]
    found["until"] = {"full": full, "stop": stop, "cut": cut}
    found["sampling_without_temperature"] = error_of(lambda: model.generate_until([request(
        "generate_until", ("Describe it.", {"do_sample": True, "temperature": 0}, visual, 0, "bad", "test"))]))
    return found


if __name__ == "__main__":
    print(json.dumps(main(*sys.argv[1:])))
