"""Scoring MMMModal checkpoints with lmms-eval, the harness multimodal models are compared with.

Installing this package registers the model `mmmmodal` with lmms-eval (entry point group `lmms_eval.models`, read
by its `ModelRegistryV2`): `python -m lmms_eval --model mmmmodal --model_args pretrained=CKPT --tasks ...`. The
chat class (`is_simple = False`, lmms-eval's default for a model that has one) takes tasks' `doc_to_messages`;
`--force_simple` picks the simple class, which takes `doc_to_text` / `doc_to_visual` and scores multiple-choice
tasks through `loglikelihood`. `tasks/` holds the built-in synthetic task as an lmms-eval task
(`mmmmodal eval` fills in its data folder). Only `manifest` is imported by lmms-eval at start-up; the model classes
(`lmms_model`) import lmms-eval and load when a run asks for them.
"""

from pathlib import Path

TASKS_DIR = Path(__file__).with_name("tasks")
SYNTHETIC_TASK = "mmmmodal_synthetic"


def manifest():
    """The `lmms_eval.models` entry point: both of lmms-eval's interfaces under the name `mmmmodal`."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(
        model_id="mmmmodal",
        simple_class_path="mmmmodal.evaluation.lmms_model.MMMModalSimple",
        chat_class_path="mmmmodal.evaluation.lmms_model.MMMModalChat",
    )
