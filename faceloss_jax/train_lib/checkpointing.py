"""Checkpoints of a training run: the train state and the data iterator, with orbax.

A checkpoint at step N holds two items: ``state`` (parameters, optimizer state, batch
statistics, loss state, PRNG key, step) and ``data`` (the grain iterator position,
one file per process, ``process_<p>-of-<P>.json``), so that a resumed run reads exactly
the batches that an uninterrupted one would have. The position is the global batch
index, the same in every process (``data.create_iterator``), so a checkpoint written
by P processes also resumes on another number of processes. Saves are asynchronous
and atomic (orbax writes into a temporary directory and renames it when complete); a
checkpoint that still fails to restore (a damaged disk, a file truncated by hand) is
moved aside with a warning and the previous one is used.
"""

import json
import shutil
from typing import Any, TypeVar

import grain
import jax
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from jax.experimental import multihost_utils

State = TypeVar("State")


def create_checkpoint_manager(
    directory: epath.PathLike, *, max_to_keep: int
) -> ocp.CheckpointManager:
    """An asynchronous orbax manager of ``state`` + ``data`` checkpoints.

    Args:
      directory: where the step directories live (created if missing).
      max_to_keep: the number of most recent checkpoints kept.

    Returns:
      An ``ocp.CheckpointManager``; leftover temporary directories of interrupted
      saves are removed when it opens.
    """
    if max_to_keep < 1:
        raise ValueError(f"max_to_keep must be at least 1; got {max_to_keep}")
    return ocp.CheckpointManager(
        epath.Path(directory).absolute(),
        options=ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, create=True, cleanup_tmp_directories=True
        ),
        item_handlers={
            "state": ocp.StandardCheckpointHandler(),
            "data": grain.checkpoint.CheckpointHandler(),
        },
    )


def save_checkpoint(
    manager: ocp.CheckpointManager, step: int, state: Any, data_iterator: grain.DatasetIterator
) -> None:
    """Starts an asynchronous save of ``state`` and the iterator position at ``step``.

    The device arrays are copied before this returns, so training may go on (and
    donate the buffers of ``state``) while the files are written.
    """
    manager.save(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=grain.checkpoint.CheckpointSave(data_iterator),
        ),
    )


def _quarantine(manager: ocp.CheckpointManager, step: int) -> None:
    """Moves the checkpoint of ``step`` to ``<directory>_corrupt/`` so it is kept for
    inspection but neither restored nor overwritten."""
    source = epath.Path(manager.directory) / str(step)
    target = epath.Path(f"{manager.directory}_corrupt") / str(step)
    if jax.process_index() == 0:
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():
            shutil.rmtree(target)
        source.rename(target)
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(f"quarantine checkpoint {step}")
    manager.reload()


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
    states = [json.loads(f.read_text()) for f in files]
    if any(other != states[0] for other in states[1:]):
        raise ValueError(
            f"the data positions of {directory} differ between processes "
            f"({[f.name for f in files]}); cannot resume them on {count} process(es)"
        )
    return states[0]


def restore_latest(
    manager: ocp.CheckpointManager,
    state: State,
    data_iterator: grain.DatasetIterator | None = None,
) -> State | None:
    """Restores the newest readable checkpoint, falling back to older ones.

    Args:
      manager: the run's checkpoint manager.
      state: a train state whose structure, shapes, dtypes and shardings the restored
        arrays take (its values are not used).
      data_iterator: the training iterator, whose position is set in place; None
        restores the state only (for evaluation).

    Returns:
      The restored state, or None if there is no readable checkpoint (the iterator
      is then left as it was).
    """
    target = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
    for step in sorted(manager.all_steps(), reverse=True):
        items = {"state": ocp.args.StandardRestore(target)}
        other_topology = None
        if data_iterator is not None:
            other_topology = _data_state_of_other_topology(manager, step)
            if other_topology is None:
                items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
        try:
            restored = manager.restore(step, args=ocp.args.Composite(**items))
            if other_topology is not None:
                data_iterator.set_state(other_topology)
                logging.info(
                    "Step %d was saved by another number of processes; every process "
                    "resumes at its global data position %s.",
                    step,
                    other_topology,
                )
        except Exception as error:  # noqa: BLE001 -- any unreadable checkpoint is skipped.
            logging.warning(
                "The checkpoint at step %d in %s cannot be restored (%s: %s); moving it to "
                "%s_corrupt/ and falling back to the previous checkpoint.",
                step,
                manager.directory,
                type(error).__name__,
                error,
                manager.directory,
            )
            _quarantine(manager, step)
            continue
        return restored.state
    return None
