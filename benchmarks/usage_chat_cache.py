"""Prefill tokens per turn for ChatSession (KV cache kept across turns) vs recomputing the whole conversation.

    python benchmarks/usage_chat_cache.py
"""
import os, time, numpy as np, soundfile as sf, torch
from PIL import Image
from mmmmodal.tiny import build_tiny, TinySizes
from mmmmodal.chat import ChatSession
os.makedirs("/tmp/mmmmodal_usage_bench", exist_ok=True)
torch.manual_seed(0)
model, processor = build_tiny("/tmp/mmmmodal_usage_bench/build", TinySizes(image_size=64, patch_size=8, audio_window_seconds=30, text_max_positions=8192))
model.eval()
Image.new("RGB", (64, 64), (200, 10, 10)).save("/tmp/mmmmodal_usage_bench/a.png")
sf.write("/tmp/mmmmodal_usage_bench/a.wav", (0.5*np.sin(np.arange(16000*10)*0.1)).astype(np.float32), 16000)
seen = []
model.model.language_model.embed_tokens.register_forward_hook(lambda m, a, o: seen.append(a[0].shape[1]))
s = ChatSession(model, processor, max_new_tokens=16)
for turn in range(4):
    s.attach("image", "/tmp/mmmmodal_usage_bench/a.png"); s.attach("audio", "/tmp/mmmmodal_usage_bench/a.wav")
    seen.clear(); t = time.perf_counter(); s.ask(f"Turn {turn}: what is related between them?"); dt = time.perf_counter() - t
    total = s._last_prompt_length
    ids = s._ids[:, :total]
    imgs = [Image.open("/tmp/mmmmodal_usage_bench/a.png").convert("RGB")] * (turn + 1)
    pv = processor.image_processor(imgs, return_tensors="pt")["pixel_values"]
    au = processor(text="<audio>" * (turn + 1), audio=["/tmp/mmmmodal_usage_bench/a.wav"] * (turn + 1), return_tensors="pt")
    au = {k: au[k] for k in ("input_features", "input_features_mask")}
    t = time.perf_counter()
    with torch.inference_mode():
        model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=pv, **au, max_new_tokens=16, do_sample=False)
    dt_full = time.perf_counter() - t
    print(f"turn {turn}: prompt {total} tokens, prefill read {seen[0]} (cache kept) vs {total} (recompute); "
          f"turn time {dt:.3f}s vs {dt_full:.3f}s")
