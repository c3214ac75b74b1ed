"""The paper's multi-turn growing loop (§2, §3): an instruction LLM plays both sides.

For each media item with a text context (an audio transcript or an image caption):
1. the LLM writes a first user question from the context (`question_prompt`);
2. `format_prompt` builds the assistant-side chat, with the context in the system message and the
   dialogue so far, and the LLM answers;
3. `format_user` asks the LLM to write the user's next question given the dialogue so far;
steps 2-3 repeat for `n_turns` turns. All items of a batch advance together, one
`generator.generate` call per step, so an OpenAI endpoint sees concurrent requests. An item whose
generation fails drops out with its error; the others finish.
"""

from .markers import marker
from .translate import translate_preserving_markers

CONTEXT_NAMES = {"audio": ("an audio clip", "Transcript of the audio"),
                 "image": ("a picture", "Description of the picture")}


def question_prompt(context: str, kind: str) -> list:
    what, label = CONTEXT_NAMES[kind]
    return [{"role": "system", "content": f"You write questions that a curious user would ask about {what}."},
            {"role": "user", "content": f"{label}: {context}\n\nWrite one question a user could ask about {what}. "
                                        "Reply with the question only."}]


def format_prompt(context: str, kind: str, dialogue: list) -> list:
    """Assistant side: the context as the system message, then the dialogue ending in a user turn."""
    what, label = CONTEXT_NAMES[kind]
    system = (f"You are a helpful assistant. The user has shared {what} with you. {label}: {context}\n"
              f"Answer as if you perceive {what} yourself; do not mention a transcript or description.")
    return [{"role": "system", "content": system}] + [dict(m) for m in dialogue]


def format_user(context: str, kind: str, dialogue: list) -> list:
    """User side: ask the LLM for the user's next question, given the dialogue so far."""
    what, label = CONTEXT_NAMES[kind]
    history = "\n".join(f"{m['role']}: {m['content']}" for m in dialogue)
    return [{"role": "system", "content": f"You play the user in a chat with an assistant about {what}. "
                                          f"{label}: {context}"},
            {"role": "user", "content": f"The conversation so far:\n{history}\n\nWrite the user's next question, "
                                        "following up on the conversation. Reply with the question only."}]


def grow_dialogues(generator, contexts: list, kind: str, n_turns: int) -> list:
    """One dialogue (list of {"role", "content"}) of `n_turns` user/assistant pairs per context.

    A context whose generation fails at any step gets that exception in its slot instead of a dialogue,
    and takes no part in the later steps; the other contexts go on.
    """
    if n_turns < 1:
        raise ValueError(f"n_turns: expected >= 1, found {n_turns}.")
    results = [[] for _ in contexts]

    def step(make_chat, role):
        """One generate call for the live dialogues; `make_chat(context, dialogue)` -> chat."""
        live = [i for i, r in enumerate(results) if not isinstance(r, BaseException)]
        if not live:
            return
        replies = generator.generate([make_chat(contexts[i], results[i]) for i in live], return_exceptions=True)
        for i, reply in zip(live, replies):
            if isinstance(reply, BaseException):
                results[i] = reply
            else:
                results[i].append({"role": role, "content": reply})

    step(lambda context, _: question_prompt(context, kind), "user")
    for turn in range(n_turns):
        step(lambda context, dialogue: format_prompt(context, kind, dialogue), "assistant")
        if turn + 1 < n_turns:
            step(lambda context, dialogue: format_user(context, kind, dialogue), "user")
    return results


def to_paper_conversation(dialogue: list, kind: str, translator=None) -> list:
    """Paper record turns: the media marker before the first question; `content_ms` when translating."""
    turns = [dict(m) for m in dialogue]
    turns[0]["content"] = marker(kind) + turns[0]["content"]
    if translator is not None:
        for turn, text in zip(turns, translate_preserving_markers(translator, [t["content"] for t in turns])):
            turn["content_ms"] = text
    return turns
