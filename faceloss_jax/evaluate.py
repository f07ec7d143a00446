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
threshold ``faceloss_jax.embed`` uses). On a training run it uses the run's image size,
normalization, ``eval.batch_size``, ``eval.n_folds`` and ``eval.threshold``, so it gives
the numbers the run logged (``<name>_accuracy`` … in ``metrics.jsonl``) for the same
checkpoint.
"""

import functools
import json
from collections.abc import Sequence

import ml_collections
from absl import app, flags
from etils import epath
from jax.tree_util import Partial
from ml_collections import config_flags

from faceloss_jax import data, evaluation, models, train, weights
from faceloss_jax.train_lib import cli, reporting

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
    model, state = train.restore_run(config, workdir)
    step = int(state.step)
    metrics = train.evaluate(config, model, state, eval_data, workdir=workdir, step=step)
    return {"step": step, **metrics}


def _embed_fn(backbone: weights.Backbone) -> Partial:
    return Partial(functools.partial(backbone.model.apply, train=False), backbone.variables)


def evaluate_ijb(
    workdir: epath.PathLike, root: epath.PathLike, ijb_set: str = "IJBC", *, batch_size: int = 128
) -> dict[str, float]:
    """IJB-B/C of the backbone in ``workdir`` (a run or a converted backbone); results
    in ``<workdir>/eval/ijb/``."""
    backbone = weights.load_backbone(workdir)
    release = evaluation.read_ijb(root, ijb_set)
    features = evaluation.ijb.face_features(
        release,
        _embed_fn(backbone),
        preprocess=backbone.preprocess,
        batch_size=batch_size,
        log=lambda message: print(message, flush=True),
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
) -> dict[str, dict[str, float | str]]:
    """Each ``.bin`` pair set as arcface_torch's verification callback evaluates it.

    The backbone (of a run's newest checkpoint, or a converted one) runs in float32 on
    images decoded at the run's ``dataset.image_size`` (a converted backbone: its
    model's input size), preprocessed as in training; ``evaluation.evaluate_pair_set``
    gives accuracy ± std (10-fold, flip TTA), XNorm and VAL@FAR. Results go to
    ``<workdir>/eval/verification_bins.json``, keyed by file stem.

    Args:
      workdir: a training run or a converted backbone.
      paths: the ``.bin`` files.
      batch_size, n_folds, threshold: default: the run's ``config.eval`` values (as
        during training), else 128, 10 and ``"insightface"``.

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
        size, channels = models.input_shape(backbone.model_config["name"])[::2]
        run_eval = ml_collections.ConfigDict()
    batch_size = batch_size or run_eval.get("batch_size", 128)
    n_folds = n_folds or run_eval.get("n_folds", 10)
    threshold = threshold or run_eval.get("threshold", "insightface")
    results = {}
    for path in paths:
        pairs = data.read_verification_bin(path, image_size=size, channels=channels)
        report = evaluation.evaluate_pair_set(
            _embed_fn(backbone),
            pairs.images,
            pairs.issame,
            preprocess=backbone.preprocess,
            n_folds=n_folds,
            threshold=threshold,
            batch_size=batch_size,
        )
        results[epath.Path(path).stem] = {**report, "protocol": threshold, "n_folds": n_folds}
    eval_dir = epath.Path(workdir) / "eval"
    eval_dir.mkdir(parents=True, exist_ok=True)
    (eval_dir / "verification_bins.json").write_text(json.dumps(results, indent=2))
    return results


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    cli.default_to_warnings()
    if _IJB.value or _BINS.value:
        if _BINS.value:
            for name, report in evaluate_bins(
                _WORKDIR.value,
                _BINS.value,
                batch_size=_BATCH_SIZE.value,
                n_folds=_N_FOLDS.value,
                threshold=_THRESHOLD.value,
            ).items():
                print(
                    f"{name}: accuracy {100 * report['accuracy']:.2f} ± "
                    f"{100 * report['accuracy_std']:.2f} % ({report['n_folds']}-fold, flip, "
                    f"{report['protocol']} thresholds; cosine threshold "
                    f"{report['threshold']:.4f}), XNorm {report['xnorm']:.4f}, VAL "
                    f"{100 * report['val']:.2f} % @ FAR {100 * report['far']:.3f} %"
                )
        if _IJB.value:
            metrics = evaluate_ijb(
                _WORKDIR.value, _IJB.value, _IJB_SET.value, batch_size=_BATCH_SIZE.value or 128
            )
            print(evaluation.ijb.format_table(metrics, _IJB_SET.value))
        return
    metrics = evaluate_checkpoint(_WORKDIR.value, _CONFIG.value)
    print(f"step {metrics['step']}")
    print(reporting.format_report(metrics))


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)
