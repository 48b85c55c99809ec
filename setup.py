"""Installs the three code folders as the namespace packages fusegan.kernels, fusegan.models, fusegan.engine."""
from setuptools import setup

setup(
    name="fusegan",
    version="0.1.0",
    description="Triton-fused kernels, models and training engine for image-synthesis networks in PyTorch",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    # `fusegan` itself is an implicit namespace: only the three folders below are packages.
    packages=["fusegan.kernels", "fusegan.models", "fusegan.engine"],
    package_dir={
        "fusegan.kernels": "kernels",
        "fusegan.models": "models",
        "fusegan.engine": "engine",
    },
    install_requires=[
        "torch>=2.6",
        "numpy",
        'triton; platform_system == "Linux"',
    ],
    extras_require={
        "test": ["pytest", "pytest-benchmark", "pytest-xdist", "safetensors"],
        "bench": ["nvidia-ml-py", "matplotlib"],
    },
    entry_points={"console_scripts": ["fusegan = fusegan.engine.cli:main"]},
)
