"""lmms-eval scores MMMModal checkpoints through this package's model plugin (`--model mmmmodal`).

lmms-eval 0.7.3 has pins of its own, so it runs in a venv of its own, built here once per session against the same
torch, with this package installed editable: lmms-eval finds the plugin only through the `lmms_eval.models` entry
point, never by our importing it. (While developing, `MMMMODAL_LMMS_EVAL_PYTHON=<venv>/bin/python` reuses a venv.)
Every run goes through lmms-eval's real CLI (`python -m lmms_eval ... --log_samples`), and each check reads the
samples file and the log it wrote: the CLI logs an error and still exits 0. The reference answers come from
`ChatSession` in this process, on the same checkpoint and the same conversations, built here independently of the
plugin: media at the text's `<image>` / `<audio>` placeholders, or before the text when it has none.
"""

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks.lmms_eval_batch import MIXED_TASK, mixed_docs, run_lmms_eval, write_media, write_task
from mmmmodal.chat import ChatSession
from mmmmodal.cli import main
from mmmmodal.evaluation import synthetic_task
from processing.synthetic_eval import evaluate
from processing.synthetic_questions import QUESTION_TYPES
from tests._lmms_route import ROUTE_DOCS, route_docs
from tests._lmms_route import load_media as load
from tests._venvs import REPO

MAX_NEW_TOKENS = 8
AUTO_TASK = "mmmmodal_mixed_auto"  # no doc_to_messages: lmms-eval builds the chat turn (media dicts -> "video")
MC_TASK = "mmmmodal_mixed_mc"
ROUNDS_TASK = "mmmmodal_rounds"  # generate_until_multi_round: three rounds from doc_to_text_rounds


# ---------------------------------------------------------------------------------------------- reference
def user_parts(text: str, media: list) -> list[dict]:
    """The user turn as ChatSession content parts: media at the placeholders, else before the text."""
    pieces = re.split(r"(<image>|<audio>)", text)
    if len(pieces) == 1:
        return [{"type": kind, kind: item} for kind, item in media] + [{"type": "text", "text": text}]
    media, parts = iter(media), []
    for i, piece in enumerate(pieces):
        if i % 2:
            kind, item = next(media)
            assert f"<{kind}>" == piece
            parts.append({"type": kind, kind: item})
        elif piece:
            parts.append({"type": "text", "text": piece})
    return parts


def chat_answer(model, processor, parts, history=(), max_new_tokens=MAX_NEW_TOKENS) -> str:
    session = ChatSession(model, processor, max_new_tokens=max_new_tokens)
    session.messages = [{"role": role, "content": [{"type": "text", "text": text}]} for role, text in history]
    return session.ask(parts)


def reference_answers(model_and_processor, docs, interface: str) -> list[str]:
    """`chat`: what doc_to_messages holds (history, media as objects or paths); `simple`: doc_to_text and
    doc_to_visual (objects), as lmms-eval's auto chat turn also gives them."""
    answers = []
    for doc in docs:
        if interface == "chat":
            media = [(kind, path if doc["as_paths"] else load(kind, path)) for kind, path in doc["media"]]
            answers.append(chat_answer(*model_and_processor, user_parts(doc["text"], media), doc["history"]))
        else:
            answers.append(chat_answer(*model_and_processor, user_parts(doc["text"], [(k, load(k, p)) for k, p in doc["media"]])))
    return answers


def choice_scores(answer) -> list[tuple[float, bool]]:
    """A multiple-choice sample's (loss, is_greedy) per choice (the samples file writes them as strings)."""
    return [(float(loss), greedy in (True, "True")) for loss, greedy in answer]


def continuation_loss(model, processor, parts, continuation: str) -> float:
    """The mean cross-entropy of the tokens the chat template writes for `continuation` as the answer, computed
    with the model's own loss on labels that mask the prompt."""
    user = [{"role": "user", "content": parts}]
    answer = {"role": "assistant", "content": [{"type": "text", "text": continuation}]}
    template = dict(tokenize=True, return_dict=True, return_tensors="pt")
    prompt = processor.apply_chat_template(user, add_generation_prompt=True, **template)["input_ids"]
    full = dict(processor.apply_chat_template(user + [answer], **template))
    labels = full["input_ids"].clone()
    labels[:, : prompt.shape[1]] = -100
    with torch.no_grad():
        return float(model(**full, labels=labels).loss)


# ---------------------------------------------------------------------------------------------- runs
@pytest.fixture(scope="session")
def sharp(tiny, tmp_path_factory):
    """(model, processor, checkpoint): the tiny model with its output embeddings scaled up, so that its next-token
    distributions are peaked: greedy answers have clear margins, and its own answer is a far likelier choice."""
    import copy

    model, processor = tiny
    model = copy.deepcopy(model)
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(30.0)
    path = tmp_path_factory.mktemp("sharp_checkpoint")
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return model.eval(), processor, path


@pytest.fixture(scope="session")
def eval_setup(sharp, tmp_path_factory):
    """Task folders (the mixed task three ways, a video task, lmms-eval's own ai2d and vocalsound code on local
    data) and the checkpoint; the MC choices hold the model's own greedy answer, far likelier than the others."""
    root = tmp_path_factory.mktemp("lmms_eval")
    media = write_media(root / "media")
    docs = mixed_docs(media)
    tasks = root / "tasks"
    write_task(tasks / "mixed", docs)
    write_task(tasks / "auto", docs, name=AUTO_TASK, messages=False)
    greedy = reference_answers(sharp[:2], docs, "simple")
    for doc, answer in zip(docs, greedy):
        doc["choices"], doc["gold"] = ["zebra crossing at noon", answer or "x", "tidak ada"], 1
    write_task(tasks / "mc", docs, name=MC_TASK, output_type="multiple_choice", messages=False)
    rounds = [doc for doc in docs if "<" not in doc["text"]]  # media before the text in both interfaces
    write_task(tasks / "rounds", rounds, name=ROUNDS_TASK, output_type="generate_until_multi_round", messages=False)
    video = [{**docs[0], "media": [["video", str(root / "clip.mp4")]]}]
    write_task(tasks / "video", video, name="mmmmodal_video")
    (tasks / "real").mkdir()
    real = _real_tasks(tasks / "real", media)
    return {"root": root, "tasks": tasks, "docs": docs, "media": media, "checkpoint": sharp[2], "real": real,
            "round_docs": rounds}


def model_args(setup, **extra) -> str:
    return ",".join(f"{k}={v}" for k, v in {"pretrained": setup["checkpoint"], "device": "cpu", **extra}.items())


@pytest.fixture(scope="session")
def chat_run(lmms_python, eval_setup):
    tasks = [MIXED_TASK, AUTO_TASK, ROUNDS_TASK]
    return run_lmms_eval(lmms_python, model_args(eval_setup), tasks, eval_setup["tasks"], eval_setup["root"] / "chat4",
                         batch_size=4).check(*tasks)


@pytest.fixture(scope="session")
def simple_run(lmms_python, eval_setup):
    """The mixed task and its choices, and lmms-eval's own vocalsound and ai2d code (below), in one run."""
    tasks = [MIXED_TASK, MC_TASK, ROUNDS_TASK, VOCALSOUND, AI2D, AI2D_MC]
    return run_lmms_eval(lmms_python, model_args(eval_setup), tasks, eval_setup["tasks"], eval_setup["root"] / "simple4",
                         batch_size=4, force_simple=True).check(*tasks)


# ---------------------------------------------------------------------------------------------- tests
def test_chat_interface_answers_equal_chat_session_at_batch_4(sharp, eval_setup, chat_run):
    assert "mmmmodal" in chat_run.samples[MIXED_TASK][0].get("model_name", "mmmmodal")
    assert chat_run.answers(MIXED_TASK) == reference_answers(sharp[:2], eval_setup["docs"], "chat")
    # lmms-eval's own chat turn (no doc_to_messages) labels the audio dicts "video"; they are still heard as audio
    assert chat_run.answers(AUTO_TASK) == reference_answers(sharp[:2], eval_setup["docs"], "simple")


def test_simple_interface_answers_equal_chat_session_at_batch_4(sharp, eval_setup, simple_run):
    assert simple_run.answers(MIXED_TASK) == reference_answers(sharp[:2], eval_setup["docs"], "simple")


def reference_rounds(model_and_processor, doc) -> list[str]:
    """The three rounds of `doc_to_text_rounds`, each a fresh single-turn chat (the task's text carries the history)."""
    media = [(kind, load(kind, path)) for kind, path in doc["media"]]
    answers = [chat_answer(*model_and_processor, user_parts(doc["text"], media))]
    answers.append(chat_answer(*model_and_processor, user_parts(f"You said {answers[-1]!r}. Once more?", media[:1])))
    answers.append(chat_answer(*model_and_processor, user_parts("That makes 2 answers. Anything else?", [])))
    return answers


def test_multi_round_requests_run_every_round_in_both_interfaces(sharp, eval_setup, chat_run, simple_run):
    """A `generate_until_multi_round` task (lmms-eval's protocol, as its ovo_forward task): each round's prompt
    quotes the answer before, so a round that did not see the real earlier answer differs; the task itself
    refuses round results or round info that were not handed back (and the run would write no samples)."""
    expected = [reference_rounds(sharp[:2], doc) for doc in eval_setup["round_docs"]]
    assert len(expected) == 5
    for run in (chat_run, simple_run):
        assert run.answers(ROUNDS_TASK) == expected
        assert run.results["results"][ROUNDS_TASK]["rounds_answered,none"] == 3.0


def test_data_parallel_under_accelerate_launch_scores_every_doc_as_one_process_does(lmms_python, eval_setup,
                                                                                    simple_run, tmp_path):
    """`accelerate launch` with two processes (on CPU, `--multi_gpu` picks its torchrun launcher and the processes
    talk over gloo): each process answers its share and lmms-eval gathers them, so every doc is scored once, with the
    answers (and choice losses) of the one-process run."""
    from benchmarks.serve_load import free_port

    launcher = [str(Path(lmms_python).parent / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2",
                "--main_process_port", str(free_port())]
    tasks = [MIXED_TASK, MC_TASK, ROUNDS_TASK]
    run = run_lmms_eval(lmms_python, model_args(eval_setup), tasks, eval_setup["tasks"], tmp_path, batch_size=2,
                        force_simple=True, launcher=launcher).check(*tasks)
    assert "Running on rank 1" in run.log
    for task in tasks:
        assert [s["doc_id"] for s in run.samples[task]] == [s["doc_id"] for s in simple_run.samples[task]]
    assert run.answers(MIXED_TASK) == simple_run.answers(MIXED_TASK)
    assert run.answers(ROUNDS_TASK) == simple_run.answers(ROUNDS_TASK)
    for got, one in zip(run.answers(MC_TASK), simple_run.answers(MC_TASK)):
        got, one = choice_scores(got), choice_scores(one)
        assert [loss for loss, _ in got] == pytest.approx([loss for loss, _ in one], abs=1e-5)
        assert [greedy for _, greedy in got] == [greedy for _, greedy in one]
    assert run.results["results"][MC_TASK]["acc,none"] == simple_run.results["results"][MC_TASK]["acc,none"]


def test_batch_1_answers_equal_too_and_remote_code_that_differs_is_warned(lmms_python, sharp, eval_setup, tmp_path):
    """Batch 1 in both interfaces; the chat run loads a copy whose modeling file differs (a comment) with
    trust_remote_code=True: it must say so, and answer the same."""
    changed = tmp_path / "changed"
    shutil.copytree(eval_setup["checkpoint"], changed)
    with open(changed / "modeling_mmmmodal.py", "a") as f:
        f.write("\n# edited after saving\n")
    chat = run_lmms_eval(lmms_python, model_args({**eval_setup, "checkpoint": changed}, trust_remote_code=True),
                         [MIXED_TASK], eval_setup["tasks"], tmp_path / "chat1").check(MIXED_TASK)
    assert "modeling_mmmmodal.py differ from the installed mmmmodal package's; running the checkpoint's own code" in chat.log
    assert chat.answers(MIXED_TASK) == reference_answers(sharp[:2], eval_setup["docs"], "chat")
    simple = run_lmms_eval(lmms_python, model_args(eval_setup), [MIXED_TASK], eval_setup["tasks"], tmp_path / "simple1",
                           force_simple=True).check(MIXED_TASK)
    assert simple.answers(MIXED_TASK) == reference_answers(sharp[:2], eval_setup["docs"], "simple")


def test_loglikelihood_is_the_continuation_loss_and_scoring_picks_the_likely_choice(sharp, eval_setup, simple_run):
    model, processor, _ = sharp
    for doc, sample, answer in zip(eval_setup["docs"], simple_run.samples[MC_TASK], simple_run.answers(MC_TASK)):
        losses = choice_scores(answer)
        parts = user_parts(doc["text"], [(k, load(k, p)) for k, p in doc["media"]])
        direct = [continuation_loss(model, processor, parts, choice) for choice in doc["choices"]]
        assert [loss for loss, _ in losses] == pytest.approx(direct, abs=1e-4)
        assert direct[1] < min(direct[0], direct[2]) - 0.5  # the greedy answer is far likelier, by construction
        assert losses[0][1] is False  # greedy decoding does not write a far less likely choice
        assert float(sample["acc"]) == 1.0  # lmms-eval's argmin picked it
    assert simple_run.results["results"][MC_TASK]["acc,none"] == 1.0


def test_video_is_refused_naming_the_task_and_doc(lmms_python, eval_setup, tmp_path):
    run = run_lmms_eval(lmms_python, model_args(eval_setup), ["mmmmodal_video"], eval_setup["tasks"], tmp_path,
                        force_simple=True)
    assert "mmmmodal_video" not in run.samples and run.results is None  # no silent 0: nothing was scored
    assert "task 'mmmmodal_video', doc 0: MMMModal takes images and audio, not video" in run.log


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory):
    out = tmp_path_factory.mktemp("synthetic")
    assert main(["data", "synthetic", "--out", str(out), "--train", "0", "--test", "6", "--alignment", "0",
                 "--image-size", "32"]) == 0
    return out


def test_mmmmodal_eval_scores_the_synthetic_task_as_the_project_evaluator(lmms_python, sharp, eval_setup,
                                                                         synthetic_data, tmp_path):
    """`mmmmodal eval` (in lmms-eval's venv, as the README runs it): every turn's answer equals ChatSession's on the
    same teacher-forced conversation, and each score equals `processing.synthetic_eval.evaluate`'s."""
    import subprocess

    out = tmp_path / "out"
    done = subprocess.run([str(lmms_python), "-m", "mmmmodal.cli", "eval", str(eval_setup["checkpoint"]), "--data",
                           str(synthetic_data), "--output", str(out), "--batch-size", "4", "--device", "cpu"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    samples = sorted((json.loads(line) for line in next(out.rglob("*_samples_mmmmodal_synthetic.jsonl")).open()),
                     key=lambda sample: int(sample["doc_id"]))
    rows = [json.loads(line) for line in (synthetic_data / "test.jsonl").open()]

    answer_fn = synthetic_task.chat_answer_fn(*sharp[:2])  # ChatSession, not the plugin
    expected = evaluate(rows, answer_fn=answer_fn)
    assert len(samples) == sum(len(row["answers"]) for row in rows)
    answers = [sample["filtered_resps"].strip() for sample in samples]
    reference = [answer_fn(row["messages"][:i], row["images"]) for row in rows
                 for i, message in enumerate(row["messages"]) if message["role"] == "assistant"]
    assert answers == [answer.strip() for answer in reference]
    results = json.loads(next(out.rglob("*_results.json")).read_text())["results"]["mmmmodal_synthetic"]
    for qtype, summary in expected["per_type"].items():
        assert results[f"{qtype},none"] == pytest.approx(summary["accuracy"])
    for group in ("single_media", "cross_media", "overall"):
        assert results[f"{group},none"] == pytest.approx(expected[group]["accuracy"])
    assert "overall" in done.stdout


def test_synthetic_task_yaml_lists_every_question_type():
    template = (Path(synthetic_task.__file__).parent / "tasks" / "mmmmodal_synthetic" / "_mmmmodal_synthetic_yaml").read_text()
    metrics = re.findall(r"- metric: (\w+)", template)
    assert metrics == [*QUESTION_TYPES, "single_media", "cross_media", "overall"]
    for metric in metrics:
        assert callable(getattr(synthetic_task, f"accuracy_{metric}"))


def test_synthetic_scores_of_a_limited_run_are_the_evaluators_on_the_turns_scored():
    """`--limit` can cut a conversation: its scored turns are scored as the evaluator scores them."""
    items = [{"id": "a", "turn": 0, "qtype": "image_colour", "answer": "red", "verdict": "red", "language": "en",
              "prediction": "Red."},
             {"id": "a", "turn": 1, "qtype": "image_audio_more", "answer": "2, 3: no", "verdict": "no",
              "language": "en", "prediction": "two, 3: no"},
             {"id": "b", "turn": 0, "qtype": "image_colour", "answer": "blue", "verdict": "blue", "language": "en",
              "prediction": "green"}]
    result = synthetic_task.score(items[::-1])
    assert result["per_type"]["image_colour"]["accuracy"] == 0.5
    assert result["cross_media"]["accuracy"] == 1.0 and result["overall"]["accuracy"] == pytest.approx(2 / 3)
    assert np.isnan(synthetic_task.accuracy_audio_pitch(items))  # a type the run did not ask


# ------------------------------------------------------------------------- lmms-eval's own task code, local data
VOCALSOUND = "vocalsound_local"
AI2D, AI2D_MC = "ai2d_local", "ai2d_local_mc"
VOCALSOUND_PROMPT = "Classify the human vocal sound to VocalSound in English: "  # its YAML's default post_prompt
AI2D_KWARGS = {"default": {"prompt_format": "mcq", "pre_prompt": "",
                           "post_prompt": "\nAnswer with the option's letter from the given choices directly."}}


def _real_tasks(folder: Path, media: dict) -> dict:
    """vocalsound's and ai2d's doc functions (imported from the installed lmms-eval by module path) on local
    datasets in their schema, saved with `datasets`: the Audio and Image features decode as on the Hub."""
    from datasets import Audio, Dataset, DatasetDict
    from datasets import Image as ImageFeature

    audio = Dataset.from_dict({"audio": [media["audio", 0], media["audio", 1]], "answer": ["Cough", "Laughter"],
                               "age_group": [1, 2], "spk_id": ["f0001", "m0002"]}).cast_column("audio", Audio())
    DatasetDict({"test": audio}).save_to_disk(folder / "vocalsound_data")
    image = Dataset.from_dict({"image": [media["image", 0], media["image", 1]], "question": ["Which part is red?", "What eats the grass?"],
                               "options": [["the leaf", "the root", "the stem", "the flower"], ["a cow", "a lion", "a hawk", "a snake"]],
                               "answer": ["3", "0"]}).cast_column("image", ImageFeature())
    DatasetDict({"test": image}).save_to_disk(folder / "ai2d_data")
    vs, ai2d = "!function lmms_eval.tasks.vocalsound.utils", "!function lmms_eval.tasks.ai2d.utils"
    local = lambda name: [f"task: {name}", f"dataset_path: {json.dumps(str(folder / (name.split('_')[0] + '_data')))}",
                          "dataset_kwargs:", "  load_from_disk: true", "test_split: test"]
    generation = ["generation_kwargs:", "  max_new_tokens: 8", "  temperature: 0", "  do_sample: false"]
    specific = ["lmms_eval_specific_kwargs:", f"  default: {json.dumps(AI2D_KWARGS['default'])}",
                "model_specific_target_kwargs:", "  default: mcq"]
    yamls = {
        VOCALSOUND: local(VOCALSOUND) + [
            "output_type: generate_until", f"doc_to_visual: {vs}.doc_to_audio", f"doc_to_text: {vs}.doc_to_text",
            "doc_to_target: answer", f"process_results: {vs}.vocalsound_process_results",
            "lmms_eval_specific_kwargs:", f"  default: {json.dumps({'pre_prompt': '', 'post_prompt': VOCALSOUND_PROMPT})}",
            *generation, "metric_list:", "  - metric: accuracy", f"    aggregation: {vs}.vocalsound_aggregate_results",
            "    higher_is_better: true"],
        AI2D: local(AI2D) + [
            "output_type: generate_until", f"doc_to_visual: {ai2d}.ai2d_doc_to_visual",
            f"doc_to_text: {ai2d}.ai2d_doc_to_text", f"doc_to_target: {ai2d}.ai2d_doc_to_target", *specific, *generation,
            "filter_list:", "  - name: flexible-extract", "    filter:", f"      - function: {ai2d}.MultiChoiceRegexFilter",
            "        group_select: 0", "        ignore_case: true", "        ignore_punctuation: true",
            "        regex_pattern: \"([A-Z])\\\\.\"", "metric_list:", "  - metric: exact_match", "    aggregation: mean",
            "    higher_is_better: true", "    ignore_case: true", "    ignore_punctuation: true"],
        AI2D_MC: local(AI2D_MC) + [
            "output_type: multiple_choice", f"doc_to_visual: {ai2d}.ai2d_doc_to_visual",
            f"doc_to_text: {ai2d}.ai2d_doc_to_text", f"doc_to_target: {ai2d}.ai2d_doc_to_target",
            "doc_to_choice: [\"A\", \"B\", \"C\", \"D\"]", *specific, "metric_list:", "  - metric: acc",
            "    aggregation: mean", "    higher_is_better: true"],
    }
    for name, lines in yamls.items():
        (folder / f"{name}.yaml").write_text("\n".join(lines + ["metadata:", "  version: 0.0", ""]))
    return {"audio": audio, "image": image}


@pytest.fixture(scope="session")
def real_run(simple_run, eval_setup):
    return simple_run, eval_setup["real"]


def ai2d_prompt(row) -> str:
    letters = "ABCD"
    options = "\n".join(f"{letters[i]}. {option}" for i, option in enumerate(row["options"]))
    return f"{row['question']}\n{options}{AI2D_KWARGS['default']['post_prompt']}"


def test_real_audio_task_code_generates_from_decoded_audio(sharp, real_run):
    """vocalsound's doc_to_audio hands datasets' decoded audio; its process_results and aggregation score it."""
    run, datasets = real_run
    expected = [chat_answer(*sharp[:2], user_parts(VOCALSOUND_PROMPT, [("audio", row["audio"])])) for row in datasets["audio"]]
    assert run.answers(VOCALSOUND) == expected
    assert all(sample["accuracy"]["spk_id"] in ("f0001", "m0002") for sample in run.samples[VOCALSOUND])
    assert "accuracy,none" in run.results["results"][VOCALSOUND]


def test_real_image_task_code_generates_and_scores_choices(sharp, real_run):
    """ai2d's doc_to_text / doc_to_visual / doc_to_target: generated answers through its regex filter, and its
    choices scored by loglikelihood (the continuation loss) with lmms-eval's argmin."""
    model, processor, _ = sharp
    run, datasets = real_run
    rows = list(datasets["image"])
    assert run.answers(AI2D) == [chat_answer(model, processor, user_parts(ai2d_prompt(row), [("image", row["image"].convert("RGB"))]))
                                 for row in rows]
    for row, sample, answer in zip(rows, run.samples[AI2D_MC], run.answers(AI2D_MC)):
        losses = choice_scores(answer)
        parts = user_parts(ai2d_prompt(row), [("image", row["image"].convert("RGB"))])
        direct = [continuation_loss(model, processor, parts, " " + letter) for letter in "ABCD"]
        assert [loss for loss, _ in losses] == pytest.approx(direct, abs=1e-4)
        assert float(sample["acc"]) == float(int(np.argmin(direct)) == int(row["answer"]))


def test_bad_input_is_refused_with_what_and_where(lmms_python, eval_setup, tmp_path):
    """A missing checkpoint, a non-MMMModal one (named with its model_type), unknown model_args, a doc whose
    placeholders and media disagree (named): errors, never an answer. `until` cuts the answer."""
    import subprocess

    from transformers import LlamaConfig, LlamaForCausalLM

    other = tmp_path / "llama"
    LlamaForCausalLM(LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                                 vocab_size=64)).save_pretrained(other)
    done = subprocess.run([str(lmms_python), str(REPO / "tests" / "_lmms_bad_input.py"), str(eval_setup["checkpoint"]),
                           str(other), eval_setup["media"]["image", 0], eval_setup["media"]["audio", 1]],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found["classes"] == ["MMMModalSimple", "MMMModalChat"]
    assert "Cannot read the config of '/no/such/checkpoint'" in found["missing"]
    assert f"{str(other)!r} is a 'llama' checkpoint, not an MMMModal one" in found["not_mmmmodal"]
    assert "unknown ['beams']" in found["unknown_arg"]
    assert found["mismatch"].startswith("ValueError: task 'bad', doc 0: its text holds the placeholders ['audio'] "
                                        "but doc_to_visual gave ['image']")
    assert "task 'bad', doc 1: its text holds the placeholders ['image']" in found["too_few_placeholders"]
    until = found["until"]
    assert until["stop"] and until["cut"] == until["full"][: until["full"].index(until["stop"])]
    assert "do_sample with temperature 0" in found["sampling_without_temperature"]


def test_mmmmodal_eval_writes_the_task_folder_and_refuses_without_lmms_eval(synthetic_data, tmp_path, capsys):
    import importlib.util

    assert main(["eval", "--task-dir-only", "--data", str(synthetic_data), "--output", str(tmp_path), "--label-media"]) == 0
    folder = Path(capsys.readouterr().out.strip())
    written = (folder / "mmmmodal_synthetic.yaml").read_text()
    assert json.dumps(str((synthetic_data / "test.jsonl").resolve())) in written and "process_docs_labelled" in written
    assert Path(json.loads(written.split("include: ", 1)[1].split("\n", 1)[0])).is_file()  # the shipped template
    with pytest.raises(SystemExit, match="does not exist"):
        main(["eval", "ckpt", "--data", str(tmp_path / "nothing"), "--output", str(tmp_path)])
    if importlib.util.find_spec("lmms_eval") is None:  # this suite's own venv: lmms-eval lives in another
        with pytest.raises(SystemExit, match="lmms-eval is not installed"):
            main(["eval", "ckpt", "--data", str(synthetic_data), "--output", str(tmp_path)])


# ---------------------------------------------------------------------------------------------- the serving route
ROUTE_TASK = "mmmmodal_route"


def test_the_serving_route_carries_images_and_audio_files_and_drops_or_fails_the_rest(lmms_python, sharp, eval_setup,
                                                                                      tmp_path):
    """lmms-eval's `openai` model (its OpenAI-compatible client) against `mmmmodal serve` on the same checkpoint, in
    both interfaces, on docs that hand each media kind as an object and as a path (docs/evaluation.md, "The serving
    route", states what this finds). Simple: images and audio *files* arrive (text first, then the media), a
    datasets audio dict is dropped without a word, and a context with `<image>` / `<audio>` placeholders is refused
    (the server takes them for media tokens). Chat: images arrive; audio goes as `audio_url` with the part's `url`,
    which the server reads when it is a file under `--allowed-local-media-path`; a request with an audio dict fails
    on the client (not JSON-serialisable), its images too. Failures are scored as lmms-eval's failure marker."""
    from benchmarks.serve_load import server_process

    media = eval_setup["media"]
    write_task(tmp_path / "tasks", route_docs(media), name=ROUTE_TASK)
    model, processor, checkpoint = sharp
    key, name = "route-key", "tiny-mmmmodal"
    args = ["--api-key", key, "--model-name", name, "--max-new-tokens", str(MAX_NEW_TOKENS), "--log-level", "warning",
            "--allowed-local-media-path", str(Path(media["image", 0]).parent)]
    with server_process(checkpoint, *args, log_path=tmp_path / "serve.log") as (_, url):
        openai_args = f"model_version={name},base_url={url}/v1,api_key={key},max_retries=1,retry_backoff_s=0,timeout=60"
        runs = {interface: run_lmms_eval(lmms_python, openai_args, [ROUTE_TASK], tmp_path / "tasks",
                                         tmp_path / interface, force_simple=interface == "simple", model="openai")
                for interface in ("simple", "chat")}
    for interface, run in runs.items():
        assert ROUTE_TASK in run.samples, (interface, run.log[-3000:])
    answer = lambda parts: chat_answer(model, processor, parts)  # noqa: E731
    image0, image1 = load("image", media["image", 0]), load("image", media["image", 1])
    audio0, audio1 = load("audio", media["audio", 0]), load("audio", media["audio", 1])
    text = lambda i: [{"type": "text", "text": ROUTE_DOCS[i][0]}]  # noqa: E731
    simple = runs["simple"].answers(ROUTE_TASK)
    assert simple[0] == answer(text(0) + [{"type": "image", "image": image0}])  # a PIL image: carried, after the text
    assert simple[1] == answer(text(1) + [{"type": "image", "image": image1}])  # an image file: carried
    assert simple[2] == answer(text(2))  # a datasets audio dict: dropped, and the model answers the text alone
    assert simple[2] != answer(text(2) + [{"type": "audio", "audio": audio0}])
    assert simple[3] == answer(text(3) + [{"type": "audio", "audio": audio1}])  # an audio file: carried
    # placeholders in the text: the server refuses them (400), and lmms-eval scores its failure marker as the answer
    assert simple[4].startswith("[LMMS_EVAL_REQUEST_FAILED") and "one of this model's media tokens" in simple[4]
    chat = runs["chat"].answers(ROUTE_TASK)
    assert chat[0] == answer([{"type": "image", "image": image0}] + text(0))  # the doc's own part order
    assert chat[1] == answer([{"type": "image", "image": image1}] + text(1))
    assert chat[2].startswith("[LMMS_EVAL_REQUEST_FAILED"), chat  # an audio dict in `audio_url`: not serialisable
    assert chat[3] == answer([{"type": "audio", "audio": audio1}] + text(3))  # a file path in `audio_url`: read
    # audio objects beside an image: the whole request fails on the client, the image with it
    assert chat[4] == chat[2] and "Object of type ndarray is not JSON serializable" in chat[4]
