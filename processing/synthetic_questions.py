"""Question types of the synthetic task: wording (English / Malay), answer, answer space.

Every type names the media it needs (`refs`, e.g. ("image", "image")), so a question is only asked
about media already shown. Single-media answers are one word: a colour, shape or pitch name in the
question's language, or a digit for counts. A comparison's *verdict* is yes/no ("ya"/"tidak"), or for
"which has more" picture/audio/same ("gambar"/"audio"/"sama"); its reference answer, by default, first
names the compared attribute of each item and then gives the verdict: "3, 2: yes", "merah, biru: tidak"
(`reference_answer`, `explained_answer`). That is the paper's relationship data in checkable form (its
answers say what each item is before relating them), and each step of it is one a small language model
can learn: fetch one value, fetch the other, compare the two tokens it has just written. Rows also carry
the one-word verdicts (`verdicts`); `TaskConfig(explain_comparisons=False)` gives one-word answers.
"""

from dataclasses import dataclass
from typing import Callable

from .synthetic_media import COLOURS, COUNTS, PITCHES, SHAPES


@dataclass(frozen=True)
class QuestionType:
    name: str
    refs: tuple  # media kinds referred to, in order: "image" / "audio"
    cross: bool  # compares two media items
    templates: dict  # language -> str.format template over a, b
    answer: Callable  # (specs, language) -> str: the one-word answer (a comparison's verdict)
    space: Callable  # language -> list of possible one-word answers
    compared: str | None = None  # comparisons: the attribute compared ("colour", "count", "pitch")


YES_NO = {"en": ["yes", "no"], "ms": ["ya", "tidak"]}
MORE = {"en": ["picture", "audio", "same"], "ms": ["gambar", "audio", "sama"]}


def _yes_no(flag: bool, language: str) -> str:
    return YES_NO[language][0 if flag else 1]


def _which_more(image, audio, language: str) -> str:
    if image.count == audio.count:
        return MORE[language][2]
    return MORE[language][0 if image.count > audio.count else 1]


def _colour(name, language):
    return name if language == "en" else COLOURS[name][1]


def _shape(name, language):
    return name if language == "en" else SHAPES[name]


def _pitch(name, language):
    return name if language == "en" else PITCHES[name][1]


def _names(table, language):
    return sorted(table) if language == "en" else sorted(v[1] if isinstance(v, tuple) else v for v in table.values())


def _counts(language):
    return [str(c) for c in COUNTS]


# attribute -> ((spec, language) -> value, language -> possible values)
ATTRIBUTES = {
    "colour": (lambda s, lang: _colour(s.colour, lang), lambda lang: _names(COLOURS, lang)),
    "count": (lambda s, lang: str(s.count), _counts),
    "pitch": (lambda s, lang: _pitch(s.pitch, lang), lambda lang: _names(PITCHES, lang)),
}

QUESTION_TYPES = {q.name: q for q in [
    QuestionType("image_colour", ("image",), False,
                 {"en": "What colour are the shapes in picture {a}?", "ms": "Apakah warna bentuk dalam gambar {a}?"},
                 lambda s, lang: _colour(s[0].colour, lang), lambda lang: _names(COLOURS, lang)),
    QuestionType("image_shape", ("image",), False,
                 {"en": "What shape is in picture {a}?", "ms": "Apakah bentuk dalam gambar {a}?"},
                 lambda s, lang: _shape(s[0].shape, lang), lambda lang: _names(SHAPES, lang)),
    QuestionType("image_count", ("image",), False,
                 {"en": "How many shapes are in picture {a}?", "ms": "Berapa banyak bentuk dalam gambar {a}?"},
                 lambda s, lang: str(s[0].count), _counts),
    QuestionType("audio_count", ("audio",), False,
                 {"en": "How many beeps are in audio {a}?", "ms": "Berapa banyak bip dalam audio {a}?"},
                 lambda s, lang: str(s[0].count), _counts),
    QuestionType("audio_pitch", ("audio",), False,
                 {"en": "Is the pitch of audio {a} low, mid or high?",
                  "ms": "Adakah nada audio {a} rendah, sederhana atau tinggi?"},
                 lambda s, lang: _pitch(s[0].pitch, lang), lambda lang: _names(PITCHES, lang)),
    QuestionType("image_image_colour", ("image", "image"), True,
                 {"en": "Are picture {a} and picture {b} the same colour?",
                  "ms": "Adakah gambar {a} dan gambar {b} sama warna?"},
                 lambda s, lang: _yes_no(s[0].colour == s[1].colour, lang), lambda lang: YES_NO[lang], "colour"),
    QuestionType("image_image_more", ("image", "image"), True,
                 {"en": "Does picture {a} have more shapes than picture {b}?",
                  "ms": "Adakah gambar {a} ada lebih banyak bentuk daripada gambar {b}?"},
                 lambda s, lang: _yes_no(s[0].count > s[1].count, lang), lambda lang: YES_NO[lang], "count"),
    QuestionType("audio_audio_pitch", ("audio", "audio"), True,
                 {"en": "Do audio {a} and audio {b} have the same pitch?",
                  "ms": "Adakah audio {a} dan audio {b} sama nada?"},
                 lambda s, lang: _yes_no(s[0].pitch == s[1].pitch, lang), lambda lang: YES_NO[lang], "pitch"),
    QuestionType("audio_audio_more", ("audio", "audio"), True,
                 {"en": "Does audio {a} have more beeps than audio {b}?",
                  "ms": "Adakah audio {a} ada lebih banyak bip daripada audio {b}?"},
                 lambda s, lang: _yes_no(s[0].count > s[1].count, lang), lambda lang: YES_NO[lang], "count"),
    QuestionType("image_audio_same_count", ("image", "audio"), True,
                 {"en": "Does picture {a} have as many shapes as audio {b} has beeps?",
                  "ms": "Adakah bilangan bentuk dalam gambar {a} sama dengan bilangan bip dalam audio {b}?"},
                 lambda s, lang: _yes_no(s[0].count == s[1].count, lang), lambda lang: YES_NO[lang], "count"),
    QuestionType("image_audio_more", ("image", "audio"), True,
                 {"en": "Which has more: the shapes in picture {a} or the beeps in audio {b}? "
                        "Answer picture, audio or same.",
                  "ms": "Mana lebih banyak: bentuk dalam gambar {a} atau bip dalam audio {b}? "
                        "Jawab gambar, audio atau sama."},
                 lambda s, lang: _which_more(s[0], s[1], lang), lambda lang: MORE[lang], "count"),
]}

# Counting and cross-media questions are weighted up (DESIGN: they are the hard skills to learn).
DEFAULT_WEIGHTS = {
    "image_colour": 1.0, "image_shape": 1.0, "image_count": 1.5, "audio_count": 1.5, "audio_pitch": 1.0,
    "image_image_colour": 1.0, "image_image_more": 1.0, "audio_audio_pitch": 1.0, "audio_audio_more": 1.0,
    "image_audio_same_count": 1.5, "image_audio_more": 1.5,
}


def reference_answer(qtype: QuestionType, media: list, language: str, explain: bool = True) -> str:
    """The answer a row holds: the one-word answer, or for a comparison with `explain`, each item's compared
    attribute and then the verdict ("3, 2: yes")."""
    verdict = qtype.answer(media, language)
    if not (explain and qtype.cross):
        return verdict
    value = ATTRIBUTES[qtype.compared][0]
    return explained_answer(value(media[0], language), value(media[1], language), verdict)


def explained_answer(first: str, second: str, verdict: str) -> str:
    """A comparison's explained answer: "3, 2: yes"."""
    return f"{first}, {second}: {verdict}"


def chance_level(qtype: str, language: str = "en", explained: bool = False) -> float:
    """Accuracy of a uniform guess over the answer space of `qtype`: its one-word answers, or with `explained`
    (a comparison's explained answer) the pairs of attribute values, each of which fixes the verdict."""
    question = QUESTION_TYPES[qtype]
    if explained and question.cross:
        return 1.0 / len(ATTRIBUTES[question.compared][1](language)) ** 2
    return 1.0 / len(question.space(language))
