"""Every shipped `trl sft --config` recipe parses into TRL's own argument classes (no unknown or removed keys)."""

import sys
from pathlib import Path

import datasets
import pytest
from trl import ModelConfig, ScriptArguments, SFTConfig, TrlParser

from processing.synthetic_task import write_synthetic

RECIPES = sorted((Path(__file__).resolve().parents[1] / "examples" / "recipes").glob("*.yaml"))


@pytest.mark.parametrize("recipe", RECIPES, ids=[r.stem for r in RECIPES])
def test_recipe_parses_with_trl(recipe, tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["trl", "--config", str(recipe), "--output_dir", str(tmp_path),
                                      "--model_name_or_path", "ckpt", "--dataset_name", "data",
                                      "--bf16", "false", "--use_cpu", "true"])  # the recipes are for GPUs
    script_args, training_args, model_args = TrlParser((ScriptArguments, SFTConfig, ModelConfig)).parse_args_and_config()
    assert training_args.assistant_only_loss
    assert training_args.model_init_kwargs["training_stage"] in (1, 2)


def test_synthetic_folder_loads_as_a_dataset_with_both_configs(tmp_path):
    write_synthetic(tmp_path, 6, 3, n_alignment=4)
    conversations = datasets.load_dataset(str(tmp_path))
    assert conversations["train"].num_rows == 6 and conversations["test"].num_rows == 3
    assert datasets.load_dataset(str(tmp_path), "alignment")["train"].num_rows == 4
