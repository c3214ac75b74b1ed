"""Demo "stage 0": pretrain the tiny towers on the synthetic media's attributes.

The paper starts from pretrained SigLIP and Whisper; the demo's tiny towers start random. Stage 0 stands in for
that pretraining: each tower gets a small linear head on its mean-pooled feature layer (the very layer the
projectors read, `config.vision_feature_layer` / `config.audio_feature_layer`) and learns to classify the media's
attributes (image: colour, shape, count; audio: beep count, pitch). The heads are thrown away afterwards; stage 1
and stage 2 then run on the towers as the paper runs on pretrained ones (frozen).
"""

import logging
import random
import time
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from modeling_mmmmodal.configuration_mmmmodal import audio_encoder_lengths
from processing.synthetic_media import (COLOURS, COUNTS, PITCHES, SHAPES, draw_image, sample_audio_spec,
                                        sample_image_spec, synth_audio)

logger = logging.getLogger(__name__)

IMAGE_ATTRIBUTES = {"colour": sorted(COLOURS), "shape": sorted(SHAPES), "count": list(COUNTS)}
AUDIO_ATTRIBUTES = {"count": list(COUNTS), "pitch": sorted(PITCHES)}


@dataclass
class Stage0Result:
    """What stage 0 measured: loss per step, held-out accuracy per attribute, time spent."""

    loss: list = field(default_factory=list)  # (step, image loss, audio loss)
    accuracy: dict = field(default_factory=dict)  # "image_colour" -> held-out accuracy
    steps: int = 0
    seconds: float = 0.0


class _AttributeHead(nn.Module):
    """Mean-pooled feature layer -> one linear classifier per attribute."""

    def __init__(self, hidden: int, attributes: dict):
        super().__init__()
        self.names = list(attributes)
        self.heads = nn.ModuleList(nn.Linear(hidden, len(values)) for values in attributes.values())

    def forward(self, pooled):  # (N, C) -> list of (N, K_a)
        return [head(pooled) for head in self.heads]


def _image_batch(processor, rng, n: int, size: int):
    specs = [sample_image_spec(rng) for _ in range(n)]
    pixels = processor.image_processor([draw_image(s, size) for s in specs], return_tensors="pt")["pixel_values"]
    labels = [torch.tensor([IMAGE_ATTRIBUTES[a].index(getattr(s, a)) for s in specs]) for a in IMAGE_ATTRIBUTES]
    return pixels, labels


def _audio_batch(processor, rng, n: int, seconds: float, beep_seconds: float):
    specs = [sample_audio_spec(rng) for _ in range(n)]
    waves = [synth_audio(s, seconds, beep_seconds, beep_seconds, seed=rng.randrange(2**31)) for s in specs]
    extractor = processor.feature_extractor
    feats = extractor(waves, sampling_rate=extractor.sampling_rate, padding="max_length",
                      return_attention_mask=True, return_tensors="pt")
    labels = [torch.tensor([AUDIO_ATTRIBUTES[a].index(getattr(s, a)) for s in specs]) for a in AUDIO_ATTRIBUTES]
    return feats["input_features"], feats["attention_mask"], labels


def _image_pooled(model, pixels):
    inner = model.model
    hidden = inner.vision_tower(pixels, output_hidden_states=True).hidden_states[model.config.vision_feature_layer]
    return hidden.mean(1)  # (N, P, C) -> (N, C)


def _audio_pooled(model, features, mask):
    inner = model.model
    hidden = inner.audio_tower(features, output_hidden_states=True).hidden_states[model.config.audio_feature_layer]
    frames = audio_encoder_lengths(mask.sum(-1))  # valid encoder frames per clip
    valid = (torch.arange(hidden.shape[1])[None, :] < frames[:, None]).to(hidden.dtype)  # (N, T)
    return (hidden * valid[..., None]).sum(1) / valid.sum(1, keepdim=True)


def _loss_and_hits(logits, labels):
    loss = sum(nn.functional.cross_entropy(lg, lb) for lg, lb in zip(logits, labels))
    hits = [(lg.argmax(-1) == lb).float().mean().item() for lg, lb in zip(logits, labels)]
    return loss, hits


def pretrain_towers(model, processor, seconds: float, image_size: int, clip_seconds: float,
                    beep_seconds: float = 0.15, seed: int = 0, batch_size: int = 64, lr: float = 3e-3,
                    target: float = 0.98, n_eval: int = 256, pool_size: int = 768, min_steps: int = 1) -> Stage0Result:
    """Train both towers (plus throwaway heads) on attribute classification for at most `seconds`.

    Stops early once every held-out attribute accuracy reaches `target`. Leaves the towers in eval mode.
    """
    torch.manual_seed(seed)
    rng, eval_rng = random.Random(seed), random.Random(seed + 10_000)
    towers = {"image": model.model.vision_tower, "audio": model.model.audio_tower}
    heads = {"image": _AttributeHead(towers["image"].config.hidden_size, IMAGE_ATTRIBUTES),
             "audio": _AttributeHead(towers["audio"].config.d_model, AUDIO_ATTRIBUTES)}
    params = [p for m in (*towers.values(), *heads.values()) for p in m.parameters()]
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    result, start = Stage0Result(), time.time()
    held_out = {"image": _image_batch(processor, eval_rng, n_eval, image_size),
                "audio": _audio_batch(processor, eval_rng, n_eval, clip_seconds, beep_seconds)}
    # One pool of training media, drawn once: per-step synthesis would cost more than the tiny towers' steps.
    pool_images = _image_batch(processor, rng, pool_size, image_size)
    pool_audio = _audio_batch(processor, rng, pool_size, clip_seconds, beep_seconds)
    bar = tqdm(desc="stage 0 (tower pretraining)", unit="step")
    while time.time() - start < seconds or result.steps < min_steps:
        for m in (*towers.values(), *heads.values()):
            m.train()
        pick = torch.randint(pool_size, (batch_size,))
        pixels, image_labels = pool_images[0][pick], [lb[pick] for lb in pool_images[1]]
        features, mask = pool_audio[0][pick], pool_audio[1][pick]
        audio_labels = [lb[pick] for lb in pool_audio[2]]
        image_loss, _ = _loss_and_hits(heads["image"](_image_pooled(model, pixels)), image_labels)
        audio_loss, _ = _loss_and_hits(heads["audio"](_audio_pooled(model, features, mask)), audio_labels)
        optimizer.zero_grad()
        (image_loss + audio_loss).backward()
        optimizer.step()
        result.steps += 1
        result.loss.append((result.steps, image_loss.item(), audio_loss.item()))
        bar.update(1)
        if result.steps % 10 == 0:
            result.accuracy = _held_out_accuracy(model, heads, held_out)
            bar.set_postfix({k: f"{v:.2f}" for k, v in result.accuracy.items()})
            if min(result.accuracy.values()) >= target:
                break
    bar.close()
    result.accuracy = _held_out_accuracy(model, heads, held_out)
    result.seconds = time.time() - start
    for tower in towers.values():
        tower.eval()
    logger.info("Stage 0: %d steps in %.0f s, held-out accuracy %s", result.steps, result.seconds, result.accuracy)
    return result


@torch.no_grad()
def _held_out_accuracy(model, heads, held_out) -> dict:
    for m in heads.values():
        m.eval()
    model.model.vision_tower.eval()
    model.model.audio_tower.eval()
    pixels, image_labels = held_out["image"]
    features, mask, audio_labels = held_out["audio"]
    _, image_hits = _loss_and_hits(heads["image"](_image_pooled(model, pixels)), image_labels)
    _, audio_hits = _loss_and_hits(heads["audio"](_audio_pooled(model, features, mask)), audio_labels)
    accuracy = {f"image_{a}": h for a, h in zip(IMAGE_ATTRIBUTES, image_hits)}
    accuracy.update({f"audio_{a}": h for a, h in zip(AUDIO_ATTRIBUTES, audio_hits)})
    return accuracy


__all__ = ["pretrain_towers", "Stage0Result", "IMAGE_ATTRIBUTES", "AUDIO_ATTRIBUTES"]
