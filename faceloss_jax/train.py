"""Trains a backbone with a face recognition loss and evaluates it.

``train_and_evaluate(config, workdir)`` reads top to bottom as the flax examples do:
create the train state, resume the run, build the data-parallel step, then the loop
that logs, checkpoints and evaluates. Each idea it uses has its own module:

- ``train_lib/run_state.py``: the ``TrainState``, its creation and restore, its layout
  over the devices (the class-sharded classifier), the gradient's average and norm;
- ``train_lib/train_step.py``: the per-device step and its ``shard_map``/``pmap``
  wrapping, the mesh and the global batch layout;
- ``train_lib/periodic_eval.py``: the evaluation sets and the evaluation of a state;
- ``train_lib/checkpointing.py``, ``objectives.py``, ``optimizers.py``,
  ``reporting.py``: checkpoints, the loss's record, the optax chain, logs.

Multi-host (a TPU pod slice, several GPU nodes): every process runs the same command
with ``--multihost`` (see ``main.py``), which calls ``jax.distributed.initialize()``
(the coordinator is auto-detected on Cloud TPU, SLURM and Open MPI; otherwise pass
``--coordinator_address=host0:1234 --num_processes=N --process_id=i``). Process ``p``
reads the block ``p`` of every global batch and feeds its own devices
(``train_step.data_mesh``), so the run ends in the same state on 1 process × 8 devices
as on 2 × 4, up to the order of floating-point sums. Checkpoints, logs and figures are
written by process 0 (orbax coordinates the checkpoint writes; each process saves its
data position). E.g. on SLURM with one process per node::

    srun --nodes=2 --ntasks-per-node=1 python -m faceloss_jax.main --multihost \\
        --config=configs/arcface.py:face --workdir=/shared/runs/arcface
"""

import json
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from etils import epath
from jax.sharding import NamedSharding

from faceloss_jax import data, errors, weights
from faceloss_jax.train_lib import (
    checkpointing,
    objectives,
    optimizers,
    periodic_eval,
    reporting,
    run_state,
    train_step,
)

NAN_POLICIES = ("stop", "skip")


class NonFiniteLossError(errors.UserError, FloatingPointError):
    """Raised when a step's loss is NaN or infinite and ``config.nan_policy == "stop"``,
    or after ``config.max_consecutive_skips`` skipped steps in a row with ``"skip"``."""

    kind = "training stopped"


def check_config(
    config: ml_collections.ConfigDict, *, num_devices: int, num_classes: int | None = None
) -> None:
    """Raises a ValueError naming the first inconsistent setting (given ``num_classes``,
    also a class-sharded W that does not split over the devices)."""
    objectives.check_loss_config(
        config.loss,
        num_classes=num_classes,
        num_devices=num_devices,
        batch_size=config.batch_size,
    )
    if config.parallelism not in train_step.PARALLELISMS:
        raise errors.ConfigError(
            f"unknown parallelism {config.parallelism!r}; "
            f"valid: {', '.join(train_step.PARALLELISMS)}"
        )
    if config.nan_policy not in NAN_POLICIES:
        raise errors.ConfigError(
            f"unknown nan_policy {config.nan_policy!r}; valid: {', '.join(NAN_POLICIES)}"
        )
    if config.batch_size < 1:
        raise errors.ConfigError(f"batch_size must be positive; got {config.batch_size}")
    if not 0 <= config.optimizer.learning_rate < float("inf"):
        raise errors.ConfigError(
            f"optimizer.learning_rate must be finite and ≥ 0; got "
            f"{config.optimizer.learning_rate} (a negative rate ascends the loss)"
        )
    if config.max_consecutive_skips < 1:
        raise errors.ConfigError(
            f"max_consecutive_skips must be positive; got {config.max_consecutive_skips}"
        )
    pk = data.sampling.pk_shape(config.dataset, config.batch_size)
    if pk is not None and pk[1] < 2 and not objectives.has_classifier(config.loss):
        raise errors.ConfigError(
            f"P×K batches of K = {pk[1]} sample(s) per identity hold no positive pair, so "
            f"the loss {config.loss.name!r} and its gradient are identically 0: set "
            "dataset.samples_per_identity ≥ 2"
        )
    if config.batch_size % num_devices:
        raise errors.ConfigError(
            f"batch_size={config.batch_size} is not divisible by the {num_devices} devices"
        )
    intervals = ("num_train_steps", "log_every_steps", "checkpoint_every_steps", "eval_every_steps")
    for name in intervals:
        if config[name] < 1:
            raise errors.ConfigError(f"{name} must be positive; got {config[name]}")
    accumulate = config.optimizer.grad_accum_steps
    if isinstance(accumulate, int) and accumulate > 1 and config.num_train_steps % accumulate:
        raise errors.ConfigError(
            f"num_train_steps={config.num_train_steps} is not a multiple of "
            f"optimizer.grad_accum_steps={accumulate} (micro-batches per update)"
        )
    if config.optimizer.clip_scope not in optimizers.CLIP_SCOPES:
        raise errors.ConfigError(
            f"config.optimizer.clip_scope = {config.optimizer.clip_scope!r} is out of range; "
            f"valid: one of {', '.join(map(repr, optimizers.CLIP_SCOPES))}"
        )
    clip = config.optimizer.grad_clip_norm
    if clip is not None and clip <= 0:
        raise errors.ConfigError(f"optimizer.grad_clip_norm must be positive or None; got {clip}")
    if run_state.is_class_sharded(config) and (
        config.parallelism != "shard_map" or not objectives.has_classifier(config.loss)
    ):
        raise errors.ConfigError(
            "loss.class_sharded needs parallelism='shard_map' and a loss with a classifier"
        )


def _raise_if_non_finite(
    window: list[dict[str, float]],
    *,
    last_step: int,
    last_checkpoint: int | None,
    skips: int,
    max_skips: int | None,
) -> int:
    """Checks the steps of a logging window that ends at ``last_step``.

    With ``max_skips`` None (``nan_policy="stop"``) the first non-finite step raises;
    otherwise (``"skip"``) ``max_skips`` non-finite steps in a row do.

    Args:
      window: the metrics of each step.
      last_step: the step of the window's last entry.
      last_checkpoint: the newest step saved (all saved states are finite).
      skips: non-finite steps in a row before the window.
      max_skips: the limit of ``"skip"``, or None for ``"stop"``.

    Returns:
      The non-finite steps in a row at the window's end.

    Raises:
      NonFiniteLossError: naming the step and whether the input batch was the cause.
    """
    for offset, metrics in enumerate(window):
        if metrics["finite"] > 0:
            skips = 0
            continue
        skips += 1
        if max_skips is not None and skips < max_skips:
            continue
        step = last_step - len(window) + 1 + offset
        cause = (
            "the input batch contains non-finite values (NaN or Inf): check the data"
            if metrics["finite_input"] < 1
            else "the inputs are finite, so training diverged: lower "
            "optimizer.learning_rate or set optimizer.grad_clip_norm"
        )
        kept = (
            "no checkpoint was written yet"
            if last_checkpoint is None
            else f"the last good checkpoint (step {last_checkpoint}) is intact"
        )
        if max_skips is None:
            what = f"non-finite loss at step {step}"
            hint = " Set nan_policy='skip' to skip such steps instead."
        else:
            what = f"{skips} steps in a row up to step {step} were skipped as non-finite"
            hint = ""
        raise NonFiniteLossError(
            f"{what} (loss={metrics['loss']}, grad_norm={metrics['grad_norm']}): {cause}; "
            f"{kept}.{hint}"
        )
    return skips


def _summarize(window: list[dict[str, float]]) -> dict[str, float]:
    """Means over the finite steps of a logging window, and the count of skipped ones."""
    finite = [m for m in window if m["finite"] > 0]
    summary = (
        {
            name: float(np.mean([m[name] for m in finite]))
            for name in window[0]
            if name not in ("finite", "finite_input")
        }
        if finite
        else {}
    )
    summary["skipped_steps"] = float(len(window) - len(finite))
    return summary


def _resume(
    config: ml_collections.ConfigDict,
    workdir: epath.Path,
    state: run_state.TrainState,
    train_iter: Any,
) -> tuple[run_state.TrainState, Any]:
    """The newest intact state of the run in ``workdir`` (``state`` for a new run) and
    the run's checkpoint manager; the iterator's position is restored in place.

    Raises:
      errors.ConfigError: ``config`` differs from the run's ``config.json`` in more than
        ``checkpointing.RESUME_SAFE_FIELDS`` and ``config.allow_config_change`` is False.
      errors.CheckpointMismatchError: the checkpoint's arrays do not fit ``config``.
      Both leave every file as it was.
    """
    directory = workdir / "checkpoints"
    has_steps = directory.exists() and any(p.name.isdigit() for p in directory.iterdir())
    stored = workdir / "config.json"
    if has_steps and stored.exists() and not config.allow_config_change:
        changes = checkpointing.config_changes(
            json.loads(stored.read_text(encoding="utf-8")),
            json.loads(config.to_json_best_effort()),
        )
        if changes:
            raise errors.ConfigError(
                f"the config differs from the run's {stored} in {len(changes)} field(s): "
                f"{'; '.join(changes[:3])}{'; …' if len(changes) > 3 else ''}. Nothing was "
                "changed: use another --workdir, resume with the run's own config, or set "
                "--config.allow_config_change=True to resume with this one"
            )
    manager = checkpointing.create_checkpoint_manager(
        directory, max_to_keep=config.max_checkpoints_to_keep
    )
    try:
        restored = checkpointing.restore_latest(manager, state, train_iter) if has_steps else None
    except BaseException:
        manager.close()
        raise
    return (state if restored is None else restored), manager


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Trains ``config`` in ``workdir``, resuming from its latest checkpoint, and
    evaluates every ``eval_every_steps`` and at the end.

    Args:
      config: the experiment (see ``configs/default.py``).
      workdir: the run directory: ``checkpoints/``, ``tensorboard/``, ``metrics.jsonl``,
        ``config.json``, ``eval/step_<N>.json`` and figures.

    Returns:
      The evaluation metrics of the final model (see ``evaluation.evaluate_run``).

    Raises:
      NonFiniteLossError: a step's loss is not finite and ``nan_policy == "stop"``, or
        ``max_consecutive_skips`` steps in a row were with ``"skip"``; the checkpoints
        written before it are kept (only finite states are ever saved).
      errors.ConfigError: the config does not fit the run in ``workdir`` (see
        ``_resume``); nothing in ``workdir`` is changed.
    """
    workdir = epath.Path(workdir)
    num_devices = jax.device_count()
    num_classes = data.num_classes(config.dataset)
    check_config(config, num_devices=num_devices, num_classes=num_classes)
    mesh = train_step.data_mesh()

    learning_rate_fn = optimizers.create_learning_rate_schedule(
        config.optimizer, num_train_steps=config.num_train_steps
    )
    train_source = data.create_source(config.dataset, "train")
    if jax.process_index() == 0:
        plan = reporting.format_plan(
            config,
            num_images=len(train_source),
            num_classes=num_classes,
            num_devices=num_devices,
            num_processes=jax.process_count(),
        )
        print(plan, flush=True)
    train_iter = data.create_iterator(
        train_source,
        config.dataset,
        global_batch_size=config.batch_size,
        seed=config.seed,
        train=True,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        # Offline triplet mining trains on each mined batch until the next refresh.
        repeat_batches=objectives.held_batches(config.loss),
        normalize_images=False,  # uint8 to the devices; train_step normalizes them
    )
    eval_data = periodic_eval.load_eval_data(config)

    model = run_state.training_model(config)
    state = run_state.create_train_state(
        config,
        model,
        jax.random.PRNGKey(config.seed),
        num_classes=num_classes,
        image_shape=run_state.image_shape(config),
        learning_rate_fn=learning_rate_fn,
    )
    # config.init_from: start from a converted or trained backbone (fresh head/optimizer);
    # a checkpoint of this run, restored below, takes precedence.
    if config.init_from:
        state = weights.init_from(state, config.init_from)
        logging.info("Initialized the backbone from %s.", config.init_from)
    state_specs = run_state.state_partition_specs(
        state, class_sharded=run_state.is_class_sharded(config)
    )
    state = jax.device_put(state, jax.tree.map(lambda s: NamedSharding(mesh, s), state_specs))

    # Nothing is written before this point, so a failed start leaves the workdir as it was.
    state, manager = _resume(config, workdir, state, train_iter)
    start_step = int(state.step)
    last_checkpoint = manager.latest_step()
    if jax.process_index() == 0:
        (workdir / "config.json").write_text(config.to_json_best_effort(indent=2), encoding="utf-8")
        if start_step:
            print(f"Resumed from the checkpoint of step {start_step} in {workdir}.", flush=True)
    best = periodic_eval.previous_best(
        workdir, list(eval_data.get("targets", {})), up_to=start_step
    )

    p_train_step = train_step.create_parallel_train_step(
        model,
        config,
        learning_rate_fn,
        mesh=mesh,
        state_specs=state_specs,
        parallelism=config.parallelism,
    )

    writer = reporting.MetricWriter(workdir)
    progress = reporting.ProgressBar(
        total=config.num_train_steps, initial=start_step, batch_size=config.batch_size
    )
    window: list[dict[str, jax.Array]] = []
    skips, replaced = 0, 0
    max_skips = config.max_consecutive_skips if config.nan_policy == "skip" else None
    try:
        for step in range(start_step + 1, config.num_train_steps + 1):
            batch = next(train_iter)
            # Records that did not decode, replaced (dataset.on_error="skip").
            replaced += int(np.sum(batch.pop("replaced", 0)))
            batch = train_step.shard_batch(batch, parallelism=config.parallelism, mesh=mesh)
            state, metrics = p_train_step(state, batch)
            window.append(metrics)

            is_last = step == config.num_train_steps
            save = is_last or step % config.checkpoint_every_steps == 0
            run_eval = is_last or step % config.eval_every_steps == 0
            if not (save or run_eval or step % config.log_every_steps == 0):
                continue
            host_window, window = jax.device_get(window), []
            skips = _raise_if_non_finite(
                host_window,
                last_step=step,
                last_checkpoint=last_checkpoint,
                skips=skips,
                max_skips=max_skips,
            )
            summary = _summarize(host_window)
            summary["replaced_records"], replaced = float(replaced), 0
            summary["steps_per_second"] = progress.update(step, summary.get("loss", np.nan))
            writer.write_scalars(step, "train", summary)
            if save:
                checkpointing.save_checkpoint(manager, step, state, train_iter)
                last_checkpoint = step
            if run_eval:
                eval_metrics = periodic_eval.evaluate(
                    config, state, eval_data, workdir=workdir, step=step
                )
                periodic_eval.update_best(eval_metrics, best)
                writer.write_scalars(step, "eval", eval_metrics)
                protocol = config.eval.threshold
                progress.write(
                    reporting.format_targets(
                        eval_metrics,
                        best,
                        step=step,
                        protocol=protocol,
                        n_folds=config.eval.n_folds,
                    )
                )
                logging.info("Evaluation at step %d: %s", step, eval_metrics)
        if start_step >= config.num_train_steps:
            eval_metrics = periodic_eval.evaluate(
                config, state, eval_data, workdir=workdir, step=start_step
            )
            periodic_eval.update_best(eval_metrics, best)
    finally:
        progress.close()
        writer.close()
        manager.wait_until_finished()
        manager.close()
    return eval_metrics
