"""Verdict practice for the demo's tiny LM: text-only comparison questions answered with random values.

The paper starts from a pretrained LLM, which already knows that 3 is more than 2 and that "merah" and "merah" are
the same colour. The demo's tiny LM starts random, and in full runs the verdict of an explained comparison
("3, 2: yes") was the step it learned last, or not within the budget (notes/demo.md, round 5). These rows stand in
for that knowledge, as stage 0 stands in for pretrained SigLIP / Whisper: one-turn text conversations, the task's
comparison question with both values already written in the answer ("Does picture 1 have more shapes than
picture 2?" -> "3, 2: yes"). The values are drawn at random, so only the verdict can be learned from them:
`mmmmodal.demo_collate.VerdictOnlyLabels` keeps the verdict token's label alone (training on the random values
too would teach that answers do not depend on the media). No media are involved and nothing says what any
picture or clip holds: these rows teach the relation (equal, more, which has more, in English and Malay), not any
held-out answer. `mmmmodal.demo_data.stream_dataset(verdict_share=...)` mixes them into stage 2. The demo leaves
the share at 0: in the runs measured (notes/demo.md, round 5) they raised the verdict after the reference values
with one seed, and cross-media accuracy with none.
"""

import random

from processing.synthetic_media import sample_audio_spec, sample_image_spec
from processing.synthetic_questions import QUESTION_TYPES, reference_answer
from processing.synthetic_task import balance_pair


def verdict_row(rng: random.Random, weights: dict, languages=("en", "ms"), equal_share: float = 0.5) -> tuple:
    """(messages, verdict): one comparison question (types weighted by `weights`), answered with random values of
    the compared attribute and their verdict. `equal_share` of the "same ...?" questions get two equal values, so
    that "yes" is not rare."""
    comparisons = [q for q in QUESTION_TYPES.values() if q.cross and weights.get(q.name, 0) > 0]
    question = rng.choices(comparisons, weights=[weights[q.name] for q in comparisons])[0]
    language = rng.choice(list(languages))
    refs = rng.sample(range(3), 2) if question.refs[0] == question.refs[1] else [rng.randrange(3), rng.randrange(3)]
    spec = {"images": [sample_image_spec(rng) for _ in range(3)], "audios": [sample_audio_spec(rng) for _ in range(3)]}
    if question.asks_same and rng.random() < equal_share:
        balance_pair(rng, spec, question.name, refs)
    media = [spec[kind + "s"][i] for kind, i in zip(question.refs, refs)]
    text = question.templates[language].format(a=refs[0] + 1, b=refs[1] + 1)
    answer = reference_answer(question, media, language)
    messages = [{"role": "user", "content": [{"type": "text", "text": text}]},
                {"role": "assistant", "content": [{"type": "text", "text": answer}]}]
    return messages, question.answer(media, language)


def verdict_rows(n: int, seed: int, weights: dict, languages=("en", "ms"), equal_share: float = 0.5) -> list:
    """`n` (messages, verdict) pairs from `verdict_row`, seeded."""
    rng = random.Random(seed)
    return [verdict_row(rng, weights, languages, equal_share) for _ in range(n)]


__all__ = ["verdict_row", "verdict_rows"]
