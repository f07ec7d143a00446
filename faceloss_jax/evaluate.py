"""Evaluates the latest checkpoint of a run again, without training.

    python -m faceloss_jax.evaluate --workdir=/tmp/fl_arcface

The experiment is read from ``<workdir>/config.json`` (written by the training run),
or from ``--config`` (with overrides, e.g. ``--config.eval.num_pairs=3000``). Results go
to ``<workdir>/eval/step_<N>.json`` and the figures beside it, as during training.
"""

import json
from collections.abc import Sequence

import jax
import ml_collections
from absl import app, flags
from etils import epath
from ml_collections import config_flags

from faceloss_jax import data, train
from faceloss_jax.train_lib import checkpointing, cli, optimizers, reporting

_WORKDIR = flags.DEFINE_string("workdir", None, "Directory of a training run.", required=True)
_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "A config file; default: the run's config.json.", lock_config=True
)


def load_run_config(workdir: epath.PathLike) -> ml_collections.ConfigDict:
    """The config that a training run saved to ``<workdir>/config.json``."""
    path = epath.Path(workdir) / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: is {workdir} a training run's workdir?")
    return ml_collections.ConfigDict(json.loads(path.read_text()))


def evaluate_checkpoint(
    workdir: epath.PathLike, config: ml_collections.ConfigDict | None = None
) -> dict[str, float]:
    """Restores the newest readable checkpoint of ``workdir`` and evaluates it.

    Args:
      workdir: the run directory.
      config: the experiment; default: the run's ``config.json``.

    Returns:
      The metrics of ``evaluation.evaluate_run``, plus ``step``.

    Raises:
      FileNotFoundError: no readable checkpoint (or no config) in ``workdir``.
    """
    config = load_run_config(workdir) if config is None else config
    eval_data = train.load_eval_data(config)
    model = train.create_model(config)
    template = train.create_train_state(
        config,
        model,
        jax.random.PRNGKey(config.seed),
        num_classes=data.num_classes(config.dataset),
        image_shape=eval_data["test"][0].shape[1:],
        learning_rate_fn=optimizers.create_learning_rate_schedule(
            config.optimizer, num_train_steps=config.num_train_steps
        ),
    )
    manager = checkpointing.create_checkpoint_manager(
        epath.Path(workdir) / "checkpoints", max_to_keep=config.max_checkpoints_to_keep
    )
    try:
        state = checkpointing.restore_latest(manager, template)
    finally:
        manager.close()
    if state is None:
        raise FileNotFoundError(f"no readable checkpoint in {workdir}/checkpoints")
    step = int(state.step)
    metrics = train.evaluate(config, model, state, eval_data, workdir=workdir, step=step)
    return {"step": step, **metrics}


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    cli.default_to_warnings()
    metrics = evaluate_checkpoint(_WORKDIR.value, _CONFIG.value)
    print(f"step {metrics['step']}")
    print(reporting.format_report(metrics))


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)
