r"""Trains and evaluates one experiment: a config file, a work directory.

    python -m faceloss_jax.main --config=configs/arcface.py --workdir=/tmp/fl_arcface
    python -m faceloss_jax.main --config=configs/arcface.py --describe

Any config field can be overridden, ``--config.loss.margin=0.4``; a key that is not in
the config is an error that lists the valid keys, an out-of-range value one line
naming the field and its valid range.
``configs/<loss>.py:face`` selects a config's face variant, ``:face,source=recordio`` (or
``--config.dataset.name=recordio``) its data source; ``--describe`` prints the loss's
knobs with their values and ranges, then the run's (steps, batch, image size,
optimizer, warmup, cadences; a recipe's step derivation) and exits. Running the same
command again resumes from the latest checkpoint in the work directory. Multi-host: add
``--multihost`` on every process (see ``faceloss_jax.train``).
"""

import pathlib
from collections.abc import Sequence

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from faceloss_jax import train
from faceloss_jax.train_lib import cli, objectives, reporting

_WORKDIR = flags.DEFINE_string("workdir", None, "Directory of the run (checkpoints, logs).")
_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "A config file (configs/<loss>.py[:face]).", lock_config=True
)
_MULTIHOST = flags.DEFINE_bool(
    "multihost", False, "Call jax.distributed.initialize() before anything else."
)
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0 (auto-detected on TPU/SLURM/MPI)."
)
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index.")
_DESCRIBE = flags.DEFINE_bool(
    "describe",
    False,
    "Print the loss's knobs (value, default, valid range) and the run's, and exit.",
)
flags.mark_flags_as_required(["config"])


def results_note(workdir: str) -> str:
    """Where a finished run's results are, for the last lines of its output."""
    root = pathlib.Path(workdir).absolute()
    return (
        f"Results in {root}:\n"
        f"  metrics.jsonl, eval/step_<N>.json: the training and evaluation metrics\n"
        f"  eval/*.png: ROC, angle histograms, features; checkpoints/: the train state\n"
        f"  tensorboard --logdir={root / 'tensorboard'}"
    )


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    cli.default_to_warnings()
    if _DESCRIBE.value:
        print(objectives.describe(_CONFIG.value.loss))
        print(cli.describe_run(_CONFIG.value))
        return
    if _WORKDIR.value is None:
        raise app.UsageError("--workdir is required")
    if _MULTIHOST.value:
        # Cross-process collectives of CPU devices go through gloo (no effect on GPU/TPU).
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(
            coordinator_address=_COORDINATOR.value,
            num_processes=_NUM_PROCESSES.value,
            process_id=_PROCESS_ID.value,
        )
    logging.info(
        "JAX devices: %s (process %d of %d)",
        jax.devices(),
        jax.process_index(),
        jax.process_count(),
    )
    metrics = train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
    if jax.process_index() == 0:
        print(reporting.format_report(metrics))
        print(results_note(_WORKDIR.value))


if __name__ == "__main__":
    cli.run(main)
