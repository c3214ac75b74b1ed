"""Smoke run of the benchmark code paths at tiny sizes: no timing assertions, only what must hold at any speed."""

import pytest
import torch

from benchmarks import audio, demo_loss, generation, merge, packing, processor
from benchmarks.common import SIZES, Row, format_table


def test_llava_and_naive_logits_match_ours():
    parity = merge.logits_parity(SIZES["tiny"], batch=2, media=3)
    assert parity["llava"] < 1e-5 and parity["naive"] < 1e-5, parity


def test_merge_rows_report_every_contender_and_their_logits_match():
    rows = merge.run([SIZES["tiny"]], batch=2, media_counts=(2,), repeats=1)
    parity = next(r for r in rows if "logits vs LLaVA / naive" in r.case)
    assert parity.met, parity.value  # the contenders timed are the same computation
    speeds = next(r.extra["tokens_per_s"] for r in rows if "tokens_per_s" in r.extra)
    assert set(speeds) == {"mmmmodal", "llava", "naive", "mmmmodal+audio"}
    assert all(v > 0 for v in speeds.values())
    versus_llava = next(r for r in rows if r.case.endswith(": vs LLaVA"))
    assert versus_llava.ratio == pytest.approx(speeds["mmmmodal"] / speeds["llava"])


def test_audio_tokens_are_proportional_to_duration():
    proc = audio.build_processor(audio.Size("a", hidden=32, layers=1, heads=2))
    tokens = {s: audio.count_tokens(proc, s) for s in (5, 30, 90)}
    assert tokens[30] == audio.FIXED_TOKENS_PER_WINDOW
    assert tokens[5] <= tokens[30] / 5
    assert tokens[90] == 3 * tokens[30]


def test_audio_rows_run():
    rows = audio.run(audio.Size("a", hidden=32, layers=1, heads=2, audio_layers=1), durations=(5, 30), repeats=1)
    assert rows[-1].case.startswith("tokens(5 s)") and rows[-1].met


def test_chat_turn_encodes_only_new_media_and_cache_matches_length():
    rows = generation.run(generation.Size("g", hidden=32, layers=1, heads=2, audio_window_s=3), new_tokens=6,
                          turns=2, answer_tokens=3)
    encoded = next(r for r in rows if "media encoded" in r.case)
    assert encoded.met, encoded.value


def test_processor_contenders_compute_the_same_batches(tmp_path):
    """Each ratio compares two ways of computing one thing: the log-mel over the real samples equals the padded
    computation, and the collator's list-offset mask walk gives transformers' mask walk's batch, labels included."""
    proc = processor.build_processor(processor.Size("p", hidden=32, layers=1, heads=2, audio_window_s=3))
    padded = processor.with_padded_log_mel(proc)
    for batch in processor.clip_batches(12)[:2]:
        ours, peer = (p(**batch, padding=True, return_tensors="pt") for p in (proc, padded))
        assert torch.equal(ours["input_ids"], peer["input_ids"])
        assert torch.allclose(ours["input_features"], peer["input_features"], atol=1e-5)
    from mmmmodal.training.collate import MMMModalDataCollator

    chunk = processor.multi_turn(processor.make_rows(tmp_path, 4))
    ours = MMMModalDataCollator(proc)(chunk)
    peer = MMMModalDataCollator(processor.with_base_mask_walk(proc))(chunk)
    assert (ours["labels"] != -100).any()
    for key in ("input_ids", "attention_mask", "labels"):
        assert torch.equal(ours[key], peer[key]), key


def test_processor_rows_run(monkeypatch):
    monkeypatch.setattr(processor, "SIZE", processor.Size("p", hidden=32, layers=1, heads=2, audio_window_s=3))
    rows = processor.run(n_rows=16)
    assert {r.case.split(",")[0] for r in rows} >= {"processor", "tokenizer", "collator"}
    assert any(r.case.startswith("collator, 4 turns: list offsets") for r in rows)
    assert all(r.ratio > 0 for r in rows if r.ratio is not None)


def test_demo_loss_rows_run_and_both_losses_agree():
    row, = demo_loss.run(batch_size=4, n_batches=2, repeats=1)
    assert row.ratio > 0 and "of positions labelled" in row.value
    ours, trl = row.extra["loss"].values()
    assert abs(ours - trl) < 1e-4 * abs(trl)  # the same loss, whichever way it is computed


def test_demo_packed_row_runs_and_computes_fewer_tokens_for_the_same_labels():
    row, = demo_loss.run_packed(batch_size=8, n_batches=2, repeats=1)  # raises when the two label different tokens
    computed = row.extra["tokens_computed"]
    assert computed["packed"] < computed["padded"], computed
    assert row.extra["labelled_tokens"] > 0 and row.ratio > 0 and "steps/min" in row.value


def test_table_formats():
    table = format_table([Row("b", "c", "v", 1.234, ">= 1", True), Row("b", "d", "w")])
    assert "1.23" in table and "yes" in table and table.count("\n") == 3


def test_packing_rows_run_and_compute_fewer_tokens_for_the_same_labels():
    row, = packing.main(quick=True)  # raises when the two collators label different tokens
    computed = row.extra["tokens_computed"]
    assert computed["real"] <= computed["packed"] < computed["TRL padded"], computed
    assert row.extra["labelled_tokens"] > 0 and row.ratio > 0


def test_lmms_eval_row_says_why_it_is_skipped_without_its_venv(monkeypatch):
    from benchmarks import lmms_eval_batch

    monkeypatch.delenv(lmms_eval_batch.LMMS_EVAL_PYTHON_ENV, raising=False)
    row, = lmms_eval_batch.main(quick=True)
    assert row.value.startswith("skipped: no lmms-eval venv") and row.ratio is None


def _fake_server(limit: float, tried: list):
    """A `measure` for `vllm_serve.search`: p99 TTFT under the goal up to `limit` req/s, over it above; records the
    rates asked for."""
    from benchmarks.vllm_serve import TTFT_GOAL_S

    def measure(rate):
        tried.append(rate)
        return {"rate": rate, "errors": [], "ttft_p99_s": TTFT_GOAL_S * (0.5 if rate <= limit else 2.0)}
    return measure


@pytest.mark.parametrize("limit, expected_tried", [(8.0, [1.0, 2.0, 4.0, 8.0, 16.0]), (0.25, [1.0, 0.5, 0.25]),
                                                   (1.0, [1.0, 2.0]), (1000.0, [1.0, 2.0, 4.0]),
                                                   (0.01, [1.0, 0.5, 0.25])])
def test_the_load_benchmark_searches_each_servers_limit_from_the_start_rate(limit, expected_tried):
    """From the start rate the search goes up while the server sustains the goal and down while it misses, and stops
    at the first rate that flips (or at the grid's end): the rates far from the limit are never run."""
    from benchmarks.vllm_serve import limit as bracket, search

    tried = []
    figures = search((0.25, 0.5, 1, 2, 4, 8, 16) if limit < 100 else (0.5, 1, 2, 4), _fake_server(limit, tried))
    assert tried == expected_tried and [f["rate"] for f in figures] == sorted(expected_tried)
    best, fail = bracket(figures)
    assert best == (max(r for r in tried if r <= limit) if min(tried) <= limit else None)
    assert fail == (min(r for r in tried if r > limit) if max(tried) > limit else None)


def test_the_load_benchmark_gives_a_ratio_only_when_both_limits_are_bracketed():
    from benchmarks.vllm_serve import ratio_text, search

    grid = (0.125, 0.25, 0.5, 1, 2, 4, 8, 16)
    vllm, serve, serve_none, vllm_top = (search(grid, _fake_server(limit, [])) for limit in (8.0, 0.25, 0.01, 100.0))
    words, ratio = ratio_text(vllm, serve)
    assert ratio == 32.0 and words == "vLLM 8 req/s (missed at 16), mmmmodal serve 0.25 req/s (missed at 0.5)"
    words, ratio = ratio_text(vllm, serve_none)  # serve misses even the lowest rate: a lower bound, no ratio
    assert ratio is None and words.endswith("; the ratio is at least 64x (not bracketed)"), words
    words, ratio = ratio_text(vllm_top, serve)  # vLLM sustains the top of the grid: a lower bound again
    assert ratio is None and "vLLM 16 req/s (the highest tried)" in words and "at least 64x" in words, words
    with pytest.raises(ValueError, match="rates must be positive"):
        search((0, 1), _fake_server(1.0, []))


def test_the_load_benchmark_sends_a_sustained_load_at_high_rates():
    """Each rate sends at least `least` requests and every one arriving within `seconds`: a high rate is a load
    that lasts, not a burst of a dozen; the same pool's prefix, so both servers get the same requests."""
    from benchmarks.vllm_serve import request_list, requests_at

    pool = request_list(400, seed=0)
    low, high, capped = (requests_at(pool, rate, least=12, seconds=20) for rate in (0.125, 4.0, 128.0))
    assert len(low) == 12  # 20 s at 0.125 req/s holds fewer than 12 arrivals
    assert 60 <= len(high) <= 100 and high[-1].arrival / 4.0 <= 20 < pool[len(high)].arrival / 4.0
    assert capped == pool and high == pool[: len(high)]
    assert requests_at(pool, 128.0, least=6, seconds=0) == pool[:6]  # the quick run: a fixed count


def test_the_load_benchmark_cli_refuses_rates_that_are_not_positive(capsys):
    from benchmarks.vllm_serve import cli

    for argv in (["--start", "0"], ["--rates", "0,1"], ["--requests", "0"], ["--requests", "50", "--max-requests", "10"]):
        with pytest.raises(SystemExit) as exit_info:
            cli(argv)
        assert exit_info.value.code == 2
    assert "--start and --rates must be positive" in capsys.readouterr().err
