"""Every shipped recipe parses (no unknown or removed keys): a `trl sft --config` recipe into TRL's own argument
classes, one for examples/sft.py (it says so in its header) into that script's."""

import importlib.util
import sys
from pathlib import Path

import datasets
import pytest
from trl import ModelConfig, ScriptArguments, SFTConfig, TrlParser

from processing.synthetic_task import write_synthetic

REPO = Path(__file__).resolve().parents[1]
RECIPES = sorted((REPO / "examples" / "recipes").glob("*.yaml"))


def argument_classes(recipe: Path) -> tuple:
    """TRL's classes, plus examples/sft.py's own flags for a recipe that runs with that script."""
    if "examples/sft.py" not in recipe.read_text():
        return ScriptArguments, SFTConfig, ModelConfig
    spec = importlib.util.spec_from_file_location("mmmmodal_sft_example", REPO / "examples" / "sft.py")
    sft = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sft)
    return ScriptArguments, SFTConfig, ModelConfig, sft.MMMModalArguments


@pytest.mark.parametrize("recipe", RECIPES, ids=[r.stem for r in RECIPES])
def test_recipe_parses_with_trl(recipe, tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["trl", "--config", str(recipe), "--output_dir", str(tmp_path),
                                      "--model_name_or_path", "ckpt", "--dataset_name", "data",
                                      "--bf16", "false", "--use_cpu", "true"])  # the recipes are for GPUs
    classes = argument_classes(recipe)
    script_args, training_args, model_args, *ours = TrlParser(classes).parse_args_and_config()
    assert training_args.assistant_only_loss
    assert training_args.model_init_kwargs["training_stage"] in (1, 2)
    if recipe.stem.endswith("_packed"):
        assert ours[0].pack_conversations and training_args.max_length
        assert not (training_args.packing or training_args.padding_free)  # TRL's own refuse vision rows


def test_synthetic_folder_loads_as_a_dataset_with_both_configs(tmp_path):
    write_synthetic(tmp_path, 6, 3, n_alignment=4)
    conversations = datasets.load_dataset(str(tmp_path))
    assert conversations["train"].num_rows == 6 and conversations["test"].num_rows == 3
    assert datasets.load_dataset(str(tmp_path), "alignment")["train"].num_rows == 4
