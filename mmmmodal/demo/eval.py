"""Demo evaluation: score the model on held-out conversations, and answer one conversation turn by turn.

Scoring is teacher-forced greedy decoding, one batched forward pass per batch of conversations: every assistant
turn sees the reference answers of the earlier turns (as `processing.synthetic_eval` prescribes), and its answer
is the argmax token at each of its positions, cut at the first predicted `<|im_end|>`. When those argmax tokens
equal the reference tokens, greedy generation would write exactly the reference; so a turn counts as right here
exactly when greedy generation would write the reference token for token (a slightly stricter test than the
evaluator's normalised match, which also accepts e.g. "two" for "2").
"""

import logging

import torch
from tqdm.auto import tqdm
from trl.data_utils import prepare_multimodal_messages

from mmmmodal.chat import ChatSession
from modeling_mmmmodal.configuration_mmmmodal import TURN_END_TOKEN
from processing.synthetic_eval import evaluate

logger = logging.getLogger(__name__)


def batch_inputs(processor, rows) -> dict:
    """The model's inputs for `rows` (TRL's vision form) with the assistant-token mask, right-padded."""
    messages = [prepare_multimodal_messages(r["messages"], images=list(r["images"])) for r in rows]
    return processor.apply_chat_template(
        messages,
        tokenize=True,
        return_dict=True,
        return_tensors="pt",
        return_assistant_tokens_mask=True,
        processor_kwargs={"padding": True, "padding_side": "right", "add_special_tokens": False},
    )


def _runs(positions: list[int]) -> list[list[int]]:
    """Split sorted positions into runs of consecutive ones (one run per assistant turn)."""
    runs = []
    for p in positions:
        if runs and p == runs[-1][-1] + 1:
            runs[-1].append(p)
        else:
            runs.append([p])
    return runs


@torch.no_grad()
def predict_answers(model, processor, rows, batch_size: int = 32) -> list[list[str]]:
    """One predicted answer string per assistant turn of every row (teacher-forced greedy, see module doc)."""
    model.eval()
    end_id = processor.tokenizer.convert_tokens_to_ids(TURN_END_TOKEN)
    predictions = []
    for start in tqdm(range(0, len(rows), batch_size), desc="evaluate (held-out)", unit="batch"):
        batch = rows[start : start + batch_size]
        inputs = batch_inputs(processor, batch)
        assistant = inputs.pop("assistant_masks")
        guess = model(**inputs).logits.argmax(-1)  # (B, S): guess[:, p] predicts token p + 1
        for b, row in enumerate(batch):
            runs = _runs(assistant[b].nonzero().flatten().tolist())
            if len(runs) != len(row["answers"]):
                raise ValueError(f"Row {row.get('id')}: expected {len(row['answers'])} assistant turns in the "
                                 f"rendered chat, found {len(runs)}. The chat template must mark every assistant turn.")
            row_predictions = []
            for run in runs:
                tokens = []
                for p in run:
                    token = int(guess[b, p - 1])
                    if token == end_id:
                        break
                    tokens.append(token)
                row_predictions.append(processor.tokenizer.decode(tokens, skip_special_tokens=True).strip())
            predictions.append(row_predictions)
    return predictions


def evaluate_model(model, processor, rows, batch_size: int = 32) -> dict:
    """`processing.synthetic_eval.evaluate` on the model's teacher-forced greedy answers."""
    return evaluate(rows, predictions=predict_answers(model, processor, rows, batch_size))


@torch.no_grad()
def chat_transcript(model, processor, row, max_new_tokens: int = 16) -> list[dict]:
    """Answer a conversation's user turns one by one in a `ChatSession`, feeding back the model's own answers.

    Returns one {"question", "answer", "expected", "qtype"} per user turn.
    """
    session = ChatSession(model.eval(), processor, max_new_tokens=max_new_tokens)
    messages = prepare_multimodal_messages(row["messages"], images=list(row["images"]))  # image parts get their file
    user_turns = [m["content"] for m in messages if m["role"] == "user"]
    transcript = []
    for content, expected, qtype in zip(user_turns, row["answers"], row["qtypes"]):
        answer = session.ask(content).strip()
        question = " ".join(p["text"] if p["type"] == "text" else f"<{p['type']}>" for p in content)
        transcript.append({"question": question, "answer": answer, "expected": expected, "qtype": qtype})
    return transcript


__all__ = ["batch_inputs", "predict_answers", "evaluate_model", "chat_transcript"]
