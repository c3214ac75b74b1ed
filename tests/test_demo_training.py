"""The demo's training step: the loss on labelled positions (mmmmodal/demo_loss.py) is the model's own loss with the
same gradients; the learning-rate schedule (mmmmodal.demo.lr_factor) warms up, holds and decays where it says."""

import itertools

import pytest
import torch

from mmmmodal.demo import lr_factor
from mmmmodal.demo_collate import project_collator
from mmmmodal.demo_data import stream_rows
from mmmmodal.demo_loss import labelled_loss


@pytest.fixture(scope="module")
def batch(tiny):
    _, processor = tiny
    rows = list(itertools.islice(stream_rows(seed=0, batch_size=6, caption_share=0.1), 6))
    batch = project_collator(processor)([{"messages": r["messages"], "images": r["images"]} for r in rows])
    assert batch["pixel_values"].shape[0] and batch["input_features"].shape[0]  # both towers take part
    return batch


def _gradients(model):
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def test_labelled_loss_is_the_models_loss_with_the_same_gradients(tiny, batch):
    model, _ = tiny
    model.zero_grad()
    reference = model(**batch).loss
    reference.backward()
    expected = _gradients(model)
    model.zero_grad()
    loss, correct, count = labelled_loss(model, batch)
    loss.backward()
    got = _gradients(model)
    model.zero_grad()
    assert torch.allclose(loss, reference, atol=1e-5)
    assert got.keys() == expected.keys() and len(got) > 10
    for name in expected:
        assert torch.allclose(got[name], expected[name], atol=1e-6, rtol=1e-4), name
    labels = batch["labels"][:, 1:]
    assert count == int((labels != -100).sum()) > 0
    predicted = model(**batch).logits[:, :-1].argmax(-1)
    assert correct == int(((predicted == labels) & (labels != -100)).sum())


def test_labelled_loss_divides_by_num_items_in_batch_when_given(tiny, batch):
    model, _ = tiny
    with torch.no_grad():
        mean, _, count = labelled_loss(model, batch)
        summed, _, _ = labelled_loss(model, batch, num_items_in_batch=torch.tensor(2 * count))
    assert torch.allclose(summed, mean / 2)


def test_lr_factor_warms_up_by_steps_then_holds_and_decays_over_the_last_share_of_the_time():
    assert [lr_factor(step, 0.0, 4) for step in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_factor(3, 0.9, 4) == 1.0  # warmup counts steps, whatever the clock says
    # decay over the whole stage (decay_fraction 1.0, the function's default): 1 - progress, down to the floor
    assert [lr_factor(10, p, 4) for p in (0.0, 0.25, 0.5)] == [1.0, 0.75, 0.5]
    assert lr_factor(10, 0.99, 4) == lr_factor(10, 1.5, 4) == 0.05
    # decay over the last 40%: constant until 60% of the time, half at 80%
    assert lr_factor(10, 0.3, 4, decay_fraction=0.4) == lr_factor(10, 0.6, 4, decay_fraction=0.4) == 1.0
    assert abs(lr_factor(10, 0.8, 4, decay_fraction=0.4) - 0.5) < 1e-9
    assert lr_factor(10, 1.0, 4, decay_fraction=0.4) == 0.05
