"""Probe behind notes/demo.md, round 4: can the demo's tiny LM learn the task when every media item is replaced by
its caption ("Picture 2: three red circles.")? No towers, no projectors: this measures what the language model
alone can learn in a few minutes, which bounds what stage 2 can reach.

    python notes/scripts/text_only_probe.py --seconds 150 --only image_image_more              # one-word verdicts
    python notes/scripts/text_only_probe.py --seconds 150 --only image_image_more --explain     # explained
    python notes/scripts/text_only_probe.py --seconds 240 [--explain]                           # the whole task mix

Prints held-out exact-match accuracy (teacher-forced greedy, every answer token) every 250 steps. Training is a
plain AdamW loop (lr 2e-3, 20 warmup steps, linear decay on the clock, batch 32): the point is the model, not
the trainer.
"""

import argparse
import random
import time
from collections import Counter

import torch
from transformers import AutoTokenizer, LlamaForCausalLM

from mmmmodal.demo_data import LABELS, task_config, tokenizer_corpus
from mmmmodal.tiny import TinySizes, save_tiny_parts
from processing.synthetic_media import describe_audio, describe_image, sample_audio_spec, sample_image_spec
from processing.synthetic_questions import QUESTION_TYPES, reference_answer
from processing.synthetic_task import iter_split


def one_comparison(seed: int, qtype: str):
    """Endless one-turn conversations: exactly the two media `qtype` compares, then the question."""
    rng, kinds = random.Random(seed), QUESTION_TYPES[qtype].refs
    while True:
        spec = {"language": rng.choice(["en", "ms"]),
                "images": [sample_image_spec(rng) for k in kinds if k == "image"],
                "audios": [sample_audio_spec(rng) for k in kinds if k == "audio"]}
        refs = [0, 0] if kinds[0] != kinds[1] else rng.choice([[0, 1], [1, 0]])
        spec["turns"] = [{"new": [(k, kinds[:j].count(k)) for j, k in enumerate(kinds)], "qtype": qtype, "refs": refs}]
        yield spec


def encode(tokenizer, spec, explain: bool):
    """Token ids, labels (answers only) and (answer start, answer ids, qtype) per turn, media as captions."""
    language, ids, labels, answers, shown = spec["language"], [], [], [], {"image": 0, "audio": 0}
    for turn in spec["turns"]:
        text = ""
        for kind, i in turn["new"]:
            shown[kind] += 1
            caption = (describe_image(spec["images"][i], language) if kind == "image"
                       else describe_audio(spec["audios"][i], language))
            text += f"{LABELS[language][kind].format(n=shown[kind])} {caption}. "
        qtype = QUESTION_TYPES[turn["qtype"]]
        media = [spec["images"][i] if k == "image" else spec["audios"][i] for k, i in zip(qtype.refs, turn["refs"])]
        numbers = [i + 1 for i in turn["refs"]]
        text += qtype.templates[language].format(**dict(zip("ab", numbers)))
        user = tokenizer(f"<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n")["input_ids"]
        answer = tokenizer(reference_answer(qtype, media, language, explain) + "<|im_end|>")["input_ids"]
        ids, labels = ids + user, labels + [-100] * len(user)
        answers.append((len(ids), answer[:-1], qtype.name))
        newline = tokenizer("\n")["input_ids"]
        ids, labels = ids + answer + newline, labels + answer + [-100] * len(newline)
    return ids, labels, answers


def batch(tokenizer, specs, explain: bool):
    encoded = [encode(tokenizer, s, explain) for s in specs]
    length = max(len(e[0]) for e in encoded)
    ids = torch.full((len(specs), length), tokenizer.pad_token_id)
    labels = torch.full((len(specs), length), -100)
    mask = torch.zeros((len(specs), length), dtype=torch.long)
    for row, (i, l, _) in enumerate(encoded):
        ids[row, : len(i)], labels[row, : len(l)], mask[row, : len(i)] = torch.tensor(i), torch.tensor(l), 1
    return ids, labels, mask, [e[2] for e in encoded]


@torch.no_grad()
def evaluate(model, tokenizer, specs, explain: bool) -> dict:
    model.eval()
    right, n = Counter(), Counter()
    for start in range(0, len(specs), 100):
        ids, _, mask, answers = batch(tokenizer, specs[start : start + 100], explain)
        guess = model(input_ids=ids, attention_mask=mask).logits.argmax(-1)
        for row, turns in enumerate(answers):
            for begin, answer, qtype in turns:
                n[qtype] += 1
                right[qtype] += guess[row, begin - 1 : begin - 1 + len(answer)].tolist() == answer
    model.train()
    groups = {"single": [q for q in n if not QUESTION_TYPES[q].cross], "cross": [q for q in n if QUESTION_TYPES[q].cross]}
    result = {g: sum(right[q] for q in qs) / sum(n[q] for q in qs) for g, qs in groups.items() if qs}
    result.update({q: right[q] / n[q] for q in sorted(groups["cross"])})
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=240)
    parser.add_argument("--only", choices=[q for q in QUESTION_TYPES if QUESTION_TYPES[q].cross],
                        help="train and test on one-turn conversations of this comparison only")
    parser.add_argument("--explain", action="store_true", help='explained comparisons ("3, 2: yes")')
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = task_config()
    sizes = TinySizes(hidden_size=64, layers=3, heads=4, image_size=32, patch_size=16, audio_window_seconds=2,
                      vocab_size=600)  # the demo's LM (mmmmodal/demo.py: DemoSettings)
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        text = save_tiny_parts(tmp, sizes, corpus=tokenizer_corpus(cfg), seed=0)["text"]
        tokenizer, model = AutoTokenizer.from_pretrained(text), LlamaForCausalLM.from_pretrained(text)
    if args.only:
        train, test = one_comparison(0, args.only), one_comparison(1, args.only)
    else:
        train, test = iter_split(0, "train", cfg), iter_split(1, "test", cfg)
    test_specs = [next(test) for _ in range(600)]
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    start, step = time.time(), 0
    while time.time() - start < args.seconds:
        ids, labels, mask, _ = batch(tokenizer, [next(train) for _ in range(32)], args.explain)
        for group in optimizer.param_groups:
            group["lr"] = args.lr * min(1, (step + 1) / 20) * max(0.05, 1 - (time.time() - start) / args.seconds)
        model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        step += 1
        if step % 250 == 0:
            scores = evaluate(model, tokenizer, test_specs, args.explain)
            print(f"step {step} ({time.time() - start:.0f} s): " + ", ".join(f"{k} {v:.3f}" for k, v in scores.items()),
                  flush=True)
    scores = evaluate(model, tokenizer, test_specs, args.explain)
    print(f"final, step {step}: " + ", ".join(f"{k} {v:.3f}" for k, v in scores.items()))


if __name__ == "__main__":
    main()
