"""English -> Malay translation with any transformers sequence-to-sequence model.

Works for Marian (`Helsinki-NLP/opus-mt-en-...`), T5-style models that take a task prefix
(`prefix="terjemah ke Melayu: "` for mesolitica's translation T5s), and NLLB / M2M-style models
that pick the target through a language token (`target_lang="zsm_Latn"`). `LLMTranslator` in
`generators.py` translates with an instruction LLM instead.
"""

import logging

logger = logging.getLogger(__name__)


class Seq2SeqTranslator:
    def __init__(self, model: str, prefix: str = "", target_lang: str | None = None, batch_size: int = 8,
                 max_new_tokens: int = 256, device: str | None = None):
        import torch
        from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model)
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model = AutoModelForSeq2SeqLM.from_pretrained(model).to(self.device).eval()
        self.prefix, self.batch_size, self.max_new_tokens = prefix, batch_size, max_new_tokens
        self.forced = {}
        if target_lang:
            token_id = self.tokenizer.convert_tokens_to_ids(target_lang)
            if token_id is None or token_id == self.tokenizer.unk_token_id:
                raise ValueError(f"target_lang: expected a language token of {model}'s tokenizer, found "
                                 f"{target_lang!r} unknown. Fix: use its code (e.g. 'zsm_Latn' for NLLB) or omit it.")
            self.forced = {"forced_bos_token_id": token_id}

    def _batch(self, texts: list) -> list:
        import torch

        inputs = self.tokenizer([self.prefix + t for t in texts], return_tensors="pt", padding=True,
                                truncation=True).to(self.device)
        with torch.no_grad():
            out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False, **self.forced)
        return [t.strip() for t in self.tokenizer.batch_decode(out, skip_special_tokens=True)]

    def translate(self, texts: list) -> list:
        texts, out = list(texts), []
        for start in range(0, len(texts), self.batch_size):
            out += self._batch(texts[start:start + self.batch_size])
        return out


def translate_preserving_markers(translator, texts: list) -> list:
    """Translate texts whose leading `<image>` / `<audio>` markers must survive verbatim.

    Markers are cut off before translation and put back in front, so a model cannot drop or
    translate them. Empty remainders are not sent.
    """
    from .markers import split_leading_markers

    heads, bodies = zip(*(split_leading_markers(t) for t in texts)) if texts else ((), ())
    todo = [i for i, body in enumerate(bodies) if body.strip()]
    translated = translator.translate([bodies[i] for i in todo]) if todo else []
    result = list(bodies)
    for i, text in zip(todo, translated):
        result[i] = text
    return [head + body for head, body in zip(heads, result)]
