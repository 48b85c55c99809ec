"""Installs the three code folders as the namespace packages fusegan.kernels, fusegan.models, fusegan.engine."""
from setuptools import find_packages, setup

# Source folder -> installed package. `fusegan` itself is an implicit namespace: only these are packages.
FOLDERS = {"kernels": "fusegan.kernels", "models": "fusegan.models", "engine": "fusegan.engine"}
PACKAGES = list(FOLDERS.values())
PACKAGES += [f"{name}.{sub}" for folder, name in FOLDERS.items() for sub in find_packages(folder)]

setup(
    name="fusegan",
    version="0.1.0",
    description="Triton-fused kernels, models and training engine for image-synthesis networks in PyTorch",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    packages=PACKAGES,
    package_dir={name: folder for folder, name in FOLDERS.items()},
    install_requires=[
        "torch>=2.6",
        "numpy",
        "safetensors",
        "Pillow",  # image folders and grids
        "tqdm",  # progress bar
        "scipy",  # FID's matrix square root
        "scikit-learn",  # the built-in `digits` dataset (bundled with it, never downloaded)
        "scikit-image",  # the built-in `faces` dataset (lfw_subset, bundled)
        'triton; platform_system == "Linux"',
    ],
    extras_require={
        "test": ["pytest", "pytest-benchmark", "pytest-xdist", "tensorboard"],
        "tensorboard": ["tensorboard"],
        "bench": ["nvidia-ml-py", "matplotlib"],
    },
    entry_points={"console_scripts": ["fusegan = fusegan.engine.cli:main"]},
)
