"""The record of a data source: what the rest of the system needs to know about it.

Each source module (``mnist``, ``synthetic``, ``image_folder``, ``recordio``) defines one
``SOURCE = Source(...)``; ``data.sources.SOURCES`` maps names to them. Adding a source is
its module and one line there.
"""

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import ml_collections

from faceloss_jax.train_lib.hyperparameters import ConfigError


@dataclasses.dataclass(frozen=True)
class Source:
    """A data source.

    Attributes:
      fields: the source's own config fields with their defaults (the shared ones,
        image shape, normalization, augmentation and reading, are in ``data.config``).
      create: ``(config, split) -> source``, a grain random-access source of
        ``{"image": uint8 (H, W, C), "label": int}`` records.
      num_classes: ``config -> C``, the number of training identities.
      splits: the splits ``create`` accepts, of ``"train"``, ``"test"``, ``"openset"``.
      face: whether the records are face crops (112×112×3, symmetric normalization,
        random flips by default) rather than MNIST digits.
      val_targets: the verification ``.bin`` sets evaluated during training by default
        (``config.eval.val_targets``), looked up as ``<name>.bin`` in the dataset folder.
    """

    fields: Mapping[str, Any]
    create: Callable[[ml_collections.ConfigDict, str], Any]
    num_classes: Callable[[ml_collections.ConfigDict], int]
    splits: tuple[str, ...] = ("train", "test", "openset")
    face: bool = True
    val_targets: tuple[str, ...] = ()


def required(config: ml_collections.ConfigDict, field: str) -> Any:
    """``config[field]``, or a ConfigError saying that the source needs it set."""
    value = config.get(field)
    if not value:
        raise ConfigError(f"data source {config.name!r} needs config.dataset.{field} to be set")
    return value
