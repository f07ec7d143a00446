"""Checkpoints of a training run: the train state and the data iterator, with orbax.

A checkpoint at step N holds three items: ``state`` (parameters, optimizer state, batch
statistics, loss state, PRNG key, step), ``data`` (the grain iterator position,
one file per process, ``process_<p>-of-<P>.json``), so that a resumed run reads exactly
the batches that an uninterrupted one would have, and ``checksum`` (one 32-bit checksum
per array of the state, ``state_checksums``). The position is the global batch
index, the same in every process (``data.create_iterator``), so a checkpoint written
by P processes also resumes on another number of processes.

What a restore may rely on:

- Saves are asynchronous and atomic (orbax writes into a temporary directory and
  renames it when complete), and only a finite state is saved (``save_checkpoint``).
- A checkpoint whose arrays do not fit the config (a missing or extra array, another
  shape or dtype) is a config error (``errors.CheckpointMismatchError``, naming the
  first differences): nothing is restored, nothing is moved.
- A checkpoint that cannot be read, or whose arrays do not match the checksums written
  at save (flipped bits on disk), is skipped with a warning naming it, and the previous
  one is used. A training run moves it to ``<directory>_corrupt/`` under a unique name
  (so that it is not saved over); evaluation (``quarantine=False``) leaves it in place.
  Nothing set aside is ever deleted.

Orbax and TensorStore write no checksum of the array data (OCDBT's manifest covers its
own structure, and the zarr arrays are compressed without a digest; a flipped byte of a
data file can decode to other numbers without an error), hence ``state_checksums``.
"""

import json
from collections.abc import Mapping
from typing import Any, TypeVar

import grain
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from jax.experimental import multihost_utils

from faceloss_jax import errors

State = TypeVar("State")
_CHECKSUM = "checksum"
# How many differences a mismatch error names before "… and N more".
_MAX_DIFFERENCES = 3


# Fields a resumed run may change without changing what it trains: how long it runs,
# how often it logs, saves and evaluates, how evaluation is done, where the data lives
# (a dataset moved to another disk). Prefixes of dotted keys.
RESUME_SAFE_FIELDS = (
    "num_train_steps",
    "log_every_steps",
    "checkpoint_every_steps",
    "eval_every_steps",
    "max_checkpoints_to_keep",
    "nan_policy",
    "max_consecutive_skips",
    "allow_config_change",
    "init_from",
    "eval.",
    "dataset.path",
    "dataset.test_path",
    "dataset.openset_path",
    "dataset.data_dir",
)


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, Mapping):
        return {prefix[:-1]: tree}
    flat = {}
    for key, value in tree.items():
        flat |= _flatten(value, f"{prefix}{key}.")
    return flat


def config_changes(stored: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """The fields where ``current`` differs from the run's ``stored`` config (both as
    JSON dicts), but for ``RESUME_SAFE_FIELDS``: ``"loss.margin: 0.5 → 0.4"``, …"""
    old, new = _flatten(stored), _flatten(current)
    changes = []
    for key in sorted(old.keys() | new.keys()):
        if any(key == f or (f.endswith(".") and key.startswith(f)) for f in RESUME_SAFE_FIELDS):
            continue
        if old.get(key, "<absent>") != new.get(key, "<absent>"):
            changes.append(f"{key}: {old.get(key, '<absent>')} → {new.get(key, '<absent>')}")
    return changes


def _path_name(path: tuple) -> str:
    """``params/head/weights`` for a key path of dict keys, attributes and indices."""
    parts = []
    for key in path:
        for attribute in ("key", "name", "idx"):
            if hasattr(key, attribute):
                parts.append(str(getattr(key, attribute)))
                break
        else:
            parts.append(str(key))
    return "/".join(parts)


def _as_uint32(leaf: jax.Array) -> jax.Array:
    """The bits of every element as uint32 (a 1- or 2-byte dtype zero-extended, an
    8-byte one as its two 32-bit halves), flattened."""
    leaf = jnp.asarray(leaf)
    if jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key):
        leaf = jax.random.key_data(leaf)
    unsigned = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint32}
    width = leaf.dtype.itemsize
    if leaf.dtype == jnp.bool_:
        return leaf.astype(jnp.uint32).ravel()
    bits = jax.lax.bitcast_convert_type(leaf, unsigned[width])
    return bits.astype(jnp.uint32).ravel()


@jax.jit
def _checksums_and_finite(state: Any) -> tuple[dict[str, jax.Array], jax.Array]:
    def checksum(leaf):
        bits = _as_uint32(leaf)
        # Position-weighted, so that swapped elements change it too; uint32 arithmetic
        # wraps, and integer sums are exact in any order and any sharding.
        weights = jnp.arange(bits.size, dtype=jnp.uint32) * jnp.uint32(2654435761) + 1
        return jnp.sum(bits * weights, dtype=jnp.uint32) ^ jnp.uint32(bits.size)

    def finite(leaf):
        leaf = jnp.asarray(leaf)
        if jnp.issubdtype(leaf.dtype, jnp.inexact):
            return jnp.all(jnp.isfinite(leaf))
        return jnp.bool_(True)

    paths_leaves = jax.tree_util.tree_flatten_with_path(state)[0]
    sums = {_path_name(path): checksum(leaf) for path, leaf in paths_leaves}
    all_finite = jnp.all(jnp.stack([finite(leaf) for _, leaf in paths_leaves]))
    return sums, all_finite


def state_checksums(state: Any) -> tuple[dict[str, int], bool]:
    """A 32-bit checksum of each array of ``state`` (keyed by its path) and whether
    every floating-point array is finite.

    The checksum is ``Σ_i bits_i·(2654435761·i + 1) mod 2³²`` over the elements' bit
    patterns, computed on the devices, so it is the same on every process and for any
    sharding of the array, and costs one read of the state.
    """
    sums, all_finite = jax.device_get(_checksums_and_finite(state))
    return {name: int(value) for name, value in sums.items()}, bool(all_finite)


def check_structure(checkpoint: Any, template: Any, *, where: str) -> None:
    """Raises ``CheckpointMismatchError`` if the arrays of ``checkpoint`` (orbax's
    metadata tree) are not those of ``template``: a missing or extra array, another
    shape or dtype, naming the first differences (e.g. ``params/head/weights (3, 7) in
    the checkpoint vs (4, 7) in the config``)."""
    saved = {_path_name(p): leaf for p, leaf in jax.tree_util.tree_flatten_with_path(checkpoint)[0]}
    wanted = {_path_name(p): leaf for p, leaf in jax.tree_util.tree_flatten_with_path(template)[0]}
    differences = [f"{name} only in the checkpoint" for name in saved if name not in wanted]
    differences += [f"{name} only in the config" for name in wanted if name not in saved]
    for name in wanted.keys() & saved.keys():
        ours, theirs = np.shape(wanted[name]), tuple(getattr(saved[name], "shape", ()) or ())
        if theirs != ours:
            differences.append(f"{name} {theirs} in the checkpoint vs {ours} in the config")
            continue
        ours, theirs = getattr(wanted[name], "dtype", None), getattr(saved[name], "dtype", None)
        # Python scalars (the step) carry no dtype of their own.
        if ours is not None and theirs is not None and np.ndim(wanted[name]) > 0:
            if np.dtype(ours) != np.dtype(theirs):
                differences.append(f"{name} {theirs} in the checkpoint vs {ours} in the config")
    if differences:
        more = len(differences) - _MAX_DIFFERENCES
        # The parameters first: the optimizer's moments repeat their differences.
        differences.sort(key=lambda d: (not d.startswith("params/"), d))
        listed = "; ".join(differences[:_MAX_DIFFERENCES]) + (
            f"; and {more} more" if more > 0 else ""
        )
        raise errors.CheckpointMismatchError(
            f"the checkpoint {where} does not fit the config: {listed}. Nothing was "
            "changed: train this config in another --workdir, or resume the run with its "
            "own config.json"
        )


def create_checkpoint_manager(
    directory: epath.PathLike, *, max_to_keep: int, read_only: bool = False
) -> ocp.CheckpointManager:
    """An asynchronous orbax manager of ``state`` + ``data`` + ``checksum`` checkpoints.

    Args:
      directory: where the step directories live (created if missing, unless read-only).
      max_to_keep: the number of most recent checkpoints kept.
      read_only: for evaluation: creates, saves, deletes and cleans up nothing (the
        temporary directory of a save in progress by a training run included).

    Returns:
      An ``ocp.CheckpointManager``; unless read-only, leftover temporary directories of
      interrupted saves are removed when it opens.
    """
    if max_to_keep < 1:
        raise ValueError(f"max_to_keep must be at least 1; got {max_to_keep}")
    return ocp.CheckpointManager(
        epath.Path(directory).absolute(),
        options=ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep,
            save_interval_steps=0 if read_only else 1,
            create=not read_only,
            cleanup_tmp_directories=not read_only,
            read_only=read_only,
        ),
        item_handlers={
            "state": ocp.StandardCheckpointHandler(),
            "data": grain.checkpoint.CheckpointHandler(),
            _CHECKSUM: ocp.JsonCheckpointHandler(),
        },
    )


def save_checkpoint(
    manager: ocp.CheckpointManager, step: int, state: Any, data_iterator: grain.DatasetIterator
) -> None:
    """Starts an asynchronous save of ``state``, its checksums and the iterator position
    at ``step``.

    The device arrays are copied before this returns, so training may go on (and
    donate the buffers of ``state``) while the files are written.

    Raises:
      errors.CheckpointError: ``state`` holds a NaN or an infinity; nothing is saved, so
        the checkpoints before it (the last good one among them) are kept.
    """
    checksums, finite = state_checksums(state)
    if not finite:
        raise errors.CheckpointError(
            f"the state at step {step} holds NaN or Inf values: it was not saved, and the "
            f"checkpoints in {manager.directory} (the newest is step "
            f"{manager.latest_step()}) are kept"
        )
    manager.save(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=grain.checkpoint.CheckpointSave(data_iterator),
            **{_CHECKSUM: ocp.args.JsonSave(checksums)},
        ),
    )


def _quarantine(manager: ocp.CheckpointManager, step: int) -> epath.Path:
    """Moves the checkpoint of ``step`` into ``<directory>_corrupt/`` under a name no
    other set-aside checkpoint has (``<step>``, else ``<step>.1``, ``<step>.2``, …), so
    that it is kept for inspection, neither restored nor overwritten, never deleted.

    Returns:
      Where it went.
    """
    source = epath.Path(manager.directory) / str(step)
    parent = epath.Path(f"{manager.directory}_corrupt")
    target = parent / str(step)
    copy = 0
    while target.exists():
        copy += 1
        target = parent / f"{step}.{copy}"
    if jax.process_index() == 0:
        parent.mkdir(parents=True, exist_ok=True)
        source.rename(target)
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(f"quarantine checkpoint {step}")
    manager.reload()
    return target


def _data_state_of_other_topology(manager: ocp.CheckpointManager, step: int) -> Any | None:
    """The iterator state of step ``step`` when it was saved by another number of
    processes (no ``process_<p>-of-<P>.json`` for this process), else None.

    Every process saves the same global position, so any file serves; files that
    disagree (a checkpoint from another data layout) are an error.
    """
    directory = epath.Path(manager.directory) / str(step) / "data"
    index, count = jax.process_index(), jax.process_count()
    if not directory.exists() or (directory / f"process_{index}-of-{count}.json").exists():
        return None
    files = sorted(directory.glob("process_*-of-*.json"))
    if not files:
        return None
    states = [json.loads(f.read_text(encoding="utf-8")) for f in files]
    if any(other != states[0] for other in states[1:]):
        raise ValueError(
            f"the data positions of {directory} differ between processes "
            f"({[f.name for f in files]}); cannot resume them on {count} process(es)"
        )
    return states[0]


def _verify(restored: Any, saved: Mapping[str, int] | None, *, where: str) -> None:
    """Raises ``errors.CheckpointError`` naming the first array of ``restored`` whose
    checksum is not the one written at save (no checksum: a checkpoint of an older
    version, accepted)."""
    if saved is None:
        return
    actual, _ = state_checksums(restored)
    bad = [name for name in actual if saved.get(name) != actual[name]]
    if bad:
        raise errors.CheckpointError(
            f"the checkpoint {where} fails its checksum ({len(bad)} array(s), the first "
            f"{bad[0]}): its files changed after they were written"
        )


def restore_latest(
    manager: ocp.CheckpointManager,
    state: State,
    data_iterator: grain.DatasetIterator | None = None,
    *,
    quarantine: bool = True,
) -> State | None:
    """Restores the newest intact checkpoint, falling back to older ones.

    Args:
      manager: the run's checkpoint manager.
      state: a train state whose structure, shapes, dtypes and shardings the restored
        arrays take (its values are not used).
      data_iterator: the training iterator, whose position is set in place; None
        restores the state only (for evaluation).
      quarantine: move a checkpoint that cannot be read or fails its checksum to
        ``<directory>_corrupt/`` (training); False leaves it where it is (evaluation).

    Returns:
      The restored state, or None if there is no intact checkpoint (the iterator
      is then left as it was).

    Raises:
      errors.CheckpointMismatchError: the newest readable checkpoint's arrays do not fit
        ``state`` (another config); nothing is restored or moved.
    """
    target = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
    position = None if data_iterator is None else data_iterator.get_state()
    for step in sorted(manager.all_steps(), reverse=True):
        where = f"{epath.Path(manager.directory) / str(step)}"
        try:
            metadata = manager.item_metadata(step)["state"]
            if metadata is None:
                raise ValueError("no metadata of the state")
        except Exception as error:  # noqa: BLE001 -- unreadable metadata: a damaged step.
            restored, problem = None, f"{type(error).__name__}: {error}"
        else:
            check_structure(getattr(metadata, "tree", metadata), target, where=where)
            restored, problem = _restore_step(manager, step, target, data_iterator, where=where)
        if restored is not None:
            return restored
        destination = _quarantine(manager, step) if quarantine else None
        logging.warning(
            "The checkpoint %s cannot be used (%s); %s, falling back to the previous one.",
            where,
            problem,
            f"moved to {destination}" if destination else "left in place",
        )
    if data_iterator is not None:
        data_iterator.set_state(position)
    return None


def _restore_step(
    manager: ocp.CheckpointManager,
    step: int,
    target: Any,
    data_iterator: grain.DatasetIterator | None,
    *,
    where: str,
) -> tuple[Any, str | None]:
    """The verified state of ``step`` (the iterator's position set), or None and why."""
    items = {"state": ocp.args.StandardRestore(target)}  # target None: as saved
    has_checksum = (epath.Path(where) / _CHECKSUM).exists()
    if has_checksum:
        items[_CHECKSUM] = ocp.args.JsonRestore()
    other_topology = None
    if data_iterator is not None:
        other_topology = _data_state_of_other_topology(manager, step)
        if other_topology is None:
            items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
    try:
        restored = manager.restore(step, args=ocp.args.Composite(**items))
        _verify(restored.state, restored[_CHECKSUM] if has_checksum else None, where=where)
    except Exception as error:  # noqa: BLE001 -- any unreadable checkpoint is skipped.
        return None, f"{type(error).__name__}: {error}"
    if other_topology is not None:
        data_iterator.set_state(other_topology)
        logging.info(
            "Step %d was saved by another number of processes; every process "
            "resumes at its global data position %s.",
            step,
            other_topology,
        )
    return restored.state, None


def _on_this_device(manager: ocp.CheckpointManager, step: int) -> Any:
    """The saved state's shapes and dtypes on this process's first device, so that a
    state written by any number of devices restores here."""
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    return jax.tree.map(
        lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
        manager.item_metadata(step)["state"],
    )


def restore_latest_tree(directory: epath.PathLike) -> tuple[Any, int]:
    """The newest intact state of the run whose checkpoints are in ``directory``, as saved
    (nested dicts of arrays on this process's first device, whatever topology wrote
    them; no template needed), and its step; read-only, falling back past checkpoints
    that cannot be read or fail their checksum, as ``restore_latest(...,
    quarantine=False)`` does.

    Raises:
      errors.CheckpointError: no intact checkpoint in ``directory``.
    """
    directory = epath.Path(directory)
    if not directory.exists():
        raise errors.CheckpointError(f"no checkpoint in {directory}: it does not exist")
    manager = create_checkpoint_manager(directory, max_to_keep=1, read_only=True)
    try:
        for step in sorted(manager.all_steps(), reverse=True):
            where = f"{directory.absolute() / str(step)}"
            try:
                target = _on_this_device(manager, step)
            except Exception as error:  # noqa: BLE001 -- unreadable metadata: skipped.
                tree, problem = None, f"{type(error).__name__}: {error}"
            else:
                tree, problem = _restore_step(manager, step, target, None, where=where)
            if tree is not None:
                return tree, step
            logging.warning(
                "The checkpoint %s cannot be used (%s); falling back to the previous one.",
                where,
                problem,
            )
    finally:
        manager.close()
    raise errors.CheckpointError(f"no intact checkpoint in {directory}")
