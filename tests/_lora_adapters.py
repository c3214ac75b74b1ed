"""PEFT adapters of the shape `examples/recipes/stage2_lora.yaml` trains: LoRA on the LLM's projections (rank,
alpha and target regex read from the recipe itself) and both projectors fully trained (`modules_to_save`).

Their weights are drawn, not trained (training on this CPU is minutes per adapter): LoRA factors large enough to
change the greedy answer, projectors moved away from the base's. Adapters drawn with the same `projector_seed`
share their projectors, as adapters trained from one stage-1 base with the projectors frozen would.
"""

from pathlib import Path

import torch
import yaml

RECIPE = Path(__file__).resolve().parents[1] / "examples" / "recipes" / "stage2_lora.yaml"


def recipe_lora_config(**overrides):
    """The recipe's LoraConfig, as `trl sft` builds it (TRL passes a single target module as a string: a regex)."""
    from peft import LoraConfig

    recipe = yaml.safe_load(RECIPE.read_text())
    targets = recipe["lora_target_modules"]
    settings = dict(r=recipe["lora_r"], lora_alpha=recipe["lora_alpha"], lora_dropout=recipe["lora_dropout"],
                    target_modules=targets[0] if len(targets) == 1 else targets,
                    modules_to_save=recipe["lora_modules_to_save"])
    return LoraConfig(**{**settings, **overrides})


def make_adapter(checkpoint, out, seed: int, projector_seed: int | None = 0, **config_overrides) -> Path:
    """Save an adapter over `checkpoint` to `out` (LoRA drawn with `seed`, projectors with `projector_seed`)."""
    from peft import get_peft_model

    from modeling_mmmmodal import MMMModalForConditionalGeneration

    base = MMMModalForConditionalGeneration.from_pretrained(checkpoint)
    model = get_peft_model(base, recipe_lora_config(**config_overrides))
    lora, projectors = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(projector_seed or 0)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=lora) * 0.1)
            elif "modules_to_save.default" in name:
                parameter.add_(torch.randn(parameter.shape, generator=projectors) * 0.05)
    model.save_pretrained(out)
    return Path(out)


def peft_model(checkpoint, adapter):
    """transformers + PEFT: `adapter` loaded onto `checkpoint`, in eval mode (the reference vLLM is compared to)."""
    from peft import PeftModel

    from modeling_mmmmodal import MMMModalForConditionalGeneration

    return PeftModel.from_pretrained(MMMModalForConditionalGeneration.from_pretrained(checkpoint), adapter).eval()
