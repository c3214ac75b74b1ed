"""The built-in synthetic task (shapes and beeps) as an lmms-eval task: the functions its YAML names.

One lmms-eval doc per assistant turn of a conversation written by `mmmmodal data synthetic`: the messages up to
that turn's question, earlier assistant turns holding the reference answers (the teacher forcing that
`processing.synthetic_eval` prescribes), with every image and clip where the conversation shows it. The model's
answer is generated (greedy, `generation_kwargs` in the YAML) and scored by `processing.synthetic_eval.evaluate`
itself: each metric's aggregation gathers the run's answers back into rows and reads its number from `evaluate`'s
result, so lmms-eval reports exactly what the project's evaluator reports for the same answers. The metrics are
exact-match accuracy per question type, over single-media and cross-media questions, and overall.

The task needs the chat interface (lmms-eval's default for `--model mmmmodal`): `--force_simple` models see only
`doc_to_text` (the last question) and `doc_to_visual` (every image and clip shown so far), not the earlier turns.
"""

import json
from collections import defaultdict

from processing.synthetic_eval import evaluate
from processing.synthetic_questions import QUESTION_TYPES

GROUPS = ("single_media", "cross_media", "overall")
METRICS = (*QUESTION_TYPES, *GROUPS)


def process_docs(dataset, label=None):
    """Conversations (rows of `mmmmodal data synthetic`) -> one doc per assistant turn; `label(row)` rewrites each
    row first."""
    from datasets import Dataset

    docs = []
    for row in dataset:
        row = {key: row[key] for key in ("id", "messages", "images", "qtypes", "answers", "verdicts", "language")}
        row["messages"] = [{"role": m["role"], "content": [{k: v for k, v in part.items() if v is not None}
                                                           for part in m["content"]]} for m in row["messages"]]
        row = label(row) if label else row
        assistant_turns = [i for i, message in enumerate(row["messages"]) if message["role"] == "assistant"]
        if len(assistant_turns) != len(row["answers"]):
            raise ValueError(f"Row {row['id']}: {len(row['answers'])} answers but {len(assistant_turns)} assistant turns.")
        for turn, end in enumerate(assistant_turns):
            docs.append({"id": row["id"], "turn": turn, "messages": json.dumps(row["messages"][:end]),
                         "images": list(row["images"] or []), "qtype": row["qtypes"][turn],
                         "answer": row["answers"][turn], "verdict": row["verdicts"][turn], "language": row["language"]})
    return Dataset.from_list(docs)


def process_docs_labelled(dataset):
    """`process_docs` with every media item introduced by "Picture k:" / "Audio k:", as `mmmmodal demo` trains and
    scores (`mmmmodal.demo.data.label_media`): the task for demo checkpoints (`mmmmodal eval --label-media`)."""
    from ..demo.data import label_media

    return process_docs(dataset, label=label_media)


def doc_to_messages(doc) -> list[dict]:
    """The conversation up to the doc's question, in lmms-eval's chat-message form (image and audio by path).

    The rows are in TRL's vision form: a bare `{"type": "image"}` part takes the next of the row's `images`; audio
    parts carry their `path`. `datasets` gives every part every key, filled with `None`.
    """
    images = iter(doc["images"])
    messages = []
    for message in json.loads(doc["messages"]):
        content = message["content"]
        parts = []
        for part in [{"type": "text", "text": content}] if isinstance(content, str) else content:
            if part["type"] == "text":
                parts.append({"type": "text", "text": part["text"]})
            elif part["type"] == "image":
                parts.append({"type": "image", "url": part.get("path") or part.get("image") or next(images)})
            elif part["type"] == "audio":
                parts.append({"type": "audio", "url": part.get("path") or part.get("audio")})
            else:
                raise ValueError(f"Row {doc['id']}: a {part['type']!r} part; the synthetic task holds text, image and audio.")
        messages.append({"role": message["role"], "content": parts})
    return messages


def doc_to_text(doc) -> str:
    """The doc's question (its last user turn's text)."""
    last = doc_to_messages(doc)[-1]
    return " ".join(part["text"] for part in last["content"] if part["type"] == "text")


def doc_to_visual(doc) -> list:
    """Every image and clip the conversation has shown up to the question, in order (paths)."""
    return [part["url"] for message in doc_to_messages(doc) for part in message["content"] if part["type"] != "text"]


def doc_to_target(doc) -> str:
    return doc["answer"]


def process_results(doc, results) -> dict:
    """The doc's answer, under every metric: each aggregation picks what `evaluate` needs."""
    item = {"id": doc["id"], "turn": doc["turn"], "qtype": doc["qtype"], "answer": doc["answer"],
            "verdict": doc["verdict"], "language": doc["language"], "prediction": results[0]}
    return {metric: item for metric in METRICS}


def score(items: list[dict]) -> dict:
    """`processing.synthetic_eval.evaluate` on the answers of a run: the rows rebuilt from the docs scored (all the
    assistant turns of a row, or those a `--limit` left), each turn with its prediction."""
    rows, predictions = defaultdict(lambda: {"qtypes": [], "answers": [], "verdicts": []}), defaultdict(list)
    for item in sorted(items, key=lambda item: (item["id"], item["turn"])):
        row = rows[item["id"]]
        row.update(id=item["id"], language=item["language"])
        row["qtypes"].append(item["qtype"])
        row["answers"].append(item["answer"])
        row["verdicts"].append(item["verdict"])
        predictions[item["id"]].append(item["prediction"])
    return evaluate(list(rows.values()), predictions=[predictions[key] for key in rows])


def chat_answer_fn(model, processor, max_new_tokens: int = 16):
    """`evaluate`'s `answer_fn` through `ChatSession`, the project's own chat path (not the lmms-eval plugin): the
    conversation so far (TRL's vision form, reference answers in earlier assistant turns) is loaded into a session
    and the last question is asked, greedily."""
    from trl.data_utils import prepare_multimodal_messages

    from ..chat import ChatSession

    def answer(messages, images) -> str:
        shown = sum(part.get("type") == "image" for message in messages for part in message["content"])
        conversation = prepare_multimodal_messages(messages, images=list(images)[:shown])  # the pictures so far
        session = ChatSession(model, processor, max_new_tokens=max_new_tokens)
        session.messages = conversation[:-1]
        return session.ask(conversation[-1]["content"])

    return answer


def _accuracy(metric: str):
    def aggregate(items: list[dict]) -> float:
        result = score(items)
        summary = result[metric] if metric in GROUPS else result["per_type"].get(metric)
        return summary["accuracy"] if summary else float("nan")  # a question type this run did not ask

    aggregate.__name__ = f"accuracy_{metric}"
    return aggregate


# The YAML's aggregations: `accuracy_image_colour`, ..., `accuracy_single_media`, `accuracy_cross_media`, ...
globals().update({f"accuracy_{metric}": _accuracy(metric) for metric in METRICS})
