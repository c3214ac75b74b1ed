"""The demo's stage-2 training stream: fresh rows of the train split only, media in memory, length-grouped
batches, an easy-first curriculum and a share of captions all along; and the demo's tokenizer."""

import itertools

import numpy as np
import pytest
from PIL import Image

from mmmmodal.demo.data import approximate_length, label_media, task_config, tokenizer_corpus
from mmmmodal.demo.settings import DemoSettings
from mmmmodal.demo.stream import stream_dataset, stream_rows
from mmmmodal.tiny import train_tokenizer
from processing.synthetic_questions import QUESTION_TYPES
from processing.synthetic_task import render_row, sample_split

BATCH = 16


def _take(n, **kwargs):
    return list(itertools.islice(stream_rows(**kwargs), n))


def _media_parts(row):
    return [p for m in row["messages"] if isinstance(m["content"], list) for p in m["content"]
            if p.get("type") in ("image", "audio")]


def _key(row):
    """A conversation at the attribute level: language, media attributes (not positions or onsets), the turns'
    text (questions name the media they ask about) and answers. Equal keys mean equal conversation specs."""
    media = row["media"]
    return (row["language"], tuple((i["colour"], i["shape"], i["count"]) for i in media["images"]),
            tuple((a["count"], a["pitch"]) for a in media["audios"]),
            tuple((m["role"], tuple(p.get("text") or p["type"] for p in m["content"])) for m in row["messages"]))


def test_stream_never_draws_a_held_out_conversation():
    # Mostly short rows (curriculum), where a leak would show up as exact repeats of held-out conversations.
    rows = [r for r in _take(3000, seed=0, batch_size=BATCH, curriculum_rows=6000) if "qtypes" in r]
    held_out = [label_media(render_row(spec, f"t{i}", None, task_config()))
                for i, spec in enumerate(sample_split(3000, 1, "test", task_config()))]
    short = {_key(r) for r in held_out if len(r["messages"]) == 2 and len(_media_parts(r)) == 1}
    assert len(short) > 50  # the check has something to catch
    assert not {_key(r) for r in rows} & {_key(r) for r in held_out}
    # Control: the same comparison does find repeats between two draws of the *same* split.
    other_train = [label_media(render_row(spec, f"u{i}", None, task_config()))
                   for i, spec in enumerate(sample_split(3000, 5, "train", task_config()))]
    assert {_key(r) for r in rows} & {_key(r) for r in other_train}


def test_stream_is_seeded_and_keeps_media_in_memory():
    first, again = _take(64, seed=3, batch_size=BATCH), _take(64, seed=3, batch_size=BATCH)
    assert [r["messages"][-1] for r in first] == [r["messages"][-1] for r in again]
    assert [r["messages"][-1] for r in first] != [r["messages"][-1] for r in _take(64, seed=4, batch_size=BATCH)]
    for row in first:
        assert all(isinstance(image, Image.Image) for image in row["images"])
        audio = [p for p in _media_parts(row) if p["type"] == "audio"]
        assert all(isinstance(p["audio"], np.ndarray) and "path" not in p for p in audio)
        assert len(row["images"]) == sum(p["type"] == "image" for p in _media_parts(row))


def test_in_memory_media_equal_the_written_files(tmp_path):
    import soundfile as sf

    spec = next(s for s in sample_split(50, 2, "train", task_config()) if s["images"] and s["audios"])
    memory, files = render_row(spec, "r", None, task_config()), render_row(spec, "r", tmp_path, task_config())
    assert memory["messages"][-1] == files["messages"][-1] and memory["answers"] == files["answers"]
    for image, path in zip(memory["images"], files["images"]):
        assert np.array_equal(np.asarray(image), np.asarray(Image.open(path).convert("RGB")))
    clips = [p for p in _media_parts(memory) if p["type"] == "audio"]
    paths = [p for p in _media_parts(files) if p["type"] == "audio"]
    for clip, path in zip(clips, paths):
        written, rate = sf.read(path["path"], dtype="float32")
        assert rate == 16_000 and np.abs(written - clip["audio"]).max() < 1e-4  # 16-bit PCM rounding only


def test_batches_are_length_grouped():
    rows = _take(BATCH * 8 * 3, seed=0, batch_size=BATCH)
    lengths = [approximate_length(r) for r in rows]
    batches = [lengths[i : i + BATCH] for i in range(0, len(lengths), BATCH)]
    spread = np.mean([max(b) - min(b) for b in batches])
    rng = np.random.default_rng(0)
    shuffled = rng.permutation(lengths)
    random_spread = np.mean([shuffled[i : i + BATCH].max() - shuffled[i : i + BATCH].min()
                             for i in range(0, len(shuffled), BATCH)])
    assert spread < 0.5 * random_spread
    means = [np.mean(b) for b in batches[:8]]
    assert means != sorted(means)  # batches of a group come in random order, not short to long


def test_curriculum_starts_easy_and_ends_with_the_full_task():
    rows = _take(4000, seed=0, batch_size=BATCH, curriculum_rows=2000)
    early, late = rows[:400], rows[2048:]

    def easy(row):  # at most one picture and one clip: no "which picture?" to work out
        kinds = [p["type"] for p in _media_parts(row)]
        return kinds.count("image") <= 1 and kinds.count("audio") <= 1

    captions = sum("qtypes" not in r for r in early) / len(early)
    assert 0.35 < captions < 0.6  # half of the easy rows are captions
    assert sum(easy(r) for r in early) / len(early) > 0.85
    assert all("qtypes" in r for r in late)  # no captions after the curriculum
    assert sum(easy(r) for r in late) / len(late) < 0.6  # the full task: many rows show several media
    assert max(len(r["images"]) for r in late) == 3


def test_caption_share_keeps_captions_after_the_curriculum():
    rows = _take(3000, seed=1, batch_size=BATCH, curriculum_rows=500, caption_share=0.1)
    late = rows[1024:]
    share = sum("qtypes" not in r for r in late) / len(late)
    assert 0.07 < share < 0.13
    captions = [r for r in late if "qtypes" not in r]
    assert all(len(r["messages"]) == 2 and len(_media_parts(r)) == 1 for r in captions)


def test_stream_dataset_feeds_trl_columns_and_passes_its_settings_on():
    media = lambda row: [p for m in row["messages"] for p in m["content"] if p.get("type") in ("image", "audio")]
    first = next(iter(stream_dataset(0, BATCH)))
    assert set(first) == {"messages", "images"}
    rows = list(itertools.islice(stream_dataset(0, BATCH, caption_share=1.0), 64))
    assert all(len(r["messages"]) == 2 and len(media(r)) == 1 for r in rows)  # every row a caption
    said = lambda row: [p["text"] for m in row["messages"] if m["role"] == "assistant" for p in m["content"]]
    from_dataset = [said(r) for r in itertools.islice(stream_dataset(1, BATCH, curriculum_rows=200), 400)]
    assert from_dataset == [said(r) for r in _take(400, seed=1, batch_size=BATCH, curriculum_rows=200)]


@pytest.mark.parametrize("bad", [0, -1])
def test_stream_refuses_a_bad_batch_size(bad):
    with pytest.raises(ValueError, match="batch_size"):
        next(stream_rows(seed=0, batch_size=bad))


def test_demo_tokenizer_writes_the_chat_templates_role_names_as_one_token_each():
    """The chat template writes "<|im_start|>user" / "<|im_start|>assistant" twice per turn: whole role names keep
    ~15 tokens per conversation off every training step."""
    tokenizer = train_tokenizer(tokenizer_corpus(task_config()), vocab_size=DemoSettings().vocab_size)
    assert tokenizer.tokenize("user\nhi")[0] == "user"
    assert tokenizer.tokenize("assistant\nlow")[:2] == ["assistant", "\u010a"]


def test_demo_tokenizer_keeps_every_word_of_an_explained_answer_whole():
    """The demo's locally trained tokenizer writes "mid, mid: yes" as five tokens: the first value is the token of
    the one-word answer ("mid"), the second its space-prefixed twin, and the verdict one token."""
    from processing.synthetic_questions import ATTRIBUTES, explained_answer

    tokenizer = train_tokenizer(tokenizer_corpus(task_config()), vocab_size=DemoSettings().vocab_size)
    for question in (q for q in QUESTION_TYPES.values() if q.cross):
        for language in task_config().languages:
            for value in ATTRIBUTES[question.compared][1](language):
                answer_tokens = tokenizer.tokenize(value)
                assert len(answer_tokens) == 1, (value, answer_tokens)
                for verdict in question.space(language):
                    tokens = tokenizer.tokenize(explained_answer(value, value, verdict))
                    assert tokens == [answer_tokens[0], ",", "\u0120" + value,
                                      ":", "\u0120" + verdict], tokens
