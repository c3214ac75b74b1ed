"""The language model's own chat template, extended: four template shapes on tiny models, ChatML for a model
without one, the new tokens' rows, the recorded base models, and bad input."""

import json
import logging
import re

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl.chat_template_utils import is_chat_template_stop_token_trained

from mmmmodal.chat import ChatSession
from mmmmodal.chat_template import CHAT_TEMPLATE, check_extended_template, extend_chat_template, turn_end
from mmmmodal.cli import main
from mmmmodal.compose import compose_model, compose_processor, recorded_name
from mmmmodal.publish import stage_repository
from mmmmodal.tiny import save_tiny_parts
from modeling_mmmmodal import MMMModalProcessor
from modeling_mmmmodal.configuration_mmmmodal import CHATML_TOKENS, SPECIAL_TOKENS
from tests._chat_shapes import SHAPES, save_shape_llm, shape_tokenizer

QUESTIONS = ["What is in picture 1?", "How many beeps are in audio 1?", "Compare them."]
ANSWERS = ["A red circle.", "Three.", "Both show three."]
NO_BOS = {"processor_kwargs": {"add_special_tokens": False}}  # as TRL's collator calls it


def chat(turns: int, system: str | None = None, parts: bool = False, answer_last: bool = False) -> list[dict]:
    """`turns` user turns (with answers between them), text only; content as strings or as text parts."""
    def content(text):
        return [{"type": "text", "text": text}] if parts else text

    messages = [{"role": "system", "content": content(system)}] if system else []
    for k in range(turns):
        messages.append({"role": "user", "content": content(QUESTIONS[k])})
        if k < turns - 1 or answer_last:
            messages.append({"role": "assistant", "content": content(ANSWERS[k])})
    return messages


CHATS = {"one turn": dict(turns=1), "a system message": dict(turns=1, system="Answer briefly."),
         "multi-turn": dict(turns=3), "multi-turn with a system message": dict(turns=3, system="Answer briefly.")}


@pytest.fixture(scope="module")
def towers(tmp_path_factory):
    return save_tiny_parts(tmp_path_factory.mktemp("towers"))


@pytest.fixture(scope="module", params=sorted(SHAPES))
def built(request, towers, tmp_path_factory):
    """(shape, LLM folder, the LLM's own tokenizer and model, MMMModal processor and model) for one template shape."""
    shape = SHAPES[request.param]
    folder = save_shape_llm(shape, tmp_path_factory.mktemp(shape.name) / f"tiny-{shape.name}")
    processor = compose_processor(towers["vision"], towers["audio"], str(folder))
    model = compose_model(towers["vision"], towers["audio"], str(folder), processor=processor).eval()
    llm = AutoModelForCausalLM.from_pretrained(folder).eval()
    return shape, folder, AutoTokenizer.from_pretrained(folder), llm, processor, model


def ids_of(output) -> list[int]:
    ids = output["input_ids"]
    return list(ids[0] if ids and isinstance(ids[0], list) else ids)


@pytest.mark.parametrize("kind", sorted(CHATS))
def test_text_only_chats_give_the_language_models_own_ids_and_logits(built, kind):
    shape, _, llm_tokenizer, llm, processor, model = built
    text = llm_tokenizer.apply_chat_template(chat(**CHATS[kind]), add_generation_prompt=True, tokenize=False)
    expected = ids_of(llm_tokenizer.apply_chat_template(chat(**CHATS[kind]), add_generation_prompt=True,
                                                        tokenize=True, return_dict=True))
    parts = chat(**CHATS[kind], parts=True)
    assert ids_of(processor.tokenizer.apply_chat_template(parts, add_generation_prompt=True, tokenize=True,
                                                          return_dict=True)) == expected
    assert ids_of(processor.apply_chat_template(parts, add_generation_prompt=True, tokenize=True, return_dict=True,
                                                **NO_BOS)) == expected
    # called plainly too: the rendered template carries its own special tokens (Zephyr's writes no bos)
    assert ids_of(processor.apply_chat_template(parts, add_generation_prompt=True, tokenize=True,
                                                return_dict=True)) == expected
    ids = torch.tensor([expected])
    with torch.no_grad():
        ours, theirs = model(input_ids=ids).logits, llm(input_ids=ids).logits
    vocab = len(llm_tokenizer)  # the LLM's own tokens (its spare rows now hold the new tokens)
    assert torch.equal(ours[..., :vocab], theirs[..., :vocab])


def test_media_parts_render_in_place_and_expand_there(built, media_files):
    shape, _, llm_tokenizer, _, processor, _ = built
    messages = [{"role": "user", "content": [{"type": "image", "path": media_files["image0"]},
                                             {"type": "text", "text": "What is in picture 1 and "},
                                             {"type": "audio", "path": media_files["audio0"]},
                                             {"type": "text", "text": "?"}]},
                {"role": "assistant", "content": [{"type": "text", "text": ANSWERS[0]}]},
                {"role": "user", "content": [{"type": "text", "text": "And "},
                                             {"type": "image", "path": media_files["image1"]}]}]
    as_text = [{"role": "user", "content": "<image>What is in picture 1 and <audio>?"},
               {"role": "assistant", "content": ANSWERS[0]}, {"role": "user", "content": "And <image>"}]
    expected = llm_tokenizer.apply_chat_template(as_text, add_generation_prompt=True, tokenize=False)
    assert processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False) == expected
    out = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True, **NO_BOS)
    spans = {processor.image_token_id, processor.image_end_token_id, processor.audio_token_id,
             processor.audio_end_token_id}
    collapsed = [t for t in ids_of(out) if t not in spans]  # each span back to its <image> / <audio> placeholder
    assert collapsed == processor.tokenizer(expected, add_special_tokens=False)["input_ids"]
    per_image = (processor.image_processor.size["height"] // processor.patch_size) ** 2
    assert ids_of(out).count(processor.image_token_id) == 2 * per_image


def test_each_answer_and_its_end_of_turn_are_marked(built):
    shape, _, _, _, processor, _ = built
    out = processor.apply_chat_template(chat(3, "Answer briefly.", parts=True, answer_last=True), tokenize=True,
                                        return_dict=True, return_assistant_tokens_mask=True, **NO_BOS)
    mask = out["assistant_masks"][0]
    marked = processor.tokenizer.decode([t for t, m in zip(ids_of(out), mask) if m])
    assert marked == "".join(answer + shape.end_of_turn for answer in ANSWERS)
    # TRL's own check, which `trl sft --assistant_only_loss` runs
    assert is_chat_template_stop_token_trained(processor)


def test_the_end_of_turn_is_the_language_models_own_and_ends_generation(built):
    shape, _, llm_tokenizer, _, processor, model = built
    token, _ = turn_end(processor.tokenizer, processor.chat_template)
    assert token == shape.end_of_turn and token in llm_tokenizer.get_vocab()  # a token the LLM already knows
    assert processor.tokenizer.convert_tokens_to_ids(token) in model.generation_config.eos_token_id
    assert llm_tokenizer.convert_tokens_to_ids(shape.eos) in model.generation_config.eos_token_id
    # only the six span tokens are new: no ChatML turn tokens for a template of another shape
    assert processor.new_tokens == list(SPECIAL_TOKENS)
    assert len(processor.tokenizer) == len(llm_tokenizer) + len(SPECIAL_TOKENS)


def test_new_token_rows_start_at_the_mean_of_the_language_models_rows(built):
    shape, _, llm_tokenizer, llm, processor, model = built
    old = llm.get_input_embeddings().weight
    new_ids = processor.tokenizer.convert_tokens_to_ids(processor.new_tokens)
    embeddings = model.get_input_embeddings().weight
    assert embeddings.shape[0] == max(old.shape[0], len(processor.tokenizer))  # grown to fit, never shrunk
    assert torch.equal(embeddings[: len(llm_tokenizer)], old[: len(llm_tokenizer)])
    if shape.spare_rows:  # Qwen2-style padded matrix: the new tokens take spare rows, set to the tokens' mean
        assert max(new_ids) < old.shape[0]
        assert torch.allclose(embeddings[new_ids], old[: min(new_ids)].mean(0).expand(len(new_ids), -1))
    else:  # transformers' mean resizing: drawn around the mean with a tiny spread
        spread = (old - old.mean(0)).norm(dim=-1).mean()
        assert ((embeddings[new_ids] - old.mean(0)).norm(dim=-1) < 1e-3 * spread).all()
    if shape.tied:
        assert model.lm_head.weight is model.get_input_embeddings().weight
    else:
        head, old_head = model.lm_head.weight, llm.lm_head.weight
        spread = (old_head - old_head.mean(0)).norm(dim=-1).mean()
        assert ((head[new_ids] - old_head.mean(0)).norm(dim=-1) < 1e-3 * spread).all()


def test_chat_session_closes_each_turn_as_the_template_does(built):
    """Turn 1 ends at the end-of-turn token, turn 2 is cut by max_new_tokens: either way the cached tokens and the
    next turn read as the template renders the whole conversation."""
    shape, _, _, _, processor, model = built
    tokenizer = processor.tokenizer
    end_id = tokenizer.convert_tokens_to_ids(shape.end_of_turn)
    others = [i for i in tokenizer.all_special_ids + tokenizer.convert_tokens_to_ids(SPECIAL_TOKENS) if i != end_id]
    session = ChatSession(model, processor, max_new_tokens=3, system="Answer briefly.", suppress_tokens=others,
                          sequence_bias={(end_id,): 100.0})
    session.ask(QUESTIONS[0])
    assert int(session._ids[0, -1]) == end_id
    # an answer without outer whitespace (a template may trim it, the cache does not)
    session.generate_kwargs.update(sequence_bias={(end_id,): -100.0, (tokenizer.convert_tokens_to_ids("a"),): 100.0})
    session.ask(QUESTIONS[1])
    assert int(session._ids[0, -1]) != end_id
    session.ask(QUESTIONS[2])
    seen = session._ids[0, : session._last_prompt_length].tolist()
    expected = processor.apply_chat_template(session.messages[:-1], add_generation_prompt=True, tokenize=True,
                                             return_dict=True)
    assert tokenizer.decode(seen) == tokenizer.decode(ids_of(expected))


def test_a_language_model_without_a_template_gets_chatml_and_is_told(towers, caplog):
    with caplog.at_level(logging.WARNING):
        processor = compose_processor(towers["vision"], None, towers["text"])
    assert processor.chat_template == CHAT_TEMPLATE
    assert f"The language model {towers['text']} has no chat template: the checkpoint uses ChatML" in caplog.text
    assert processor.new_tokens == list(SPECIAL_TOKENS + CHATML_TOKENS)
    model = compose_model(towers["vision"], None, towers["text"], processor=processor)
    assert processor.tokenizer.convert_tokens_to_ids("<|im_end|>") in model.generation_config.eos_token_id


def test_base_models_record_what_was_given_never_a_build_path(towers, tmp_path):
    shape = SHAPES["llama3"]
    cached = save_shape_llm(shape, tmp_path / "hub" / "models--someone--tiny-llama3" / "snapshots" / "0123abc")
    renamed = save_shape_llm(shape, tmp_path / "renamed")
    config = json.loads((renamed / "config.json").read_text())
    (renamed / "config.json").write_text(json.dumps({**config, "_name_or_path": "someone/tiny-llama3-instruct"}))
    record = recorded_name
    assert record(cached) == "someone/tiny-llama3"  # a hub cache snapshot: its repository
    assert record(renamed) == "someone/tiny-llama3-instruct"  # the hub id its config recorded
    assert record(towers["vision"]) == "vision"  # any other folder: its name
    assert record("openai/whisper-small") == "openai/whisper-small"  # a hub id as given

    out = tmp_path / "built"
    assert main(["build", "--vision", towers["vision"], "--text", str(cached), "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["base_models"] == ["vision", "someone/tiny-llama3"]
    repo = stage_repository(out, tmp_path / "repo", "someone/mmmmodal-tiny")
    card = (repo / "README.md").read_text()
    assert "base_model:\n- someone/tiny-llama3\n" in card and "| vision (a local folder) |" in card
    for written in [out / "config.json", repo / "README.md", out / "processor_config.json", out / "tokenizer_config.json"]:
        assert str(tmp_path) not in written.read_text()


def test_build_refuses_a_language_model_without_a_tokenizer(tmp_path):
    folder = save_shape_llm(SHAPES["mistral"], tmp_path / "no-tokenizer")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (folder / name).unlink()
    with pytest.raises(SystemExit, match=re.escape(f"The language model {folder} has no tokenizer that AutoTokenizer")):
        main(["build", "--text", str(folder), "--out", str(tmp_path / "out")])


@pytest.mark.parametrize("template, missing", [
    ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}",
     "it writes no special token after an assistant answer"),
    ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] | upper }}<|im_end|>\n{% endfor %}",
     "it does not render an assistant message's content as given"),
])
def test_a_template_that_cannot_be_extended_is_refused_naming_the_model(tmp_path, template, missing):
    folder = save_shape_llm(SHAPES["chatml"], tmp_path / "odd-template")
    tokenizer = shape_tokenizer(SHAPES["chatml"])
    tokenizer.chat_template = template
    tokenizer.save_pretrained(folder)
    with pytest.raises(SystemExit, match=re.escape(f"The chat template of {folder} cannot be extended for MMMModal: {missing}")):
        main(["build", "--text", str(folder), "--out", str(tmp_path / "out")])


def test_a_template_that_puts_media_in_the_wrong_place_is_caught():
    """The check every extension passes, on ChatML written plainly and on hand-written MMMModal versions of it."""
    tokenizer = shape_tokenizer(SHAPES["chatml"])
    base = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endfor %}"
            "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
    check_extended_template(base, CHAT_TEMPLATE, tokenizer)  # ours renders parts in place: accepted
    media_first = CHAT_TEMPLATE.replace(
        "{%- for part in content -%}",
        "{%- for part in content | rejectattr('type', 'equalto', 'text') -%}{{- '<' + part['type'] + '>' -}}"
        "{%- endfor -%}{%- for part in content -%}").replace("{{- '<image>' -}}", "").replace("{{- '<audio>' -}}", "")
    with pytest.raises(ValueError, match="media as <image> / <audio> in place"):
        check_extended_template(base, media_first, tokenizer)
    unmarked_end = CHAT_TEMPLATE.replace("+ '<|im_end|>' -}}{%- endgeneration -%}", "-}}{%- endgeneration -%}"
                                         "{{- '<|im_end|>' -}}")
    with pytest.raises(ValueError, match="expected each assistant answer with its end-of-turn token"):
        check_extended_template(base, unmarked_end, tokenizer)


def test_the_extended_template_survives_save_and_load_and_is_never_extended_twice(built, tmp_path):
    shape, folder, llm_tokenizer, _, processor, _ = built
    processor.save_pretrained(tmp_path)
    loaded = MMMModalProcessor.from_pretrained(tmp_path)
    assert loaded.chat_template == processor.chat_template == loaded.tokenizer.chat_template
    assert llm_tokenizer.chat_template.removesuffix("\n") in processor.chat_template  # Jinja drops that newline
    # built from a tokenizer that carries the extension already: kept as it is, never extended twice
    again = MMMModalProcessor(processor.image_processor, processor.feature_extractor, loaded.tokenizer)
    assert again.chat_template == processor.chat_template
    assert extend_chat_template(processor.chat_template, loaded.tokenizer) == processor.chat_template


def test_the_shipped_processor_refuses_a_language_models_own_tokenizer(built):
    """Extending a template is build-time work (`compose_processor`): the checkpoint's processor only runs one, and
    says where a new language model's processor is made instead of rendering media parts as nothing."""
    _, folder, _, _, processor, _ = built
    llm_tokenizer = AutoTokenizer.from_pretrained(folder)
    with pytest.raises(ValueError, match=re.escape("has no ['<image>', '</image>', '<|image_pad|>', '<audio>'")):
        MMMModalProcessor(processor.image_processor, processor.feature_extractor, llm_tokenizer,
                          chat_template=processor.chat_template)
    llm_tokenizer.add_special_tokens({"additional_special_tokens": list(SPECIAL_TOKENS)})
    with pytest.raises(ValueError, match="no MMMModal chat template .* `mmmmodal.compose.compose_processor`"):
        MMMModalProcessor(processor.image_processor, processor.feature_extractor, llm_tokenizer)
