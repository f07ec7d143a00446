"""Evaluates the latest checkpoint of a run again, without training.

    python -m faceloss_jax.evaluate --workdir=/tmp/fl_arcface

The experiment is read from ``<workdir>/config.json`` (written by the training run),
or from ``--config`` (with overrides, e.g. ``--config.eval.num_pairs=3000``). Results go
to ``<workdir>/eval/step_<N>.json`` and the figures beside it, as during training.

The field's benchmarks, for a run or a converted backbone (``faceloss_jax.convert``)::

    python -m faceloss_jax.evaluate --workdir=DIR --ijb=/data/IJB_release/IJBC --ijb_set=IJBC
    python -m faceloss_jax.evaluate --workdir=DIR --bins=/data/ms1m/lfw.bin,/data/ms1m/cfp_fp.bin

``--ijb``: IJB-B/C 1:1 TAR@FAR = 1e-6 … 1e-1 (and 1:N rank-1, TPIR@FPIR when the
release has the gallery/probe files) by arcface_torch's protocol
(``evaluation.ijb``), written to ``<workdir>/eval/ijb/`` with the ROC figure.
``--bins``: each ``.bin`` pair set (LFW, CFP-FP, AgeDB-30) as arcface_torch's
verification callback evaluates it (``evaluation.evaluate_pair_set``: flip TTA, 10-fold
accuracy ± std by InsightFace's thresholds unless ``--threshold=exact``, XNorm, VAL@FAR
with the FAR achieved), written to ``<workdir>/eval/verification_bins.json`` (whose LFW
threshold ``faceloss_jax.embed`` uses) and printed as training logs them
(``[lfw][<step>]XNorm: … Accuracy-Flip: 0.99533+-0.00350 …``, fractions, the step of
the run's checkpoint). On a training run it uses the run's image size,
normalization, ``eval.batch_size``, ``eval.n_folds`` and ``eval.threshold``, so it gives
the numbers the run logged (``<name>_accuracy`` … in ``metrics.jsonl``) for the same
checkpoint.

Every error of the user's (no run in ``--workdir``, a missing or malformed ``.bin`` or
IJB file, a pair list that is empty or of one class, a workdir holding both a run and a
converted backbone) is one ``FATAL <kind>: <message>`` line with exit status 1
(``--verbose``: the traceback), found before any face is embedded and before anything
is written to the workdir.
"""

import functools
import json
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections
from absl import app, flags
from etils import epath
from jax.tree_util import Partial
from ml_collections import config_flags

from faceloss_jax import data, errors, evaluation, models, weights
from faceloss_jax.train_lib import cli, periodic_eval, reporting, run_state

_WORKDIR = flags.DEFINE_string(
    "workdir", None, "A training run (or, with --ijb/--bins, a converted backbone).", required=True
)
_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "A config file; default: the run's config.json.", lock_config=True
)
_IJB = flags.DEFINE_string("ijb", None, "An IJB-B/C release folder (meta/, loose_crop/).")
_IJB_SET = flags.DEFINE_enum("ijb_set", "IJBC", list(evaluation.ijb.IJB_SETS), "IJBB or IJBC.")
_BINS = flags.DEFINE_list("bins", None, "Verification .bin pair sets (lfw.bin, cfp_fp.bin, ...).")
_N_FOLDS = flags.DEFINE_integer(
    "n_folds", None, "Folds of the --bins protocol; default: the run's eval.n_folds, else 10."
)
_BATCH_SIZE = flags.DEFINE_integer(
    "batch_size",
    None,
    "Faces per step for --ijb / --bins; default: the run's eval.batch_size, else 128.",
)
_THRESHOLD = flags.DEFINE_enum(
    "threshold",
    None,
    list(evaluation.THRESHOLD_MODES),
    "Thresholds of the --bins 10-fold protocol: insightface (the papers' numbers) or exact; "
    "default: the run's eval.threshold, else insightface.",
)


def load_run_config(workdir: epath.PathLike) -> ml_collections.ConfigDict:
    """The config that a training run saved to ``<workdir>/config.json``.

    Raises:
      errors.CheckpointError: ``workdir`` holds no training run.
    """
    path = epath.Path(workdir) / "config.json"
    if not path.exists():
        raise errors.CheckpointError(
            f"{path} does not exist: {workdir} is not the workdir of a training run "
            "(python -m faceloss_jax.main --workdir=...)"
        )
    return ml_collections.ConfigDict(json.loads(path.read_text(encoding="utf-8")))


def evaluate_checkpoint(
    workdir: epath.PathLike, config: ml_collections.ConfigDict | None = None
) -> dict[str, float]:
    """Restores the newest readable checkpoint of ``workdir`` and evaluates it.

    Nothing is written before the config, the evaluation data and a checkpoint are
    found (``run_state.restore_run`` only reads).

    Args:
      workdir: the run directory.
      config: the experiment; default: the run's ``config.json``.

    Returns:
      The metrics of ``evaluation.evaluate_run``, plus ``step``.

    Raises:
      errors.CheckpointError: no config or no intact checkpoint in ``workdir``.
      FileNotFoundError: a verification target of the config is missing.
    """
    config = load_run_config(workdir) if config is None else config
    eval_data = periodic_eval.load_eval_data(config)
    _, state = run_state.restore_run(config, workdir)
    step = int(state.step)
    metrics = periodic_eval.evaluate(config, state, eval_data, workdir=workdir, step=step)
    return {"step": step, **metrics}


def _embed_fn(backbone: weights.Backbone) -> Partial:
    return Partial(functools.partial(backbone.model.apply, train=False), backbone.variables)


def evaluate_ijb(
    workdir: epath.PathLike, release: evaluation.ijb.IJBRelease, *, batch_size: int = 128
) -> dict[str, float]:
    """IJB-B/C of the backbone in ``workdir`` (a run or a converted backbone) on
    ``release`` (``evaluation.read_ijb``, which refuses what cannot be evaluated before
    any face is embedded); results in ``<workdir>/eval/ijb/``."""
    backbone = weights.load_backbone(workdir)
    features = evaluation.ijb.face_features(
        release,
        _embed_fn(backbone),
        preprocess=backbone.preprocess,
        batch_size=batch_size,
        log=lambda message: print(message, flush=True),
        image_size=backbone.image_size,
    )
    return evaluation.evaluate_ijb(
        release,
        features,
        out_dir=epath.Path(workdir) / "eval" / "ijb",
        label=backbone.model_config["name"],
    )


def evaluate_bins(
    workdir: epath.PathLike,
    paths: Sequence[str],
    *,
    batch_size: int | None = None,
    n_folds: int | None = None,
    threshold: str | None = None,
) -> dict[str, dict[str, float | str | None]]:
    """Each ``.bin`` pair set as arcface_torch's verification callback evaluates it.

    The backbone (of a run's newest checkpoint, or a converted one) runs in float32 on
    images decoded at the run's ``dataset.image_size`` (a converted backbone: its
    model's input size), preprocessed as in training; ``evaluation.evaluate_pair_set``
    gives accuracy ± std (10-fold, flip TTA), XNorm and VAL@FAR. Every file is read
    before the first is evaluated, and the results go to
    ``<workdir>/eval/verification_bins.json`` (keyed by file stem) once all are done.

    Args:
      workdir: a training run or a converted backbone.
      paths: the ``.bin`` files.
      batch_size, n_folds, threshold: default: the run's ``config.eval`` values (as
        during training), else 128, 10 and ``"insightface"``.

    Returns:
      ``{stem: report}``, each report ``evaluation.evaluate_pair_set``'s plus
      ``protocol``, ``n_folds`` and ``step`` (of the run's checkpoint; None for a
      converted backbone).

    Raises:
      FileNotFoundError: a ``.bin`` is missing (all missing files are named).
    """
    missing = [str(path) for path in paths if not epath.Path(path).exists()]
    if missing:
        raise FileNotFoundError(f"verification .bin not found: {', '.join(missing)}")
    backbone = weights.load_backbone(workdir)
    run = epath.Path(workdir) / "config.json"
    run_config = load_run_config(workdir) if run.exists() else None
    if run_config is not None:
        size, channels = run_config.dataset.image_size, run_config.dataset.channels
        run_eval = run_config.eval
    else:
        size = backbone.image_size
        channels = models.input_shape(backbone.model_config["name"])[2]
        run_eval = ml_collections.ConfigDict()
    batch_size = batch_size or run_eval.get("batch_size", 128)
    n_folds = n_folds or run_eval.get("n_folds", 10)
    threshold = threshold or run_eval.get("threshold", "insightface")
    pair_sets = {
        epath.Path(path).stem: data.read_verification_bin(path, image_size=size, channels=channels)
        for path in paths
    }
    results = {}
    for name, pairs in pair_sets.items():
        report = evaluation.evaluate_pair_set(
            _embed_fn(backbone),
            pairs.images,
            pairs.issame,
            preprocess=backbone.preprocess,
            n_folds=n_folds,
            threshold=threshold,
            batch_size=batch_size,
        )
        results[name] = {
            **report,
            "protocol": threshold,
            "n_folds": n_folds,
            "step": backbone.info.get("step"),
        }
    eval_dir = epath.Path(workdir) / "eval"
    eval_dir.mkdir(parents=True, exist_ok=True)
    text = json.dumps(results, indent=2)
    (eval_dir / "verification_bins.json").write_text(text, encoding="utf-8")
    return results


def format_bins(results: Mapping[str, Mapping[str, Any]]) -> str:
    """``evaluate_bins``'s results in the format of training's log line
    (``reporting.format_targets``: fractions, ``[lfw][<step>]``), after a ``step <N>``
    line for a run's checkpoint, each set followed by its cosine threshold and VAL@FAR."""
    step = next(iter(results.values()), {}).get("step")
    lines = [] if step is None else [f"step {step}"]
    for name, report in results.items():
        metrics = {f"{name}_{key}": report[key] for key in periodic_eval.TARGET_KEYS}
        lines.append(
            reporting.format_targets(
                metrics,
                {name: report["accuracy"]},
                step=step,
                protocol=report["protocol"],
                n_folds=report["n_folds"],
            )
        )
        lines.append(
            f"[{name}]cosine threshold: {report['threshold']:.5f}  VAL: {report['val']:.5f} "
            f"@ FAR: {report['far']:.5f}"
        )
    return "\n".join(lines)


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    cli.default_to_warnings()
    if not (_IJB.value or _BINS.value):
        metrics = evaluate_checkpoint(_WORKDIR.value, _CONFIG.value)
        print(f"step {metrics['step']}")
        print(reporting.format_report(metrics))
        return
    # The release is read (and refused if it cannot be evaluated) before any work.
    release = evaluation.read_ijb(_IJB.value, _IJB_SET.value) if _IJB.value else None
    if _BINS.value:
        results = evaluate_bins(
            _WORKDIR.value,
            _BINS.value,
            batch_size=_BATCH_SIZE.value,
            n_folds=_N_FOLDS.value,
            threshold=_THRESHOLD.value,
        )
        print(format_bins(results))
    if release is not None:
        metrics = evaluate_ijb(_WORKDIR.value, release, batch_size=_BATCH_SIZE.value or 128)
        print(evaluation.ijb.format_table(metrics, _IJB_SET.value))


if __name__ == "__main__":
    cli.run(main)
