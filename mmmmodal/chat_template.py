"""Chat templates for a new MMMModal: the language model's own template extended with image and audio parts, the
check every extension passes, and ChatML for a language model without a template.

This runs when a checkpoint is built (`mmmmodal build`, `mmmmodal.compose`), never when one is loaded: a checkpoint
saves the finished template (`chat_template.jinja`), and its processor only renders it. `turn_end` also serves the
chat loop, which needs the end-of-turn token of whatever template a checkpoint has.
"""

import json
import re

from transformers.utils.chat_template_utils import render_jinja_template

# The fallback for a language model without a chat template of its own: multi-turn ChatML. Content is a string (may
# hold `<image>` / `<audio>` markers) or a list of parts; keys set to None by `datasets` are ignored.
# `{% generation %}` marks what an assistant is trained on: its answer and the `<|im_end|>` that ends it.
CHAT_TEMPLATE = (
    "{%- macro render(content) -%}"
    "{%- if content is string -%}{{- content -}}"
    "{%- else -%}{%- for part in content -%}"
    "{%- if part['type'] == 'text' -%}{{- part['text'] -}}"
    "{%- elif part['type'] == 'image' -%}{{- '<image>' -}}"
    "{%- elif part['type'] == 'audio' -%}{{- '<audio>' -}}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{%- endmacro -%}"
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\n' -}}"
    "{%- if message['role'] == 'assistant' -%}"
    "{%- generation -%}{{- render(message['content']) + '<|im_end|>' -}}{%- endgeneration -%}{{- '\n' -}}"
    "{%- else -%}{{- render(message['content']) + '<|im_end|>\n' -}}{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\n' -}}{%- endif -%}"
)

# A language model's own template, extended (`extend_chat_template`). The prelude turns every message's content into
# the string the language model's template expects (text parts as they are, media parts as `<image>` / `<audio>`) and
# brackets each assistant answer with two Unicode noncharacters; the language model's template then renders as it
# always does, into a variable; the epilogue writes that text out without the brackets, each answer and the
# end-of-turn token after it inside `{% generation %}`. The brackets sit inside the answer's outer whitespace, so a
# template that trims the answer renders it exactly as before.
_EXTENDED = "{#- MMMModal: "
_OPEN, _CLOSE = "\ufdd0", "\ufdd1"
_EXTENSION_PRELUDE = r"""{#- MMMModal: the language model's own chat template (between the set and endset below, unchanged), extended
    so that image and audio parts render as <image> / <audio>, and that each assistant answer with the end-of-turn
    token after it is marked with generation for return_assistant_tokens_mask. -#}
{%- macro mmm_text(content) -%}
{%- if content is string -%}{{- content -}}
{%- else -%}{%- for part in content -%}
{%- if part['type'] == 'text' -%}{{- part['text'] -}}
{%- elif part['type'] == 'image' -%}{{- '<image>' -}}
{%- elif part['type'] == 'audio' -%}{{- '<audio>' -}}
{%- endif -%}{%- endfor -%}{%- endif -%}
{%- endmacro -%}
{%- set mmm = namespace(messages=[]) -%}
{%- for message in messages -%}
{%- if message['content'] is none -%}
{%- set mmm.messages = mmm.messages + [message] -%}
{%- else -%}
{%- set text = mmm_text(message['content']) | replace('\ufdd0', '') | replace('\ufdd1', '') -%}
{%- set core = text | trim -%}
{%- if message['role'] == 'assistant' and core -%}
{%- set at = text.find(core) -%}
{%- set text = text[:at] + '\ufdd0' + core + '\ufdd1' + text[at + core | length:] -%}
{%- endif -%}
{%- set mmm.messages = mmm.messages + [dict(message, content=text)] -%}
{%- endif -%}
{%- endfor -%}
{%- set messages = mmm.messages -%}
{%- set mmm_rendered -%}{{ '' }}"""
_EXTENSION_EPILOGUE = r"""{{ '' }}{%- endset -%}
{%- set mmm_pieces = mmm_rendered.split('\ufdd0') -%}
{{- mmm_pieces[0] -}}
{%- for piece in mmm_pieces[1:] -%}
{%- set answer = piece.split('\ufdd1') -%}
{%- if answer | length != 2 -%}
{{- raise_exception('The language model\'s chat template did not render an assistant answer whole, so it cannot be marked for training.') -}}
{%- endif -%}
{%- set stop = answer[1].find(END_OF_TURN) -%}
{%- set stop = 0 if stop < 0 else stop + END_OF_TURN | length -%}
{%- generation -%}{{- answer[0] + answer[1][:stop] -}}{%- endgeneration -%}
{{- answer[1][stop:] -}}
{%- endfor -%}"""

# Probe conversations: words no template changes, none a prefix of another.
_PROBE_SYSTEM, _PROBE_ANSWERS = "MmmSystemProbe", ("MmmAnswerProbeOne", "MmmAnswerProbeTwo")
_PROBE_QUESTIONS = ("MmmQuestionProbeOne", "MmmQuestionProbeTwo")


def _probe_conversations() -> list[tuple[list[dict], bool]]:
    """(conversation, add_generation_prompt) pairs that an extended template must render as its base template does.

    The second answer has outer whitespace (that a template may trim); one user turn holds media parts.
    """
    system = {"role": "system", "content": _PROBE_SYSTEM}
    q1, q2 = ({"role": "user", "content": q} for q in _PROBE_QUESTIONS)
    a1 = {"role": "assistant", "content": _PROBE_ANSWERS[0]}
    a2 = {"role": "assistant", "content": f" {_PROBE_ANSWERS[1]} \n"}
    media = {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": f"{_PROBE_QUESTIONS[1]} "},
                                         {"type": "audio"}, {"type": "text", "text": "and"}, {"type": "image"}]}
    return [([q1], True), ([q1, a1], False), ([system, q1], True), ([q1, a1, q2], True), ([q1, a1, q2, a2], False),
            ([system, q1, a1, q2, a2], False), ([q1, a1, media], True), ([system, media, a2], False)]


def _as_text(conversation: list[dict]) -> list[dict]:
    """The conversation as its base template sees it: content parts written out as text and placeholders."""
    def text(content):
        if isinstance(content, str):
            return content
        return "".join(part.get("text", "") if part["type"] == "text" else f"<{part['type']}>" for part in content)

    return [{**message, "content": text(message["content"])} for message in conversation]


def _as_parts(conversation: list[dict]) -> list[dict]:
    """The conversation as standard content parts (what TRL's collator and the processor get)."""
    return [{**m, "content": m["content"] if isinstance(m["content"], list) else [{"type": "text", "text": m["content"]}]}
            for m in conversation]


def _render(template: str, tokenizer, conversation: list[dict], add_generation_prompt=False, marks=False):
    """Render one conversation as `apply_chat_template` does; with `marks`, also the (start, end) of its
    `{% generation %}` spans."""
    rendered, indices = render_jinja_template(
        conversations=[conversation], chat_template=template, add_generation_prompt=add_generation_prompt,
        return_assistant_tokens_mask=marks, **tokenizer.special_tokens_map,
    )
    return (rendered[0], [tuple(span) for span in indices[0]]) if marks else rendered[0]


def turn_end(tokenizer, chat_template: str) -> tuple[str, str]:
    """The end-of-turn token of `chat_template`, and the text the template writes after an assistant answer.

    The end-of-turn token is the first special (or added) token after the answer: the token a model stops at.
    The text after the answer is what closes that turn (ChatML: `("<|im_end|>", "<|im_end|>\n")`).
    Raises `ValueError` if there is none.
    """
    answer = _PROBE_ANSWERS[0]
    text = _render(chat_template, tokenizer, [{"role": "user", "content": _PROBE_QUESTIONS[0]},
                                              {"role": "assistant", "content": answer}])
    if text.count(answer) != 1:
        raise ValueError("it does not render an assistant message's content as given (once, unchanged)")
    tail = text[text.index(answer) + len(answer):]
    tokens = {str(token) for token in tokenizer.added_tokens_decoder.values()} | set(tokenizer.all_special_tokens)
    found = [(tail.find(token), -len(token), token) for token in tokens if token and token in tail]
    if not found:
        raise ValueError(
            f"it writes no special token after an assistant answer (it writes {tail!r}), so the model has no "
            "end-of-turn token to stop at"
        )
    return min(found)[2], tail


def extend_chat_template(template: str, tokenizer, name: str = "the language model") -> str:
    """The language model's own chat template, extended for MMMModal.

    Image and audio parts render as `<image>` / `<audio>` placeholders where they are in the message, and each
    assistant answer, with the end-of-turn token that follows it, is marked with `{% generation %}` (for
    `return_assistant_tokens_mask` / `--assistant_only_loss`). A text-only conversation renders exactly as the
    language model's template renders it. An already extended template is returned as it is.

    Args:
        template (`str`): the language model's chat template.
        tokenizer: the language model's tokenizer (its special tokens and the template's variables).
        name (`str`): what to call the language model in errors (its hub id or folder).

    Raises `ValueError`, naming `name` and what is missing, for a template that cannot be extended.
    """
    if template.startswith(_EXTENDED):
        return template
    # The language model's own marks (if any) would be nested in ours: keep their blocks, drop the marking.
    base = re.sub(r"\{%(-?)\s*generation\s*(-?)%\}", r"{%\1 if true \2%}", template)
    base = re.sub(r"\{%(-?)\s*endgeneration\s*(-?)%\}", r"{%\1 endif \2%}", base)
    # Jinja drops one trailing newline of a template; inside ours it would not be the template's end any more.
    base = base[:-2] if base.endswith("\r\n") else base[:-1] if base.endswith(("\n", "\r")) else base
    try:
        end_of_turn, _ = turn_end(tokenizer, base)
    except Exception as error:
        raise ValueError(
            f"The chat template of {name} cannot be extended for MMMModal: {error}. MMMModal needs a template that "
            "renders each message's content as given and ends every assistant turn with a special token; fix the "
            "template in its tokenizer_config.json / chat_template.jinja, or remove it to use ChatML."
        ) from error
    extended = (_EXTENSION_PRELUDE + base + _EXTENSION_EPILOGUE).replace("END_OF_TURN", json.dumps(end_of_turn))
    check_extended_template(template, extended, tokenizer, name)
    return extended


def check_extended_template(base: str, extended: str, tokenizer, name: str = "the language model") -> None:
    """Raise `ValueError` unless `extended` renders the probe conversations as `base` does.

    Text-only conversations must render to the same text (or fail alike, for a template that refuses some role
    order); media parts must render as `<image>` / `<audio>` exactly where they are in the message; the
    `{% generation %}` marks must cover exactly each assistant answer (without its outer whitespace) up to and
    including the end-of-turn token after it.
    """
    end_of_turn, _ = turn_end(tokenizer, base)
    for conversation, prompt in _probe_conversations():
        try:
            expected = _render(base, tokenizer, _as_text(conversation), prompt)
        except Exception:  # the language model's template refuses this conversation: ours must refuse it too
            try:
                _render(extended, tokenizer, _as_parts(conversation), prompt)
            except Exception:
                continue
            raise ValueError(f"The extended chat template of {name} renders a conversation its own template refuses.")
        text, spans = _render(extended, tokenizer, _as_parts(conversation), prompt, marks=True)
        if text != expected:
            raise ValueError(
                f"The extended chat template of {name} renders {_as_parts(conversation)} as {text!r}, but the "
                f"language model's own template gives {expected!r} (media as <image> / <audio> in place)."
            )
        answers = [m["content"].strip() for m in conversation if m["role"] == "assistant"]
        wanted, cursor = [], 0
        for answer in answers:
            start = expected.index(answer, cursor)
            stop = expected.find(end_of_turn, start + len(answer))
            cursor = start + len(answer) if stop < 0 else stop + len(end_of_turn)
            wanted.append(expected[start:cursor])
        # (a mark may take in the whitespace before an answer: ChatML's does, and that renders the same)
        if [text[a:b].lstrip() for a, b in spans] != wanted:
            raise ValueError(
                f"The extended chat template of {name} marks {[text[a:b] for a, b in spans]} for training in "
                f"{text!r}; expected each assistant answer with its end-of-turn token: {wanted}."
            )
