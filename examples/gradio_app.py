# /// script
# dependencies = ["mmmmodal[ui]"]
# ///
"""Web demo: chat with an MMMModal checkpoint over several images and audio clips, across several turns.

    pip install -e ".[ui]"
    python examples/gradio_app.py ./my-checkpoint --port 7860

Attach any number of images and audio files with the paper clip of the message box, type a question, press Enter.
Each browser session keeps its own `ChatSession`, so earlier media stay in the KV cache and are not encoded again.
"""

import argparse
import os

import gradio as gr

from mmmmodal.chat import ChatSession
from mmmmodal.loading import add_loading_arguments, load_checkpoint
from processing.markers import media_kind


def build_demo(model, processor, max_new_tokens: int = 128) -> gr.Blocks:
    def add_message(message: dict, history: list, session: ChatSession | None):
        """Attach the uploads to this browser's session and show the user's turn; `question` is None on bad media."""
        session = session or ChatSession(model, processor, max_new_tokens=max_new_tokens)
        files, text = message.get("files") or [], (message.get("text") or "").strip()
        history = history + [{"role": "user", "content": {"path": path}} for path in files]
        history = history + [{"role": "user", "content": text or "(no text)"}]
        question = text
        try:
            for path in files:
                session.attach(media_kind(path) or "image", path)  # the image reader names what it cannot read
        except ValueError as error:
            session.pending, question = [], None
            history = history + [{"role": "assistant", "content": f"⚠️ {error}"}]
        return history, gr.MultimodalTextbox(value=None), session, question

    def respond(history: list, session: ChatSession, question: str | None):
        if question is None:  # bad media: the error is already shown (a generator must still yield its output)
            yield history
            return
        history = history + [{"role": "assistant", "content": ""}]
        try:
            for piece in session.stream(question):
                history[-1]["content"] += piece
                yield history
        except ValueError as error:
            history[-1]["content"] = f"⚠️ {error}"
        yield history

    def reset(session: ChatSession | None):
        if session is not None:
            session.reset()
        return [], session

    with gr.Blocks(title="MMMModal") as demo:
        gr.Markdown("## MMMModal: chat over many images and audio clips\nAttach files with 📎, ask, press Enter.")
        chatbot = gr.Chatbot(label="Conversation", height=480, elem_id="chatbot")
        box = gr.MultimodalTextbox(
            file_types=["image", "audio"], file_count="multiple", placeholder="Ask about your images and audio...",
            show_label=False, elem_id="message",
        )
        clear = gr.Button("New conversation", elem_id="reset")
        session, question = gr.State(None), gr.State(None)
        box.submit(add_message, [box, chatbot, session], [chatbot, box, session, question]).then(
            respond, [chatbot, session, question], [chatbot]
        )
        clear.click(reset, [session], [chatbot, session])
    return demo


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="A folder written by save_pretrained, or a hub repository id.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    add_loading_arguments(parser)  # --device, --dtype, --trust-remote-code (off: the installed classes load it)
    args = parser.parse_args()
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    model, processor = load_checkpoint(args.checkpoint, args.device, args.dtype, args.trust_remote_code)
    build_demo(model, processor, args.max_new_tokens).queue().launch(server_name=args.host, server_port=args.port)


if __name__ == "__main__":
    main()
