# Build a tiny MMMModal offline (swap in hub ids: google/siglip-base-patch16-384, openai/whisper-small,
# TinyLlama/TinyLlama-1.1B-Chat-v1.0) and chat with two images and one audio clip.
import numpy as np
from PIL import Image
from mmmmodal.build import build
from mmmmodal.tiny import save_tiny_parts

parts = save_tiny_parts("tiny_parts")  # {"vision": ..., "audio": ..., "text": ...}: folders laid out like hub checkpoints
model, processor = build(parts["vision"], parts["audio"], parts["text"])  # their weights, the LM's own chat template
cat, dog = Image.new("RGB", (64, 64), "orange"), Image.new("RGB", (64, 64), "brown")
beep = np.sin(np.arange(16000) * 2 * np.pi * 440 / 16000).astype("float32")  # 1 s at 16 kHz
messages = [{"role": "user", "content": [{"type": "image", "image": cat}, {"type": "image", "image": dog},
             {"type": "audio", "audio": beep}, {"type": "text", "text": "What links picture 1, picture 2 and the sound?"}]}]
inputs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt")
output = model.generate(**inputs, max_new_tokens=20)
print(processor.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))
