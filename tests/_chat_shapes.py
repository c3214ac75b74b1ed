"""Tiny language models carrying chat templates of the four common shapes, built offline.

The templates are written here, modelled on the real ones (the same turn markers, special tokens, whitespace
handling and quirks): ChatML as in Qwen2 / SmolLM2 (a default system prompt when none is given), Llama-3 headers (a
system header always, `bos_token` in the template, `| trim` on content), Mistral `[INST]` (roles must alternate, the
system message goes into the first user turn, `bos_token` in the template) and Zephyr / TinyLlama (`<|user|>` ...
`</s>` as plain text plus eos, one template line per block).
"""

from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

CORPUS = [
    "What is in picture 1? A red circle. How many beeps are in audio 1? Three.",
    "You are a small helpful assistant. Answer the user. Cutting Knowledge Date: December 2023",
    "system user assistant question answer audio image picture compare describe",
    "Apa dalam gambar 1? Bulatan merah. Berapa bunyi dalam audio 1? Tiga.",
]

CHATML = """{%- if messages[0]['role'] == 'system' %}
    {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
{%- else %}
    {{- '<|im_start|>system\\nYou are a small helpful assistant.<|im_end|>\\n' }}
{%- endif %}
{%- for message in messages %}
    {%- if message.role == 'user' or (message.role == 'system' and not loop.first) or (message.role == 'assistant' and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""

LLAMA3 = """{{- bos_token }}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content'] | trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = '' %}
{%- endif %}
{{- '<|start_header_id|>system<|end_header_id|>\\n\\n' }}
{{- 'Cutting Knowledge Date: December 2023\\n\\n' }}
{{- system_message }}
{{- '<|eot_id|>' }}
{%- for message in messages %}
    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
{%- endif %}
"""

MISTRAL = """{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content'] %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set loop_messages = messages %}
{%- endif %}
{{- bos_token }}
{%- for message in loop_messages %}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}
        {{- raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}
    {%- endif %}
    {%- if message['role'] == 'user' %}
        {%- if loop.first and system_message is defined %}
            {{- '[INST] ' + system_message + '\\n\\n' + message['content'] + ' [/INST]' }}
        {%- else %}
            {{- '[INST] ' + message['content'] + ' [/INST]' }}
        {%- endif %}
    {%- elif message['role'] == 'assistant' %}
        {{- message['content'] + eos_token }}
    {%- else %}
        {{- raise_exception('Only user and assistant roles are supported, after an optional system message!') }}
    {%- endif %}
{%- endfor %}
"""

ZEPHYR = """{% for message in messages %}
{% if message['role'] == 'user' %}
{{ '<|user|>\\n' + message['content'] + eos_token }}
{% elif message['role'] == 'system' %}
{{ '<|system|>\\n' + message['content'] + eos_token }}
{% elif message['role'] == 'assistant' %}
{{ '<|assistant|>\\n'  + message['content'] + eos_token }}
{% endif %}
{% if loop.last and add_generation_prompt %}
{{ '<|assistant|>' }}
{% endif %}
{% endfor %}
"""


@dataclass
class Shape:
    """A template shape: its template, special tokens, whether the tokenizer adds `bos`, and its end of turn."""

    name: str
    template: str | None
    specials: list[str]
    bos: str | None
    eos: str
    end_of_turn: str
    adds_bos: bool = False
    spare_rows: int = 0  # embedding rows past the tokenizer (Qwen2 pads its matrix)
    tied: bool = False


SHAPES = {
    "chatml": Shape("chatml", CHATML, ["<|endoftext|>", "<|im_start|>", "<|im_end|>"], None, "<|im_end|>",
                    "<|im_end|>", spare_rows=10, tied=True),
    "llama3": Shape("llama3", LLAMA3, ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
                                       "<|end_header_id|>", "<|eot_id|>"], "<|begin_of_text|>", "<|end_of_text|>",
                    "<|eot_id|>", adds_bos=True),
    "mistral": Shape("mistral", MISTRAL, ["<unk>", "<s>", "</s>"], "<s>", "</s>", "</s>", adds_bos=True),
    "zephyr": Shape("zephyr", ZEPHYR, ["<unk>", "<s>", "</s>"], "<s>", "</s>", "</s>", adds_bos=True),
}


def shape_tokenizer(shape: Shape) -> PreTrainedTokenizerFast:
    """A byte-level BPE trained on `CORPUS` with the shape's special tokens (and bos added, as Llama's does)."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=shape.specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(CORPUS, trainer=trainer)
    if shape.adds_bos:
        bos_id = tokenizer.token_to_id(shape.bos)
        tokenizer.post_processor = processors.TemplateProcessing(single=f"{shape.bos} $A", pair=f"{shape.bos} $A $B",
                                                                 special_tokens=[(shape.bos, bos_id)])
    named = {"eos_token": shape.eos, "pad_token": shape.eos}
    if shape.bos:
        named["bos_token"] = shape.bos
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tokenizer, **named)
    tokenizer.chat_template = shape.template
    return tokenizer


def save_shape_llm(shape: Shape, folder: Path, seed: int = 0) -> Path:
    """A tiny Llama (hidden 32, 2 layers) with the shape's tokenizer, saved like a hub checkpoint."""
    tokenizer = shape_tokenizer(shape)
    ids = tokenizer.convert_tokens_to_ids
    config = LlamaConfig(vocab_size=len(tokenizer) + shape.spare_rows, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         bos_token_id=ids(shape.bos) if shape.bos else None, eos_token_id=ids(shape.eos),
                         pad_token_id=ids(shape.eos), tie_word_embeddings=shape.tied)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id,
                                               pad_token_id=config.pad_token_id)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return Path(folder)
