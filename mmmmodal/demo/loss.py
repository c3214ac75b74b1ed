"""The demo's training loss, projected through the LM head at the labelled positions only.

TRL's `SFTTrainer` scores a batch through its fused LM head (`trl.trainer.utils.add_fused_lm_head`). Off Triton
devices that head scores *every* position, to keep tile shapes fixed for compilers. On the demo's CPU only a few
percent of the positions of a stage-2 batch carry a label, so projecting those alone makes each step shorter
(`python -m benchmarks --only demo_loss`). The loss is the same number: the mean next-token cross-entropy over the
labelled positions (or their sum over `num_items_in_batch`, as `Trainer` passes it), so the gradients are the same
too (tests/test_demo_training.py).

Some language models scale their logits in their own forward (Cohere's `logit_scale`, Gemma 2's
`final_logit_softcapping`, Granite's `logits_scaling`, ...), and TRL's fused head applies the same. MMMModal's
forward, and so this loss and the demo's scoring, project with the bare LM head: for such a model they would
train and score other logits than the language model's own, so `check_logit_scaling` refuses it.
"""

import torch
import torch.nn.functional as F

# Config fields by which a causal LM's forward rescales its logits (the ones TRL's fused head reads), each with the
# value that leaves the logits as they are.
LOGIT_SCALING = {"logit_scale": 1.0, "output_multiplier": 1.0, "lm_head_multiplier": 1.0, "logits_scaling": 1.0,
                 "final_logit_softcapping": None}


def check_logit_scaling(text_config) -> None:
    """Raise `ValueError` when the language model's config rescales its logits (see the module docstring)."""
    found = {name: getattr(text_config, name) for name, neutral in LOGIT_SCALING.items()
             if getattr(text_config, name, None) not in (None, neutral)}
    if found:
        raise ValueError(
            f"The language model ({getattr(text_config, 'model_type', '?')}) rescales its logits ({found}), which "
            "MMMModal's forward and the demo's loss do not apply: training and scoring would use other logits than "
            "the language model's own. Use a language model without logit scaling or soft-capping for the demo.")


def labelled_loss(model, inputs: dict, num_items_in_batch=None) -> tuple[torch.Tensor, int, int]:
    """(loss, number of labels predicted right by the argmax, number of labels) for a causal LM batch.

    `model` is a transformers model with a backbone (`model.base_model`, returning `last_hidden_state`) and an
    output embedding; `inputs` holds `labels` (-100 where there is no loss) besides the model's inputs.
    """
    check_logit_scaling(model.config.get_text_config())
    inputs = dict(inputs)
    labels = inputs.pop("labels")
    inputs["use_cache"] = False
    hidden = model.base_model(**inputs).last_hidden_state[:, :-1]  # (B, S - 1, C): position p predicts token p + 1
    targets = labels[:, 1:].to(hidden.device)
    mask = targets != -100
    logits = model.get_output_embeddings()(hidden[mask]).float()  # (N labelled, V)
    total = F.cross_entropy(logits, targets[mask], reduction="sum")
    count = int(mask.sum())
    denominator = num_items_in_batch if num_items_in_batch is not None else max(count, 1)
    correct = int((logits.argmax(-1) == targets[mask]).sum()) if count else 0
    return total / denominator, correct, count


__all__ = ["labelled_loss", "check_logit_scaling", "LOGIT_SCALING"]
