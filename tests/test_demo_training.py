"""The demo's training step: the loss on labelled positions (mmmmodal/demo/loss.py) is the model's own loss with the
same gradients and refuses a language model that rescales its logits; stage 1's cached batches equal the collator's;
the learning-rate schedule (mmmmodal.demo.train.lr_factor) warms up, holds and decays where it says."""

import itertools

import pytest
import torch

from mmmmodal.demo.batching import CachingCollator, ShuffledLengthBatches
from mmmmodal.demo.loss import labelled_loss
from mmmmodal.demo.stream import stream_rows
from mmmmodal.demo.train import lr_factor
from mmmmodal.training.collate import MMMModalDataCollator


def _rows(n: int, seed: int = 0) -> list[dict]:
    rows = itertools.islice(stream_rows(seed=seed, batch_size=6, caption_share=0.1), n)
    return [{"messages": r["messages"], "images": r["images"]} for r in rows]


@pytest.fixture(scope="module")
def batch(tiny):
    _, processor = tiny
    batch = MMMModalDataCollator(processor, assistant_only_loss=True)(_rows(6))
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


@pytest.mark.parametrize("name, value", [("final_logit_softcapping", 0.1), ("logit_scale", 0.0625),
                                         ("logits_scaling", 4.0), ("lm_head_multiplier", 2.0)])
def test_the_loss_uses_the_language_models_logit_scaling(tiny, batch, monkeypatch, name, value):
    """A language model that rescales its logits: the demo's loss is still the model's own loss."""
    model, _ = tiny
    monkeypatch.setattr(model.config.text_config, name, value, raising=False)
    with torch.no_grad():
        ours, _, _ = labelled_loss(model, batch)
        theirs = model(**batch).loss
        monkeypatch.setattr(model.config.text_config, name, None)
        unscaled, _, _ = labelled_loss(model, batch)
    torch.testing.assert_close(ours, theirs)
    assert not torch.allclose(ours, unscaled)


def test_cached_batches_equal_the_collators_and_each_row_is_collated_once(tiny):
    _, processor = tiny
    inner = MMMModalDataCollator(processor, assistant_only_loss=True)
    calls = []
    counting = lambda examples: calls.append(len(examples)) or inner(examples)  # noqa: E731
    caching = CachingCollator(counting, processor.tokenizer.pad_token_id)
    rows = _rows(12, seed=1)
    for _ in range(2):
        for start in (0, 6):
            got, expected = caching(rows[start : start + 6]), inner(rows[start : start + 6])
            assert set(got) == {"input_ids", "attention_mask", "labels", "pixel_values", "input_features",
                                "input_features_mask"} <= set(expected)
            for key in got:
                assert torch.equal(got[key], expected[key]), key
    assert calls == [1] * 12  # one call per distinct row; the second epoch comes from the cache


def test_length_batches_cover_every_row_once_with_similar_lengths_in_random_order():
    lengths = [(i * 37) % 200 + 20 for i in range(1000)]
    sampler = ShuffledLengthBatches(lengths, batch_size=32, group=8, seed=0)
    first, second = list(sampler), list(sampler)
    assert sorted(first) == list(range(1000)) and sorted(second) == list(range(1000)) and first != second
    batches = [first[i : i + 32] for i in range(0, 992, 32)]
    spread = [max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches]
    assert max(spread) < 60  # a random batch spans ~180
    means = [sum(lengths[i] for i in b) / 32 for b in batches]
    assert means != sorted(means) and means != sorted(means, reverse=True)  # no long-to-short drift


def test_stage_two_packed_batches_equal_the_packing_collators_and_keep_the_loss(tiny):
    """The demo packs a batch rendered in one call (`PackingCollator`); it must be the very batch that
    `MMMModalPackingCollator` builds rendering each conversation alone, and score the padded batch's loss."""
    from mmmmodal.demo.batching import PackingCollator
    from mmmmodal.training.packing import MMMModalPackingCollator

    model, processor = tiny
    rows = _rows(12, seed=2)
    rows = rows[::2] + rows[1::2]  # mixed lengths, as the packed stream gives them
    padded = MMMModalDataCollator(processor, assistant_only_loss=True)(rows)
    ours = PackingCollator(MMMModalDataCollator(processor, assistant_only_loss=True), processor)(rows)
    reference = MMMModalPackingCollator(processor, max_length=4096)(rows)
    assert set(ours) == set(reference) and {"pixel_values", "input_features", "position_ids"} <= set(ours)
    for key, value in reference.items():
        assert torch.equal(ours[key], value) if torch.is_tensor(value) else ours[key] == value, key
    assert ours["input_ids"].shape[0] < len(rows)  # conversations do share rows
    assert ours["input_ids"].numel() < padded["input_ids"].numel()
    with torch.no_grad():
        packed_loss, packed_right, packed_count = labelled_loss(model, ours)
        padded_loss, padded_right, padded_count = labelled_loss(model, padded)
    assert packed_count == padded_count > 0 and packed_right == padded_right
    torch.testing.assert_close(packed_loss, padded_loss, atol=1e-5, rtol=1e-5)


def test_split_rows_refuses_a_left_padded_batch(tiny):
    from mmmmodal.demo.batching import split_rows

    _, processor = tiny
    batch = MMMModalDataCollator(processor, assistant_only_loss=True)(_rows(4, seed=2))
    assert (batch["attention_mask"] == 0).any()
    flipped = {key: value.flip(1) if key in ("input_ids", "attention_mask", "labels") else value
               for key, value in batch.items()}
    with pytest.raises(ValueError, match="right-padded"):
        split_rows(flipped, processor.image_start_token_id, processor.audio_start_token_id)


def test_minutes_below_what_stages_one_and_two_need_are_refused_naming_the_minimum(tmp_path):
    from mmmmodal.cli import main
    from mmmmodal.demo.settings import DemoArguments, DemoSettings

    minimum = DemoSettings().minimum_minutes()
    assert 2.5 < minimum < 4
    with pytest.raises(SystemExit, match=rf"needs at least {minimum:.1f} minutes"):
        main(["demo", "--out", str(tmp_path / "demo"), "--minutes", "2"])
    assert not (tmp_path / "demo").exists()  # refused before anything ran
    with pytest.raises(SystemExit, match="with --quick"):
        main(["demo", "--out", str(tmp_path / "demo"), "--quick", "--minutes", "0.3"])
    DemoArguments("d", minutes=minimum + 0.01).check()
    DemoArguments("d", quick=True).check()  # the defaults are allowed
    DemoArguments("d").check()


def test_a_language_model_too_big_for_the_budget_gets_a_warning_with_the_time_per_step(tiny, caplog):
    from mmmmodal.demo.run import warn_if_too_big
    from mmmmodal.demo.settings import DemoSettings
    from mmmmodal.demo.train import matmul_flops_per_second

    model, processor = tiny
    rate = matmul_flops_per_second()
    assert 1e8 < rate < 1e13
    with caplog.at_level("WARNING", logger="mmmmodal.demo.run"):
        step = warn_if_too_big(model, processor, DemoSettings(), seconds=600, seed=0, flops_per_second=rate)
    assert 0 < step < 0.5 and not caplog.records  # the tiny model takes thousands of steps in 10 minutes
    with caplog.at_level("WARNING", logger="mmmmodal.demo.run"):
        again = warn_if_too_big(model, processor, DemoSettings(), seconds=step * 100, seed=0, flops_per_second=rate)
    (record,) = caplog.records
    assert again == step
    assert "too big to train in the budget" in record.message and f"at least {step:,.3g} s" in record.message
    assert "at most 100 steps" in record.message
