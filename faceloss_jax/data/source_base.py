"""What every data source is and shares: its record (``Source``), required fields, and
the replacement of bad records (``on_error``).

Each source module (``mnist``, ``synthetic``, ``image_folder``, ``recordio``) defines one
``SOURCE = Source(...)``; ``data.sources.SOURCES`` (the table) maps names to them. Adding
a source is its module and one line there.
"""

import dataclasses
import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import ml_collections
from absl import logging

from faceloss_jax.errors import ConfigError, DataError

OnError = Literal["raise", "skip"]
# A bad record is replaced by the next readable one among this many that follow it.
MAX_REPLACEMENT_SCAN = 64


@dataclasses.dataclass(frozen=True)
class Source:
    """A data source.

    Attributes:
      fields: the source's own config fields with their defaults (the shared ones,
        image shape, normalization, augmentation and reading, are in ``data.config``).
      create: ``(config, split) -> source``, a grain random-access source of
        ``{"image": uint8 (H, W, C), "label": int}`` records (plus ``"replaced": bool``
        for a source with ``on_error``, ``read_or_replace``).
      num_classes: ``config -> C``, the number of training identities.
      splits: the splits ``create`` accepts, of ``"train"``, ``"test"``, ``"openset"``.
      face: whether the records are face crops (112×112×3, symmetric normalization,
        random flips by default) rather than MNIST digits.
      val_targets: the verification ``.bin`` sets evaluated during training by default
        (``config.eval.val_targets``), looked up as ``<name>.bin`` in the dataset folder.
      identity_index: ``source -> [record indices of identity 0, of identity 1, …]`` for
        a source ``create`` made (the P×K sampler, ``data.sampling``), computed without
        decoding images; None if the source cannot tell (no P×K batches).
    """

    fields: Mapping[str, Any]
    create: Callable[[ml_collections.ConfigDict, str], Any]
    num_classes: Callable[[ml_collections.ConfigDict], int]
    splits: tuple[str, ...] = ("train", "test", "openset")
    face: bool = True
    val_targets: tuple[str, ...] = ()
    identity_index: Callable[[Any], Sequence[Any]] | None = None


def required(config: ml_collections.ConfigDict, field: str) -> Any:
    """``config[field]``, or a ConfigError saying that the source needs it set."""
    value = config.get(field)
    if not value:
        raise ConfigError(f"data source {config.name!r} needs config.dataset.{field} to be set")
    return value


def identity_index_method(data_source: Any) -> Sequence[Any]:
    """The ``identity_index`` hook of a source class that has an ``identity_index()``
    method; a ConfigError for any other object (a plain list of records)."""
    if not hasattr(data_source, "identity_index"):
        raise ConfigError(
            f"a {type(data_source).__name__} source has no identity index: it cannot make "
            "P×K batches (set config.dataset.identities_per_batch = samples_per_identity = 0)"
        )
    return data_source.identity_index()


def parameter_default(function: Callable[..., Any], parameter: str) -> Any:
    """The default of ``parameter`` in ``function``'s signature, so that a source's
    config field reads the one declaration of its default."""
    return inspect.signature(function).parameters[parameter].default


def check_on_error(on_error: str) -> None:
    """A ConfigError unless ``on_error`` is ``"raise"`` or ``"skip"``."""
    if on_error not in ("raise", "skip"):
        raise ConfigError(f"config.dataset.on_error must be 'raise' or 'skip', got {on_error!r}")


def read_or_replace(
    read: Callable[[int], dict[str, Any]], index: int, size: int, *, on_error: OnError
) -> dict[str, Any]:
    """The record ``read(index)`` with ``"replaced": False``, or, when it raises a
    ``DataError`` and ``on_error`` is ``"skip"``, its replacement.

    The replacement is the next readable record, ``index + 1, index + 2, …`` (wrapping
    around), with ``"replaced": True``: a function of the index and the data only, so a
    resumed run reads what the interrupted one did. Each replacement is logged as a
    warning naming the bad record (its error names the file and the entry).

    Raises:
      DataError: ``read``'s, with ``on_error="raise"``; with ``"skip"``, when the
        ``MAX_REPLACEMENT_SCAN`` records from ``index`` on are all unreadable.
    """
    try:
        return {**read(index), "replaced": False}
    except DataError as error:
        if on_error != "skip":
            raise
        failure = error
    scan = min(size, MAX_REPLACEMENT_SCAN)
    for step in range(1, scan):
        candidate = (index + step) % size
        try:
            record = read(candidate)
        except DataError:
            continue
        logging.warning(
            "on_error='skip': replacing record %d by record %d: %s", index, candidate, failure
        )
        return {**record, "replaced": True}
    raise DataError(
        f"{failure}; records {index}…{index + scan - 1} (mod {size}) are all unreadable, "
        "none can replace it (on_error='skip')"
    )
