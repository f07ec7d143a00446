"""``create_source(config, split)``: the record source a data config names.

Every source is a grain ``RandomAccessDataSource`` (``len`` and ``[i]``) of records
``{"image": uint8 (H, W, C), "label": int}``. Splits: ``"train"`` and ``"test"``
hold the training identities (labels ``0 … num_classes(config) − 1``);
``"openset"`` holds identities never trained on, for verification pairs (its labels
only tell identities apart: MNIST's digits, synthetic ids ≥ num_identities).
"""

from typing import Callable

import ml_collections

from faceloss_jax.data import image_folder, mnist, recordio, synthetic

SPLITS = ("train", "test", "openset")


def create_source(config: ml_collections.ConfigDict, split: str):
    """The source of ``split`` for the data config (see ``default_config``).

    Args:
      config: a data config; ``config.name`` picks the source.
      split: ``"train"``, ``"test"`` or ``"openset"`` (RecordIO sets: ``"train"``
        only; they are evaluated on ``.bin`` pair sets).

    Returns:
      A random-access source of ``{"image", "label"}`` records.

    Example:
      >>> source = create_source(default_config("mnist"), "openset")
      >>> len(source), source[0]["image"].shape
      (1500, (28, 28, 1))
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; known: {', '.join(SPLITS)}")
    return _CREATORS[_checked_name(config)](config, split)


def num_classes(config: ml_collections.ConfigDict) -> int:
    """The number of identities seen in training (the classifier's width)."""
    name = _checked_name(config)
    if name == "mnist":
        held_out = mnist.builder_config(config.held_out_classes).held_out_classes
        return mnist.NUM_DIGITS - len(held_out)
    if name == "image_folder":
        names, _, _ = image_folder.list_identities(_required(config, "path"),
                                                   on_error=config.on_error)
        return len(names)
    if name == "recordio":
        return _recordio(config, "train").num_classes
    return config.num_identities


def _mnist(config, split):
    if (config.image_size, config.channels) != (28, 1):
        raise ValueError("the embedded MNIST has 28×28×1 images; got image_size="
                         f"{config.image_size}, channels={config.channels}")
    builder = mnist.load_builder(data_dir=config.data_dir,
                                 held_out_classes=config.held_out_classes)
    if split not in builder.info.splits:
        raise ValueError("MNIST has no 'openset' split when held_out_classes is empty")
    return builder.as_data_source(split)


def _image_folder(config, split):
    field = {"train": "path", "test": "test_path", "openset": "openset_path"}[split]
    return image_folder.ImageFolderSource(
        _required(config, field), image_size=config.image_size, channels=config.channels,
        on_error=config.on_error, validate=config.validate)


def _recordio(config, split):
    if split != "train":
        raise ValueError(f"RecordIO sets hold training images only, not {split!r}; evaluate "
                         "on .bin pair sets with read_verification_bin")
    return recordio.RecordIOSource(_required(config, "path"), image_size=config.image_size,
                                   channels=config.channels)


def _synthetic(config, split):
    k, n = config.num_identities, config.images_per_identity
    if split == "openset":
        identities = range(k, k + config.held_out_identities)
    else:
        identities = range(k)
    samples = range(n) if split == "train" else range(n, n + config.test_images_per_identity)
    return synthetic.SyntheticFaces(identities=identities, samples=samples,
                                    image_size=config.image_size, channels=config.channels,
                                    seed=config.seed)


_CREATORS: dict[str, Callable] = {
    "mnist": _mnist, "image_folder": _image_folder, "recordio": _recordio,
    "synthetic": _synthetic,
}


def _checked_name(config: ml_collections.ConfigDict) -> str:
    if config.get("name") not in _CREATORS:
        raise ValueError(f"unknown data source {config.get('name')!r}; "
                         f"known: {', '.join(_CREATORS)}")
    return config.name


def _required(config: ml_collections.ConfigDict, field: str) -> str:
    value = config.get(field)
    if not value:
        raise ValueError(f"data config {config.name!r} needs config.{field} to be set")
    return value
