from setuptools import find_packages, setup

setup(
    name="mmmmodal",
    version="0.1.0",
    description="MMMModal: multi-image, multi-audio, multi-turn multimodal chat models for transformers",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["modeling_mmmmodal", "processing", "mmmmodal", "mmmmodal.*", "processing.*"]),
    install_requires=[
        "torch==2.13.0",
        "transformers==5.23.*",
        "trl==1.16.*",
        "peft==0.21.*",
        "accelerate==1.15.*",
        "deepspeed==0.19.8",
        "datasets==5.2.*",
        "safetensors==0.8.*",
        "tokenizers",
        "numpy",
        "pillow",
        "soundfile",
        "librosa",
        "matplotlib",
        "tqdm",
        "huggingface_hub",
    ],
    extras_require={
        "serve": ["fastapi", "uvicorn"],
        "ui": ["gradio==6.31.*"],
        # everything the test suite drives: the server (with the official openai client) and the web demo in a
        # real browser (Playwright's Python API; the browser itself is Debian's chromium, see .ci/install_browser.sh)
        "test": ["pytest", "pytest-timeout", "openai", "fastapi", "uvicorn", "gradio==6.31.*", "playwright==1.65.*", "gguf>=0.10"],
    },
    entry_points={"console_scripts": ["mmmmodal=mmmmodal.cli:main"]},
)
