"""Demo report: `report.json`, `report.md` and `report.png` (loss curves, accuracy per question type vs chance)."""

import json
import os
from dataclasses import asdict
from pathlib import Path

from processing.synthetic_questions import QUESTION_TYPES

from .data import task_config

GOALS = {"single_media": 0.95, "cross_media": 0.9}  # on every seed, in 10 minutes on 2 CPU cores


def plot(path, stage0_loss, stage_losses: dict, result: dict):
    """Three panels: stage-0 loss, stage-1/2 loss, held-out accuracy per question type against chance."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(17, 5), gridspec_kw={"width_ratios": [1, 1.2, 2.2]})
    ax = axes[0]
    if stage0_loss:
        steps, image_loss, audio_loss = zip(*stage0_loss)
        ax.plot(steps, image_loss, label="vision tower", color="tab:blue")
        ax.plot(steps, audio_loss, label="audio tower", color="tab:orange")
        ax.legend()
    else:
        ax.text(0.5, 0.5, "no steps (pretrained towers given, or no time)", ha="center", va="center", transform=ax.transAxes)
    ax.set(title="Stage 0: tower pretraining\n(stand-in for pretrained SigLIP / Whisper)", xlabel="step",
           ylabel="attribute classification loss")

    ax, offset = axes[1], 0
    for (stage, points), colour in zip(stage_losses.items(), ("tab:green", "tab:red")):
        if points:
            steps, losses = zip(*points)
            ax.plot([offset + s for s in steps], losses, label=stage, color=colour, marker=".")
            offset += steps[-1]
    ax.set(title="Stage 1 (projectors) and stage 2 (projectors + LLM)\nTRL SFTTrainer, answer-token loss",
           xlabel="optimizer step (stage 2 continues after stage 1)", ylabel="training loss", yscale="log")
    ax.legend()

    ax = axes[2]
    types = sorted(result["per_type"], key=lambda t: (_is_cross(t, result), t))  # single-media types first
    names = types + ["single_media", "cross_media"]
    accuracy = [result["per_type"][t]["accuracy"] for t in types] + [result[g]["accuracy"] for g in GOALS]
    chance = [result["per_type"][t]["chance"] for t in types] + [result[g]["chance"] for g in GOALS]
    majority = [result["per_type"][t]["majority"] for t in types] + [result[g]["majority"] for g in GOALS]
    colours = ["tab:purple" if _is_cross(t, result) else "tab:cyan" for t in types] + ["tab:cyan", "tab:purple"]
    x = range(len(names))
    ax.bar(x, accuracy, color=colours, edgecolor=["none"] * len(types) + ["black", "black"], linewidth=1.5)
    ax.scatter(x, chance, marker="_", s=400, color="black", zorder=3, label="chance (uniform guess)")
    ax.scatter(x, majority, marker="_", s=400, color="tab:orange", zorder=3,
               label="majority answer (per type and language)")
    for g, goal in GOALS.items():
        i = names.index(g)
        ax.plot([i - 0.45, i + 0.45], [goal, goal], color="darkred", linestyle="--", zorder=4)
    ax.plot([], [], color="darkred", linestyle="--",
            label=f"goal ({GOALS['single_media']:g} single, {GOALS['cross_media']:g} cross)")
    for i, value in enumerate(accuracy):
        ax.text(i, value + 0.01, f"{value:.2f}", ha="center", va="bottom", fontsize=8)
    ax.fill_between([], [], color="tab:cyan", label="single-media question")
    ax.fill_between([], [], color="tab:purple", label="cross-media question")
    ax.set_xticks(list(x), names, rotation=40, ha="right", fontsize=8)
    ax.axvline(len(types) - 0.5, color="grey", linewidth=0.8)
    ax.set_yticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    ax.set(ylim=(0, 1.32), ylabel="exact-match accuracy", title="Held-out accuracy per question type")
    ax.legend(fontsize=8, loc="upper left", ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _is_cross(qtype, result) -> bool:
    return QUESTION_TYPES[qtype].cross


def stage_summary(log, settings, lr: float) -> str:
    """One line on how a training stage ran (`log`: a `train.StageLog`)."""
    if not log.loss:
        return f"{log.steps} steps, no logged loss"
    decay = ("then linear decay on the wall clock" if settings.decay_fraction >= 1 else
             f"constant, then linear decay over the last {settings.decay_fraction:.0%} of the stage's wall-clock time")
    return (f"{log.steps} steps of batch {settings.batch_size}, AdamW lr {lr:g} ({settings.warmup_steps} warmup "
            f"steps, {decay}; loss on the labelled positions only), loss {log.loss[0][1]:.3f} -> {log.loss[-1][1]:.3f}")


def stage0_summary(stage0) -> str:
    """One line on stage 0 (`stage0`: a `stage0.Stage0Result`, or None when it was skipped)."""
    if stage0 is None:
        return "skipped: pretrained towers were given"
    return (f"{stage0.steps} steps in {stage0.seconds:.0f} s, held-out attribute accuracy "
            + ", ".join(f"{k} {v:.2f}" for k, v in stage0.accuracy.items()))


def data_summary(settings, n_seen: int, weights: dict) -> str:
    """What the stages trained on and what was scored."""
    return (f"stage 2 trained on a stream of fresh conversations ({n_seen:,} seen, none twice), scored on "
            f"{settings.n_test} held-out ones (English and Malay, 1-4 turns, 0-3 images and 0-3 clips each), "
            f"{settings.n_alignment} caption pairs for stage 1; comparisons answered with both items' attribute and "
            "the verdict (\"3, 2: yes\"); media labelled 'Picture k:' / 'Audio k:'; question mix (relative weights "
            "of the question types, the held-out split's): "
            + ", ".join(f"{k} {v:g}" for k, v in weights.items())
            + ("; stage 2 trains on that mix with these weights multiplied: "
               + ", ".join(f"{k} x{v:g}" for k, v in settings.boost.items()) if settings.boost else ""))


SCORING = ("teacher-forced greedy decoding of every assistant turn of the held-out conversations, exact match against "
           "the reference (processing/synthetic_eval.py); chance is a uniform guess over each question type's answers")


def run_details(args, settings, *, description: str, parameters: int, load_average: list, stage0, stage1, stage2,
                checkpoint, reload_diff: float, transcript: list) -> dict:
    """Everything `report.json` says about the run besides the scores: machine, model, stages, data, the chat."""
    weights = {k: v for k, v in task_config().weights.items() if v}
    seen = stage2.steps * settings.batch_size
    return {
        "threads": args.threads,
        "cpus": os.cpu_count(),
        "load_average": load_average,
        "seed": args.seed,
        "quick": args.quick,
        "checkpoint": str(checkpoint),
        "reload_max_abs_diff": reload_diff,
        "model": {"description": description, "parameters": parameters},
        "stage0": {"summary": stage0_summary(stage0),
                   **({"accuracy": stage0.accuracy, "steps": stage0.steps} if stage0 else {})},
        "stage1": {"summary": stage_summary(stage1, settings, settings.stage1_lr), "loss": stage1.loss},
        "stage2": {"summary": stage_summary(stage2, settings, settings.stage2_lr), "loss": stage2.loss,
                   "ran": stage2.throughput(), "batches": stage2.batches, "steps": stage2.steps,
                   "tokens_computed": stage2.tokens, "tokens_labelled": stage2.labelled,
                   "seconds": round(stage2.seconds, 2)},
        "data": {"summary": data_summary(settings, seen, weights), "n_train_seen": seen, "n_test": settings.n_test,
                 "n_alignment": settings.n_alignment, "question_weights": weights},
        "scoring": SCORING,
        "conversation": transcript,
        "settings": asdict(settings),
    }


def report_json(result: dict, minutes: float, extra: dict) -> dict:
    return {
        "accuracy": {t: r["accuracy"] for t, r in result["per_type"].items()},
        "chance": {t: r["chance"] for t, r in result["per_type"].items()},
        "n": {t: r["n"] for t, r in result["per_type"].items()},
        "single_media": result["single_media"]["accuracy"],
        "cross_media": result["cross_media"]["accuracy"],
        "overall": result["overall"]["accuracy"],
        "chance_single_media": result["single_media"]["chance"],
        "chance_cross_media": result["cross_media"]["chance"],
        "majority": {t: r["majority"] for t, r in result["per_type"].items()},
        "majority_single_media": result["single_media"]["majority"],
        "majority_cross_media": result["cross_media"]["majority"],
        "verdict_accuracy": {t: r["verdict_accuracy"] for t, r in result["per_type"].items() if _is_cross(t, result)},
        "verdict_majority": {t: r["verdict_majority"] for t, r in result["per_type"].items() if _is_cross(t, result)},
        "verdict_cross_media": result["cross_media"]["verdict_accuracy"],
        "verdict_majority_cross_media": result["cross_media"]["verdict_majority"],
        "goal": GOALS,
        "goal_met": {g: result[g]["accuracy"] >= v for g, v in GOALS.items()},
        "minutes": minutes,
        **extra,
    }


def markdown(report: dict, result: dict, transcript: list, png_name: str) -> str:
    met = report["goal_met"]
    lines = [
        "# MMMModal demo report",
        "",
        f"Held-out accuracy: **single-media {report['single_media']:.3f}** (goal {GOALS['single_media']:g}, "
        f"{'met' if met['single_media'] else 'not met'}; chance {report['chance_single_media']:.3f}, majority "
        f"answer {report['majority_single_media']:.3f}), **cross-media {report['cross_media']:.3f}** "
        f"(goal {GOALS['cross_media']:g}, "
        f"{'met' if met['cross_media'] else 'not met'}; chance {report['chance_cross_media']:.3f}, majority answer "
        f"{report['majority_cross_media']:.3f}), overall {report['overall']:.3f}. (Majority answer: always giving "
        "the most frequent answer of the question type in the row's language, without looking at the media.) "
        "A comparison counts as right only when its whole explained answer is (\"3, 2: yes\": both items' "
        "attribute and the verdict). Diagnostic, not an answer score: after the reference values (teacher "
        f"forcing), the verdict is right {report['verdict_cross_media']:.3f} of the time (always giving the most "
        f"frequent verdict: {report['verdict_majority_cross_media']:.3f}).",
        f"Wall time: **{report['minutes']:.2f} minutes** for the whole command, with {report['threads']} torch "
        f"thread(s) training and {report['settings']['workers']} data-collation worker process(es), on a machine "
        f"with {report['cpus']} CPU cores (1-minute load average {report['load_average'][0]:.1f} at the start, "
        f"{report['load_average'][1]:.1f} at the end: other work on the machine slows every phase).",
        "",
        f"![loss curves and accuracy]({png_name})",
        "",
        "## Recipe",
        "",
        f"- Model: {report['model']['description']}; {report['model']['parameters']:,} parameters.",
        f"- Stage 0 (stand-in for the pretrained SigLIP / Whisper of the paper, not part of the paper's recipe): "
        f"{report['stage0']['summary']}",
        f"- Stage 1 (TRL SFTTrainer, `set_training_stage(1)`: projectors only, captions): {report['stage1']['summary']}",
        f"- Stage 2 (TRL SFTTrainer, `set_training_stage(2)`: projectors + LLM, multi-turn chats): "
        f"{report['stage2']['summary']}",
        f"- Stage 2 ran: {report['stage2']['ran']}",
        f"- Data: {report['data']['summary']}",
        f"- Scoring: {report['scoring']}",
        "",
        "## Held-out accuracy per question type",
        "",
        "| question type | kind | n | accuracy | chance | majority answer | verdict after the reference values "
        "| majority verdict |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for qtype, r in result["per_type"].items():
        kind = "cross" if _is_cross(qtype, result) else "single"
        verdict = f"{r['verdict_accuracy']:.3f} | {r['verdict_majority']:.3f}" if kind == "cross" else " | "
        lines.append(f"| {qtype} | {kind} | {r['n']} | {r['accuracy']:.3f} | {r['chance']:.3f} | {r['majority']:.3f} "
                     f"| {verdict} |")
    for group in ("single_media", "cross_media", "overall"):
        r = result[group]
        verdict = f"{r['verdict_accuracy']:.3f} | {r['verdict_majority']:.3f}" if group == "cross_media" else " | "
        lines.append(f"| **{group}** | | {r['n']} | **{r['accuracy']:.3f}** | {r['chance']:.3f} | {r['majority']:.3f} "
                     f"| {verdict} |")
    lines += ["", "## One conversation with two images and two audio clips (reloaded checkpoint, `generate`)", "",
              f"Checkpoint: `{report['checkpoint']}`, reloaded with `trust_remote_code=True` "
              f"(max |logit difference| vs the in-memory model: {report['reload_max_abs_diff']:.2e}).", ""]
    for i, turn in enumerate(transcript, 1):
        mark = "right" if turn["answer"].strip().lower() == turn["expected"].strip().lower() else "wrong"
        lines.append(f"{i}. **User:** {turn['question']}  \n   **Model:** {turn['answer']} "
                     f"(expected: {turn['expected']}; {mark})")
    lines += ["", "## Timing (seconds)", "", "| phase | seconds |", "|---|---:|"]
    lines += [f"| {phase} | {seconds:.1f} |" for phase, seconds in report["seconds"].items()]
    return "\n".join(lines) + "\n"


def write_report(out_dir, result: dict, report: dict, transcript: list, stage0_loss, stage_losses) -> dict:
    out = Path(out_dir)
    plot(out / "report.png", stage0_loss, stage_losses, result)
    (out / "report.json").write_text(json.dumps(report, indent=2))
    (out / "report.md").write_text(markdown(report, result, transcript, "report.png"))
    return {"json": str(out / "report.json"), "markdown": str(out / "report.md"), "png": str(out / "report.png")}


__all__ = ["write_report", "report_json", "plot", "markdown", "stage_summary", "stage0_summary", "data_summary",
           "run_details", "SCORING", "GOALS"]
