"""`ChatSession` and `mmmmodal chat`: multi-turn media chat that reuses the KV cache across turns."""

import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

from mmmmodal.chat import ChatSession, run_repl
from mmmmodal.build import build_tiny_checkpoint
from mmmmodal.tiny import TinySizes

MAX_POSITIONS = 256


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("chat")
    model, processor, checkpoint = build_tiny_checkpoint(root, sizes=TinySizes(text_max_positions=MAX_POSITIONS))
    media = root / "media"
    media.mkdir()
    for name, colour in (("red", (220, 30, 30)), ("blue", (30, 60, 220))):
        Image.new("RGB", (40, 40), colour).save(media / f"{name}.png")
    t = np.arange(16_000) / 16_000
    sf.write(media / "beep.wav", (0.5 * np.sin(2 * np.pi * 800 * t)).astype(np.float32), 16_000)
    (media / "broken.png").write_bytes(b"this is not a png")
    (media / "empty.wav").write_bytes(b"")
    return model, processor, checkpoint, media


class Calls:
    """Counts what a module's forward was given: batch sizes (towers) or sequence lengths (LM)."""

    def __init__(self, module, dim):
        self.seen = []
        module.register_forward_hook(self._hook, with_kwargs=True)
        self.dim = dim

    def _hook(self, module, args, kwargs, output):
        tensor = args[0] if args else next(v for v in kwargs.values() if torch.is_tensor(v))
        self.seen.append(tensor.shape[self.dim])

    def take(self):
        seen, self.seen = self.seen, []
        return seen


def recompute(model, session, images, audio):
    """Greedy answer for the session's whole token sequence from scratch: no cache, every media encoded again."""
    processor = session.processor
    ids = session._ids[:, : session._last_prompt_length]
    inputs = {}
    if images:
        inputs["pixel_values"] = processor.image_processor(images, return_tensors="pt")["pixel_values"]
    if audio:
        clips = processor(text="<audio>" * len(audio), audio=list(audio), return_tensors="pt")
        inputs.update({k: clips[k] for k in ("input_features", "input_features_mask")})
    out = model.generate(
        input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=session.max_new_tokens, do_sample=False, **inputs
    )
    return out[0, ids.shape[1] :].tolist()


def test_turns_reuse_the_cache_and_match_a_full_recompute(tiny):
    model, processor, _, media = tiny
    vision = Calls(model.model.vision_tower, 0)
    audio_tower = Calls(model.model.audio_tower, 0)
    llm = Calls(model.model.language_model.embed_tokens, 1)
    session = ChatSession(model, processor, max_new_tokens=6)
    red, blue, beep = str(media / "red.png"), str(media / "blue.png"), str(media / "beep.wav")

    turns = [([("image", red), ("audio", beep)], "What is in picture 1?"), ([("image", blue)], "And picture 2?"), ([], "Compare.")]
    images, audio = [], []
    for attached, text in turns:
        cached_before = session.cached_tokens
        for kind, path in attached:
            session.attach(kind, path)
            (images if kind == "image" else audio).append(path)
        session.ask(text)
        # Each turn encodes only its own media...
        assert vision.take() == [1] * sum(kind == "image" for kind, _ in attached)
        assert audio_tower.take() == [1] * sum(kind == "audio" for kind, _ in attached)
        # ...and its prefill reads only the tokens the cache lacks (then one token per generated step).
        prefill = llm.take()[0]
        assert prefill == session._last_prompt_length - cached_before
        # The answer is the one a from-scratch greedy recompute of the whole conversation gives.
        answer = session._ids[0, session._last_prompt_length :].tolist()
        assert answer == recompute(model, session, [Image.open(p).convert("RGB") for p in images], audio)
        vision.take(), audio_tower.take(), llm.take()  # forget the recompute's calls
    assert [m["role"] for m in session.messages] == ["user", "assistant"] * 3


def test_a_forked_session_goes_on_from_the_shared_cache_on_its_own(tiny):
    model, processor, _, media = tiny
    session = ChatSession(model, processor, max_new_tokens=6)
    session.attach("image", str(media / "red.png"))
    session.ask("What is in picture 1?")
    twin = session.fork()
    vision = Calls(model.model.vision_tower, 0)
    forked = twin.ask("And the colour?")  # from the copied cache: the image is not encoded again
    assert vision.take() == []
    assert session.cached_tokens < twin.cached_tokens and len(session.messages) == 2  # the original is as it was
    fresh = ChatSession(model, processor, max_new_tokens=6)  # the same conversation from scratch
    fresh.attach("image", str(media / "red.png"))
    fresh.ask("What is in picture 1?")
    assert fresh.ask("And the colour?") == forked
    assert session.ask("And the colour?") == forked  # the fork left the original's cache as it was


def test_stream_yields_the_answer_piece_by_piece(tiny):
    model, processor, _, media = tiny
    session = ChatSession(model, processor, max_new_tokens=12)
    session.attach("image", str(media / "red.png"))
    pieces = list(session.stream("Describe the image."))
    assert len(pieces) > 1
    assert "".join(pieces).strip() == session.messages[-1]["content"][0]["text"].strip()


def test_a_turn_given_as_content_parts_keeps_their_order_and_matches_a_full_recompute(tiny):
    model, processor, _, media = tiny
    red, beep = str(media / "red.png"), str(media / "beep.wav")
    session = ChatSession(model, processor, max_new_tokens=5)
    session.attach("image", str(media / "blue.png"))  # attached media go first
    turn = [{"type": "text", "text": "Picture 2:"}, {"type": "image", "image": red}, {"type": "text", "text": "Audio 1:"},
            {"type": "audio", "path": beep}, {"type": "text", "text": "What is in picture 2?"}]
    answer = session.ask(turn)
    user = session.messages[-2]
    assert [p["type"] for p in user["content"]] == ["image", "text", "image", "text", "audio", "text"]
    assert user["content"][2] == {"type": "image", "path": red}  # the source, named the way `attach` names it
    prompt = processor.apply_chat_template(session.messages[:-1], add_generation_prompt=True, tokenize=False)
    ids = processor(text=prompt, images=[Image.open(media / "blue.png"), Image.open(red)], audio=[beep],
                    add_special_tokens=False)["input_ids"][0]
    assert session._ids[0, : session._last_prompt_length].tolist() == ids
    images = [Image.open(media / "blue.png").convert("RGB"), Image.open(red).convert("RGB")]
    clip = sf.read(beep, dtype="float32")[0]
    assert session._ids[0, session._last_prompt_length :].tolist() == recompute(model, session, images, [clip])
    assert answer == session.messages[-1]["content"][0]["text"]
    with pytest.raises(ValueError, match="names no source"):
        session.ask([{"type": "image"}, {"type": "text", "text": "hi"}])
    with pytest.raises(ValueError, match="expected text, image or audio"):
        session.ask([{"type": "video", "path": red}])
    assert len(session.messages) == 2


def test_bad_input_is_refused_and_the_session_goes_on(tiny):
    model, processor, _, media = tiny
    session = ChatSession(model, processor, max_new_tokens=4)
    session.ask("hello")
    state = (len(session.messages), session.cached_tokens)
    with pytest.raises(ValueError, match="Could not read the image"):
        session.attach("image", str(media / "broken.png"))
    with pytest.raises(ValueError, match="Could not read the audio"):
        session.attach("audio", str(media / "empty.wav"))
    with pytest.raises(ValueError, match="Unknown media kind"):
        session.attach("video", str(media / "red.png"))
    for _ in range(16):  # 16 images x 18 tokens cannot fit 256 positions
        session.attach("image", str(media / "red.png"))
    with pytest.raises(ValueError, match="does not fit the model's context"):
        session.ask("What are all these?")
    assert (len(session.messages), session.cached_tokens) == state
    session.reset()
    session.attach("image", str(media / "blue.png"))
    assert isinstance(session.ask("And now?"), str)
    assert len(session.messages) == 2


def test_repl_commands_save_load_reset(tiny, tmp_path):
    model, processor, _, media = tiny
    session = ChatSession(model, processor, max_new_tokens=4)
    saved = tmp_path / "conversation.json"
    lines = [
        f"/image {media / 'red.png'}",
        f"/audio {media / 'beep.wav'}",
        "What do you see and hear?",
        f"/image {media / 'broken.png'}",
        "/frobnicate",
        "Say more.",
        f"/save {saved}",
        "/reset",
        f"/load {saved}",
        "Once more.",
        "/quit",
        "never read",
    ]
    out = io.StringIO()
    assert run_repl(session, lines, out) == 0
    text = out.getvalue()
    assert text.count("assistant: ") == 3
    assert "[error] Could not read the image" in text and "[error] Unknown command /frobnicate" in text
    messages = json.loads(saved.read_text())
    assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant"]
    assert messages[0]["content"][:2] == [
        {"type": "image", "path": str(media / "red.png")},
        {"type": "audio", "path": str(media / "beep.wav")},
    ]
    # After /load the next turn builds the cache from the saved conversation, media included, in one pass.
    assert len(session.messages) == 6 and session.messages[:4] == messages


def test_cli_chat_streams_from_a_checkpoint(tiny):
    _, _, checkpoint, media = tiny
    stdin = f"/image {media / 'red.png'}\nWhat is in picture 1?\n/reset\nhi\n"
    result = subprocess.run(
        [sys.executable, "-c", "import sys; from mmmmodal.cli import main; sys.exit(main())",
         "chat", str(checkpoint), "--max-new-tokens", "4"],
        input=stdin, capture_output=True, text=True, timeout=240, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.count("assistant: ") == 2 and "[new conversation]" in result.stdout
    # the installed classes load it (no prompt to run the checkpoint's code), and the CLI says so at info level
    assert "INFO mmmmodal.loading: Loaded" in result.stderr and "with the installed mmmmodal classes" in result.stderr
    assert "Do you wish to run the custom code" not in result.stdout + result.stderr


def test_an_abandoned_stream_does_not_corrupt_the_next_turn(tiny):
    model, processor, _, media = tiny
    session = ChatSession(model, processor, max_new_tokens=8)
    session.ask("hello")
    stream = session.stream("Tell me a long story.")
    next(stream)  # the reader goes away after the first piece; generation runs on, extending the cache
    stream.close()
    assert len(session.messages) == 2  # the abandoned turn is not part of the conversation
    session.attach("image", str(media / "red.png"))
    session.ask("What is in picture 1?")
    answer = session._ids[0, session._last_prompt_length :].tolist()
    assert answer == recompute(model, session, [Image.open(media / "red.png").convert("RGB")], [])
