"""The demo's training loss, projected through the LM head at the labelled positions only.

TRL's `SFTTrainer` scores a batch through its fused LM head (`trl.trainer.utils.add_fused_lm_head`). Off Triton
devices that head scores *every* position, to keep tile shapes fixed for compilers. On the demo's CPU only a few
percent of the positions of a stage-2 batch carry a label, so projecting those alone makes each step shorter
(`python -m benchmarks --only demo_loss`). The loss is the same number: the mean next-token cross-entropy over the
labelled positions (or their sum over `num_items_in_batch`, as `Trainer` passes it), so the gradients are the same
too (tests/test_demo_training.py).

The logits are the model's own: `model.scale_logits` applies the language model's logit scale or soft-capping
(Cohere's `logit_scale`, Gemma 2's `final_logit_softcapping`, Granite's `logits_scaling`, ...), as its forward does.
"""

import torch
import torch.nn.functional as F


def labelled_loss(model, inputs: dict, num_items_in_batch=None) -> tuple[torch.Tensor, int, int]:
    """(loss, number of labels predicted right by the argmax, number of labels) for a causal LM batch.

    `model` is an MMMModal model (its backbone `model.base_model` returns `last_hidden_state`); `inputs` holds
    `labels` (-100 where there is no loss) besides the model's inputs.
    """
    inputs = dict(inputs)
    labels = inputs.pop("labels")
    inputs["use_cache"] = False
    hidden = model.base_model(**inputs).last_hidden_state[:, :-1]  # (B, S - 1, C): position p predicts token p + 1
    targets = labels[:, 1:].to(hidden.device)
    mask = targets != -100
    logits = model.scale_logits(model.get_output_embeddings()(hidden[mask])).float()  # (N labelled, V)
    total = F.cross_entropy(logits, targets[mask], reduction="sum")
    count = int(mask.sum())
    denominator = num_items_in_batch if num_items_in_batch is not None else max(count, 1)
    correct = int((logits.argmax(-1) == targets[mask]).sum()) if count else 0
    return total / denominator, correct, count


__all__ = ["labelled_loss"]
