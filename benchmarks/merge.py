"""Benchmark 1: forward + backward throughput of the media merge, against LLaVA and a naive per-sample merge.

Three contenders train on the same weights and the same image-only batch:
- `mmmmodal`: our model (placeholder mask + one `masked_scatter`), built without an audio tower so that it holds
  exactly LLaVA's parameters;
- `llava`: transformers' `LlavaForConditionalGeneration` with the same SigLIP tower (full features, layer -2), the
  same Llama and our projector weights; our start/end tokens are ordinary tokens to it;
- `naive`: the reference code's approach, written fresh: each sample's ids hold one placeholder per image, and the
  sequence is rebuilt sample by sample by concatenating text embeddings and image features, then re-padded.
A fourth row, `mmmmodal+audio`, is our full model (audio tower too) on the same image-only batch: in training it
also anchors the idle audio side (see `MMMModalModel._merge_media`), which is what a real stage-2 run pays.
"""

import torch
from transformers import LlavaConfig, LlavaForConditionalGeneration

from .common import IDS, PAD_ID, VOCAB, Row, Size, build_model, time_side_by_side

PLACEHOLDER = -200  # the reference code's IMAGE_TOKEN_INDEX


def make_batch(size: Size, batch: int = 8, media: int = 4, seed: int = 0) -> dict:
    """Expanded ids (our format and LLaVA's), collapsed ids (naive format), labels and pixel values."""
    gen = torch.Generator().manual_seed(seed)
    n = size.image_tokens
    rows, collapsed = [], []
    for _ in range(batch):
        ids, short = [], []
        for m in range(media + 1):
            text = torch.randint(3, VOCAB - 6, (int(torch.randint(2, 12, (1,), generator=gen)),), generator=gen).tolist()
            ids += text
            short += text
            if m < media:
                ids += [IDS["image_start_token_id"]] + [IDS["image_token_id"]] * n + [IDS["image_end_token_id"]]
                short += [IDS["image_start_token_id"], PLACEHOLDER, IDS["image_end_token_id"]]
        rows.append(ids)
        collapsed.append(torch.tensor(short))
    length = max(len(r) for r in rows)
    input_ids = torch.full((batch, length), PAD_ID)
    attention_mask = torch.zeros(batch, length, dtype=torch.long)
    for i, r in enumerate(rows):
        input_ids[i, : len(r)] = torch.tensor(r)
        attention_mask[i, : len(r)] = 1
    labels = input_ids.clone()
    labels[(attention_mask == 0) | (input_ids >= VOCAB - 6)] = -100
    short_labels = [torch.where((c < 0) | (c >= VOCAB - 6), -100, c) for c in collapsed]
    pixel_values = torch.randn(batch * media, 3, size.image_size, size.image_size, generator=gen)
    return {
        "input_ids": input_ids, "attention_mask": attention_mask, "labels": labels, "pixel_values": pixel_values,
        "collapsed_ids": collapsed, "collapsed_labels": short_labels,
    }


def build_llava(model) -> LlavaForConditionalGeneration:
    """LLaVA with our vision tower, projector and LLM weights (same parameter names)."""
    config = LlavaConfig(
        vision_config=model.config.vision_config,
        text_config=model.config.text_config,
        image_token_id=model.config.image_token_id,
        vision_feature_select_strategy="full",
        vision_feature_layer=model.config.vision_feature_layer,
        projector_hidden_act=model.config.projector_hidden_act,
        multimodal_projector_bias=model.config.multimodal_projector_bias,
        image_seq_length=model.config.num_image_tokens,
        tie_word_embeddings=False,
    )
    llava = LlavaForConditionalGeneration(config)
    state = {k: v for k, v in model.state_dict().items() if "audio" not in k}
    missing, unexpected = llava.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"LLaVA does not take our weights as they are: missing {missing}, unexpected {unexpected}")
    return llava.to(model.dtype).eval()


def naive_forward(model, batch: dict):
    """The reference code's merge: per-sample split, concatenate text embeddings and image features, re-pad."""
    features = model.model.get_image_features(batch["pixel_values"]).pooler_output  # tuple of (P, C)
    embed = model.get_input_embeddings()
    embeds, labels, k = [], [], 0
    for ids, sample_labels in zip(batch["collapsed_ids"], batch["collapsed_labels"]):
        where = torch.where(ids == PLACEHOLDER)[0].tolist()
        bounds = [-1] + where + [ids.shape[0]]
        text_ids = [ids[bounds[i] + 1 : bounds[i + 1]] for i in range(len(bounds) - 1)]
        text_labels = [sample_labels[bounds[i] + 1 : bounds[i + 1]] for i in range(len(bounds) - 1)]
        text_embeds = embed(torch.cat(text_ids)).split([t.shape[0] for t in text_ids])
        parts, part_labels = [], []
        for i, (e, lab) in enumerate(zip(text_embeds, text_labels)):
            parts.append(e)
            part_labels.append(lab)
            if i < len(where):
                parts.append(features[k])
                part_labels.append(torch.full((features[k].shape[0],), -100))
                k += 1
        embeds.append(torch.cat(parts))
        labels.append(torch.cat(part_labels))
    length = max(e.shape[0] for e in embeds)
    inputs_embeds = embeds[0].new_zeros(len(embeds), length, embeds[0].shape[-1])
    padded_labels = torch.full((len(embeds), length), -100)
    attention_mask = torch.zeros(len(embeds), length, dtype=torch.long)
    for i, (e, lab) in enumerate(zip(embeds, labels)):
        inputs_embeds[i, : e.shape[0]] = e
        padded_labels[i, : lab.shape[0]] = lab
        attention_mask[i, : e.shape[0]] = 1
    hidden = model.model.language_model(inputs_embeds=inputs_embeds, attention_mask=attention_mask).last_hidden_state
    logits = model.lm_head(hidden)
    loss = model.loss_function(logits=logits, labels=padded_labels, vocab_size=model.config.text_config.vocab_size)
    return logits, loss


def _stage2(model):
    """Freeze the towers, train projectors + LLM (the paper's stage 2), for any of the contenders."""
    for name, param in model.named_parameters():
        param.requires_grad_("vision_tower" not in name and "audio_tower" not in name)
    return model.train()


def logits_parity(size: Size, batch: int = 2, media: int = 2) -> dict:
    """Max abs logit difference of LLaVA and the naive merge against MMMModal, on the same weights and batch."""
    model = build_model(size, audio=False)
    llava = build_llava(model)
    data = make_batch(size, batch, media)
    inputs = {k: data[k] for k in ("input_ids", "attention_mask", "pixel_values")}
    with torch.no_grad():
        ours = model(**inputs).logits
        theirs = llava(**inputs).logits
        naive, _ = naive_forward(model, data)
    valid = data["attention_mask"].bool()
    return {
        "llava": (ours - theirs)[valid].abs().max().item(),
        "naive": (ours - naive)[valid].abs().max().item(),
        "scale": ours[valid].abs().max().item(),
    }


def step_fns(size: Size, batch: int, media: int) -> tuple[dict, int]:
    """One forward + backward closure per contender; also the number of (padded) tokens per step."""
    ours = build_model(size, audio=False)
    llava = _stage2(build_llava(ours))
    full = _stage2(build_model(size, audio=True))
    ours = _stage2(ours)
    data = make_batch(size, batch, media)
    inputs = {k: data[k] for k in ("input_ids", "attention_mask", "pixel_values", "labels")}

    def run(model, forward):
        def step():
            model.zero_grad(set_to_none=True)
            forward().backward()
        return step

    fns = {
        "mmmmodal": run(ours, lambda: ours(**inputs).loss),
        "llava": run(llava, lambda: llava(**inputs).loss),
        "naive": run(ours, lambda: naive_forward(ours, data)[1]),
        "mmmmodal+audio": run(full, lambda: full(**inputs).loss),
    }
    return fns, data["input_ids"].numel()


def merge_only_fns(size: Size, batch: int, media: int) -> dict:
    """Just the merge (ids + projected features -> inputs_embeds), forward + backward, for ours vs naive."""
    model = _stage2(build_model(size, audio=False))
    data = make_batch(size, batch, media)
    embed = model.get_input_embeddings()
    features = torch.randn(batch * media * size.image_tokens, size.hidden, requires_grad=True)
    per_image = features.split(size.image_tokens)
    ids = data["input_ids"]

    def ours():
        embeds = embed(ids)
        mask = model.model.get_placeholder_mask(ids, embeds, model.config.image_token_id, features, "image")
        embeds.masked_scatter(mask, features).sum().backward()

    def naive():
        rows, k = [], 0
        for sample in data["collapsed_ids"]:
            where = torch.where(sample == PLACEHOLDER)[0].tolist()
            bounds = [-1] + where + [sample.shape[0]]
            text = [sample[bounds[i] + 1 : bounds[i + 1]] for i in range(len(bounds) - 1)]
            parts = []
            for i, e in enumerate(embed(torch.cat(text)).split([t.shape[0] for t in text])):
                parts.append(e)
                if i < len(where):
                    parts.append(per_image[k])
                    k += 1
            rows.append(torch.cat(parts))
        padded = rows[0].new_zeros(len(rows), max(r.shape[0] for r in rows), rows[0].shape[-1])
        for i, r in enumerate(rows):
            padded[i, : r.shape[0]] = r
        padded.sum().backward()

    return {"mmmmodal": ours, "naive": naive}


def run(sizes: list[Size], batch: int = 8, media_counts=(2, 4), repeats: int = 3) -> list[Row]:
    rows = []
    for size in sizes:
        heavy = size.hidden >= 256  # fewer repeats and no `+audio` row: one step takes seconds on a CPU
        counts = media_counts[-1:] if heavy else media_counts
        parity = logits_parity(size)
        rows.append(Row("merge", f"{size.name}: logits vs LLaVA / naive",
                        f"max|diff| {parity['llava']:.1e} / {parity['naive']:.1e} (|logit| <= {parity['scale']:.1f})",
                        goal="match", met=max(parity["llava"], parity["naive"]) < 1e-4 * max(1.0, parity["scale"])))
        for media in counts:
            fns, tokens = step_fns(size, batch, media)
            if heavy:
                fns.pop("mmmmodal+audio")
            times = time_side_by_side(fns, repeats=max(repeats // 4, 2) if heavy else repeats)
            tps = {name: tokens / t for name, t in times.items()}
            case = f"{size.name}, B{batch}, {media} img/sample"
            value = ", ".join(f"{name} {v:,.0f}" for name, v in tps.items()) + " tok/s"
            strict = media == max(media_counts)
            rows.append(Row("merge", f"{case}: vs LLaVA", value, tps["mmmmodal"] / tps["llava"], ">= 0.95",
                            tps["mmmmodal"] / tps["llava"] >= 0.95, extra={"tokens_per_s": tps}))
            rows.append(Row("merge", f"{case}: vs naive", "", tps["mmmmodal"] / tps["naive"],
                            ">= 3" if strict else "", (tps["mmmmodal"] / tps["naive"] >= 3) if strict else None))
            merge_times = time_side_by_side(merge_only_fns(size, batch, media), repeats=repeats * 3)
            speedup = merge_times["naive"] / merge_times["mmmmodal"]
            rows.append(Row("merge", f"{case}: merge alone vs naive",
                            f"{merge_times['mmmmodal'] * 1e3:.2f} ms vs {merge_times['naive'] * 1e3:.2f} ms", speedup,
                            ">= 3" if strict else "", (speedup >= 3) if strict else None))
            if "mmmmodal+audio" in tps:
                rows.append(Row("merge", f"{case}: +audio tower vs none", "", tps["mmmmodal+audio"] / tps["mmmmodal"],
                                "(anchor cost)"))
    return rows


def main(quick: bool = False, repeats: int | None = None) -> list[Row]:
    from .common import SIZES

    sizes = [SIZES["tiny"]] if quick else [SIZES["tiny"], SIZES["small"]]
    return run(sizes, batch=8, media_counts=(2, 4), repeats=repeats or (5 if quick else 15))
