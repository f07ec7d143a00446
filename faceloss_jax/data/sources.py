"""The data sources by name, and ``create_source(config, split)``.

Every source is a grain ``RandomAccessDataSource`` (``len`` and ``[i]``) of records
``{"image": uint8 (H, W, C), "label": int}``. Splits: ``"train"`` and ``"test"``
hold the training identities (labels ``0 … num_classes(config) − 1``);
``"openset"`` holds identities never trained on, for verification pairs (its labels
only tell identities apart: MNIST's digits, synthetic ids ≥ num_identities).

A new source is its module, defining ``SOURCE = source_base.Source(...)``, and one line in
``SOURCES``.
"""

import ml_collections

from faceloss_jax.data import image_folder, mnist, recordio, synthetic
from faceloss_jax.data.source_base import Source

SPLITS = ("train", "test", "openset")
SOURCES: dict[str, Source] = {
    "mnist": mnist.SOURCE,
    "image_folder": image_folder.SOURCE,
    "recordio": recordio.SOURCE,
    "synthetic": synthetic.SOURCE,
}


def get(name: str) -> Source:
    """The record of source ``name``; a ValueError naming the known sources otherwise."""
    if name not in SOURCES:
        raise ValueError(f"unknown data source {name!r}; known: {', '.join(SOURCES)}")
    return SOURCES[name]


def create_source(config: ml_collections.ConfigDict, split: str):
    """The source of ``split`` for the data config (see ``default_config``).

    Args:
      config: a data config; ``config.name`` picks the source.
      split: ``"train"``, ``"test"`` or ``"openset"`` (RecordIO sets: ``"train"``
        only; they are evaluated on ``.bin`` pair sets).

    Returns:
      A random-access source of ``{"image", "label"}`` records.

    Example:
      >>> from faceloss_jax.data.config import default_config
      >>> source = create_source(default_config("mnist"), "openset")
      >>> len(source), source[0]["image"].shape
      (1500, (28, 28, 1))
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; known: {', '.join(SPLITS)}")
    return get(config.get("name")).create(config, split)


def num_classes(config: ml_collections.ConfigDict) -> int:
    """The number of identities seen in training (the classifier's width)."""
    return get(config.get("name")).num_classes(config)
