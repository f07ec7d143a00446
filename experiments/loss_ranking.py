"""The loss ranking on hard synthetic faces: every loss of the papers' comparisons, 3 seeds.

Writes (once per benchmark config) an InsightFace folder of ``data.hard_faces``
identities: fine-grained latents (a minimum distance between identities), a long tail of
images per identity, pose/illumination/occlusion/blur/noise/ageing nuisance, and the
LFW/CFP-FP/AgeDB-like pair sets of held-out identities. Each loss's face config trains on
it through the recordio source, with arcface_torch's recipe (SGD 0.1, momentum 0.9, weight
decay 5e-4 on every parameter, backbone clipped at 5, warmup then linear decay) and the
papers' (s, m); only the sizes shrink for one CPU core (``RECIPE``). SphereFace takes the
same schedule as the others (its face config's 28k-step schedule does not fit) with its λ
annealing reaching λ_min = 5 at half the run.

Tables (``--table``):

* ``ranking``: softmax, SphereFace, CosFace, ArcFace, the combined margin, softmax + center
  loss, triplet (P×K batches, semi-hard mining) on ``BENCHMARK``;
* ``calibration``: softmax on variants of the benchmark's knobs (``CALIBRATION``), to place
  softmax at 0.85–0.92 on the hardest set;
* ``margins``: the margin losses with a smaller scale or margin than the papers'
  (``MARGIN_SWEEP``), to show why a margin loss fails within the budget.

Per run: each target's 10-fold accuracy with InsightFace's thresholds and flip TTA (the
unique images of a ``.bin`` embedded once: the same numbers as the training loop's
callback), TAR at FAR = 1e-3, and ArcFace's L_Intra / L_Inter of the training images
against the class vectors (the class means for the triplet loss). Resumable: a run's work
directory (``run_directory``: the benchmark, the loss, its config changes and the seed)
resumes from its checkpoint, a finished
run (``result.json``, which holds its config) is read back, not retrained. Writes
``<out>.csv/.md`` (mean ± std over the seeds done), ``<out>_runs.jsonl`` (every run with
its config), ``<out>.png`` (accuracy per loss, seeds as dots) and ``<out>_curves.png``.

    nice -n 19 python -m experiments.loss_ranking --table=ranking --seeds=0,1,2 \\
        --runs=/work/loss_ranking_runs --out=experiments/results/loss_ranking
"""

import argparse
import dataclasses
import functools
import hashlib
import json
import multiprocessing
import os
import pathlib
import shutil
import time
from collections.abc import Mapping, Sequence
from concurrent import futures
from typing import Any

import jax
import ml_collections
import numpy as np
import scipy.linalg
from matplotlib.figure import Figure

from experiments import common
from faceloss_jax import data, evaluation, train
from faceloss_jax.data import hard_faces
from faceloss_jax.train_lib import objectives, periodic_eval, run_state

LOSSES = ("softmax", "sphereface", "cosface", "arcface", "combined", "center", "triplet")
TARGETS = tuple(hard_faces.PAIR_SETS)
METRICS = (
    *(f"{t}_accuracy" for t in TARGETS),
    *(f"{t}_val" for t in TARGETS),
    "l_intra",
    "l_inter",
    "train_seconds",
)
GEOMETRY_IMAGES = 1000  # the first training records (identity-major) for L_Intra, L_Inter

# The benchmark of the ranking: HardFacesConfig's defaults (identity_contrast 0.08, the
# calibration's choice) with 500 training and 300 held-out identities.
BENCHMARK = hard_faces.HardFacesConfig(num_identities=500, held_out_identities=300)

# Knob variants of the calibration (fields of HardFacesConfig set on BENCHMARK).
CALIBRATION = {
    "benchmark": {},
    "contrast 0.12": {"identity_contrast": 0.12},
    "contrast 0.05": {"identity_contrast": 0.05},
    "contrast 0.03": {"identity_contrast": 0.03},
    "contrast 0.05 + nuisance": {
        "identity_contrast": 0.05,
        "occlusion": 0.5,
        "blur": 1.0,
        "ageing": 2.5,
        "expression": 0.5,
    },
}

# Rows of the margin sweep: (loss, the config changes from the papers' values).
MARGIN_SWEEP = {
    "cosface s=16": ("cosface", {"loss.scale": 16.0}),
    "cosface m=0.1": ("cosface", {"loss.margin": 0.1}),
    "arcface s=16": ("arcface", {"loss.scale": 16.0}),
}

# The face recipe's sizes for one CPU core; its optimizer, schedule and loss values stay.
RECIPE = {
    "model.name": "iresnet18",
    "model.embedding_dim": 128,
    "half_precision": False,
    "batch_size": 32,
    "dataset.read_threads": 1,
    "eval.val_targets": (),  # scored after training, on the unique images (score_targets)
    "eval.batch_size": 256,
    "eval.plot": False,
    "log_every_steps": 10,
    "max_checkpoints_to_keep": 1,
}
STEPS = 240
CHECKPOINT_EVERY = 40

VARIANT = "face,source=recordio"


@dataclasses.dataclass(frozen=True)
class Setting:
    """A row: its ``name``, the ``loss`` config, the ``benchmark`` and the row's config
    changes (``overrides``, ``(key, value)`` pairs)."""

    name: str
    loss: str
    benchmark: hard_faces.HardFacesConfig
    overrides: tuple[tuple[str, Any], ...] = ()


def settings(
    table: str,
    losses: Sequence[str],
    benchmark: hard_faces.HardFacesConfig = BENCHMARK,
    variants: Sequence[str] | None = None,
) -> list[Setting]:
    """The rows of ``table``: "ranking" (each loss on ``benchmark``), "margins" (rows of
    ``MARGIN_SWEEP``), "calibration" (softmax on variants of the benchmark, rows of
    ``CALIBRATION``) or "pixels" (the calibration's benchmarks, for the raw-pixel
    baseline); ``variants`` names the margins or calibration rows (all by default)."""
    if table == "ranking":
        return [Setting(loss, loss, benchmark) for loss in losses]
    if table == "margins":
        return [
            Setting(name, loss, benchmark, tuple(sorted(changes.items())))
            for name, (loss, changes) in MARGIN_SWEEP.items()
            if variants is None or name in variants
        ]
    return [
        Setting(name, "softmax", dataclasses.replace(benchmark, **CALIBRATION[name]))
        for name in (CALIBRATION if variants is None else variants)
    ]


def run_config(
    loss: str,
    folder: str,
    *,
    image_size: int,
    steps: int,
    seed: int,
    overrides: Mapping[str, Any] | None = None,
) -> ml_collections.ConfigDict:
    """``configs/<loss>.py:face,source=recordio`` on ``folder`` with ``RECIPE``, ``steps``
    steps (warmup a tenth), a checkpoint every ``CHECKPOINT_EVERY`` steps, then
    ``overrides``. SphereFace: the polynomial schedule of the others, λ_min at half the run
    (``λ = base·(1 + γ·t)^−1`` with ``γ = (base/λ_min − 1) / (steps/2)``)."""
    config = common.experiment_config(loss, variant=VARIANT)
    values = {
        **RECIPE,
        "dataset.path": folder,
        "dataset.image_size": image_size,
        "num_train_steps": steps,
        "optimizer.warmup_steps": steps // 10,
        "checkpoint_every_steps": min(CHECKPOINT_EVERY, steps),
        "eval_every_steps": steps,
        "seed": seed,
    }
    if loss == "sphereface":
        base, minimum = config.loss.lambda_base, config.loss.lambda_min
        values |= {
            "optimizer.schedule": "polynomial",
            "loss.lambda_gamma": (base / minimum - 1) / max(steps // 2, 1),
        }
    return common.override(config, {**values, **(overrides or {})})


def benchmark_hash(benchmark: hard_faces.HardFacesConfig) -> str:
    """A short hash of every field of ``benchmark``."""
    fields = json.dumps(dataclasses.asdict(benchmark), sort_keys=True)
    return hashlib.sha1(fields.encode()).hexdigest()[:12]


def benchmark_folder(root: str, benchmark: hard_faces.HardFacesConfig) -> str:
    """``<root>/folders/<hash>``: the benchmark's folder, written once (into a temporary
    folder renamed at the end, so a killed write leaves nothing half-made)."""
    folder = pathlib.Path(root) / "folders" / benchmark_hash(benchmark)
    if not folder.exists():
        partial = folder.with_name(folder.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        hard_faces.write_hard_faces_folder(partial, benchmark)
        partial.rename(folder)
    return str(folder)


def embed_unique(
    config: ml_collections.ConfigDict, variables: Mapping[str, Any], images: np.ndarray
) -> tuple[np.ndarray, float]:
    """``f(x) + f(mirror(x))`` (float64) of every image, each distinct image embedded
    once (``evaluation.evaluate_pair_set``'s embeddings at a fraction of its cost when
    pairs share images), and the XNorm ``mean ‖f(x)‖`` over all originals and mirrors."""
    flat = images.reshape(len(images), -1)
    unique, inverse = np.unique(flat, axis=0, return_inverse=True)
    unique = unique.reshape((-1, *images.shape[1:]))
    model = periodic_eval.evaluation_model(config)
    embed_fn = jax.tree_util.Partial(functools.partial(model.apply, train=False), variables)
    normalize = functools.partial(data.normalize, normalization=config.dataset.normalization)
    extract = functools.partial(
        evaluation.extract_embeddings,
        embed_fn,
        batch_size=config.eval.batch_size,
        flip=False,
        normalize=False,
    )
    original = extract(normalize(unique)).astype(np.float64)
    mirrored = extract(normalize(unique[:, :, ::-1])).astype(np.float64)
    inverse = inverse.reshape(-1)
    norms = np.linalg.norm(original, axis=1) + np.linalg.norm(mirrored, axis=1)
    return (original + mirrored)[inverse], float(np.mean(norms[inverse]) / 2)


def score_targets(
    config: ml_collections.ConfigDict, variables: Mapping[str, Any], folder: str
) -> dict[str, float]:
    """``<target>_accuracy`` (10-fold, InsightFace's thresholds), ``_accuracy_std`` (over
    folds), ``_val`` (TAR at FAR = 1e-3), ``_xnorm`` of each ``<folder>/<target>.bin``."""
    metrics = {}
    for name in TARGETS:
        pairs = data.read_verification_bin(
            os.path.join(folder, f"{name}.bin"), image_size=config.dataset.image_size
        )
        embeddings, xnorm = embed_unique(config, variables, pairs.images)
        report = evaluation.verification.verification_report(
            embeddings[0::2],
            embeddings[1::2],
            pairs.issame,
            config.eval.n_folds,
            far=1e-3,
            threshold="insightface",
        )
        metrics |= {
            f"{name}_accuracy": float(report["accuracy"]),
            f"{name}_accuracy_std": float(report["accuracy_std"]),
            f"{name}_val": float(report["val"]),
            f"{name}_xnorm": xnorm,
        }
    return metrics


def _pixels(images: np.ndarray) -> np.ndarray:
    """``x + mirror(x)`` of uint8 images, in [0, 2], flattened."""
    pixels = images.astype(np.float64) / 255
    return (pixels + pixels[:, :, ::-1]).reshape(len(pixels), -1)


def fisher_projection(
    features: np.ndarray, labels: np.ndarray, *, dim: int, shrinkage: float = 0.1
) -> np.ndarray:
    """Fisher's LDA: the ``(D, dim)`` directions ``w`` of largest ``wᵀS_b w / wᵀS_w w``,
    ``S_w`` shrunk towards ``tr(S_w)/D · I`` by ``shrinkage`` (the generalized symmetric
    eigenproblem ``S_b w = λ S_w w``)."""
    means = evaluation.geometry.class_means(features, labels)
    within = features - means[labels]
    scatter_within = within.T @ within / len(features)
    scale = np.trace(scatter_within) / len(scatter_within)
    scatter_within = (1 - shrinkage) * scatter_within + shrinkage * scale * np.eye(
        len(scatter_within)
    )
    counts = np.bincount(labels)
    between = (means - features.mean(axis=0)) * np.sqrt(counts / len(features))[:, None]
    _, vectors = scipy.linalg.eigh(between.T @ between, scatter_within)
    return vectors[:, ::-1][:, :dim]


def pixel_baseline(folder: str, *, n_folds: int = 10) -> dict[str, float]:
    """Two baselines by the targets' protocol: ``pixels_<target>_accuracy`` with the raw
    pixels as the embedding (``x + mirror(x)``, centred on the set's mean; nothing
    learned), and ``lda_<target>_accuracy`` with a linear map learned on the training
    identities (``fisher_projection`` of the training pixels to 128 dimensions)."""
    source = data.RecordIOSource(folder, image_size=None)
    examples = [source[i] for i in range(len(source))]
    train_pixels = _pixels(np.stack([e["image"] for e in examples]))
    labels = np.unique([e["label"] for e in examples], return_inverse=True)[1]
    projection = fisher_projection(train_pixels, labels, dim=128)
    metrics = {}
    for name in TARGETS:
        pairs = data.read_verification_bin(os.path.join(folder, f"{name}.bin"), image_size=None)
        pixels = _pixels(pairs.images)
        embeddings = {"pixels": pixels - pixels.mean(axis=0), "lda": pixels @ projection}
        for method, x in embeddings.items():
            report = evaluation.verification.verification_report(
                x[0::2], x[1::2], pairs.issame, n_folds, far=1e-3, threshold="insightface"
            )
            metrics[f"{method}_{name}_accuracy"] = float(report["accuracy"])
    return metrics


def geometry(
    config: ml_collections.ConfigDict, variables: Mapping[str, Any], head: Any
) -> dict[str, float]:
    """ArcFace's ``l_intra`` / ``l_inter`` (units of π) of the first ``GEOMETRY_IMAGES``
    training images against the class vectors W (their classes' means for a loss
    without a classifier; then L_Inter is over those classes only)."""
    source = data.create_source(config.dataset, "train")
    examples = [source[i] for i in range(min(GEOMETRY_IMAGES, len(source)))]
    images = np.stack([e["image"] for e in examples])
    labels = np.array([e["label"] for e in examples])
    model = periodic_eval.evaluation_model(config)
    embeddings = evaluation.extract_embeddings(
        jax.tree_util.Partial(functools.partial(model.apply, train=False), variables),
        data.normalize(images, normalization=config.dataset.normalization),
        batch_size=config.eval.batch_size,
        flip=False,
        normalize=True,
    )
    if objectives.has_classifier(config.loss):
        weights = np.asarray(objectives.classifier_weights(config.loss, head))
    else:
        _, labels = np.unique(labels, return_inverse=True)
        weights = evaluation.geometry.class_centers(embeddings, labels).T
    return {
        "l_intra": evaluation.geometry.intra_angle(embeddings, weights, labels),
        "l_inter": evaluation.geometry.inter_angle(weights),
    }


def run_one(config: ml_collections.ConfigDict, workdir: str, folder: str) -> dict[str, Any]:
    """The result of one run: read from ``<workdir>/result.json`` if it finished, else
    trained (resuming from the run's checkpoint), scored and written there atomically.

    Returns:
      ``{"config": …, "metrics": …}``; ``train_seconds`` and ``cpu_seconds`` are the
      wall and CPU time of the last attempt (training, from its resume point, and
      scoring).
    """
    result_path = pathlib.Path(workdir) / "result.json"
    if result_path.exists():
        return json.loads(result_path.read_text(encoding="utf-8"))
    start, cpu_start = time.perf_counter(), time.process_time()
    train.train_and_evaluate(config, workdir)
    _, state = run_state.restore_run(config, workdir)
    variables = {"params": state.params["backbone"], "batch_stats": state.batch_stats}
    metrics = {
        **score_targets(config, variables, folder),
        **geometry(config, variables, state.params["head"]),
    }
    metrics["train_seconds"] = time.perf_counter() - start
    metrics["cpu_seconds"] = time.process_time() - cpu_start
    result = {"config": config.to_dict(), "metrics": metrics}
    partial = result_path.with_suffix(".partial")
    partial.write_text(json.dumps(result, indent=2, default=list), encoding="utf-8")
    partial.rename(result_path)
    print(
        f"[{workdir}] " + ", ".join(f"{k}={metrics[k]:.4f}" for k in METRICS),
        flush=True,
    )
    return result


def tasks(
    rows: Sequence[Setting], args: argparse.Namespace
) -> list[tuple[Setting, int, ml_collections.ConfigDict, str, str]]:
    """Every ``(setting, seed, config, workdir, folder)``, seed-major: every setting has
    a seed before any has two, so a partial study covers every loss."""
    result = []
    for seed in args.seeds:
        for setting in rows:
            folder = benchmark_folder(args.runs, setting.benchmark)
            config = run_config(
                setting.loss,
                folder,
                image_size=setting.benchmark.image_size,
                steps=args.steps,
                seed=seed,
                overrides={**dict(setting.overrides), **dict(args.set)},
            )
            workdir = run_directory(args.runs, setting, seed, dict(args.set))
            result.append((setting, seed, config, workdir, folder))
    return result


def run_directory(
    root: str, setting: Setting, seed: int, extra: Mapping[str, Any] | None = None
) -> str:
    """``<root>/runs/<benchmark hash>/<loss>[+<changes hash>]/seed_<seed>``: a run is its
    benchmark, loss, config changes (the row's and ``extra``, ``--set``'s) and seed,
    whichever table asks for it (the calibration's benchmark row is the ranking's
    softmax); a changed benchmark or config starts new runs rather than reading back a
    finished run of other values."""
    changes = {**dict(setting.overrides), **dict(extra or {})}
    name = setting.loss
    if changes:
        fields = json.dumps(changes, sort_keys=True, default=str)
        name += "+" + hashlib.sha1(fields.encode()).hexdigest()[:8]
    return os.path.join(root, "runs", benchmark_hash(setting.benchmark), name, f"seed_{seed}")


def finished(
    planned: Sequence[tuple[Setting, int, ml_collections.ConfigDict, str, str]],
) -> list[tuple[Setting, int, dict[str, Any]]]:
    """``(setting, seed, result)`` of the planned runs that have a ``result.json``."""
    done = []
    for setting, seed, _, workdir, _ in planned:
        path = pathlib.Path(workdir) / "result.json"
        if path.exists():
            done.append((setting, seed, json.loads(path.read_text(encoding="utf-8"))))
    return done


def summarize(
    runs: Sequence[tuple[Setting, int, dict[str, Any]]], rows: Sequence[Setting]
) -> list[dict[str, Any]]:
    """One row per setting with runs: ``seeds`` done, each metric's mean and std."""
    table = []
    for setting in rows:
        done = [result["metrics"] for s, _, result in runs if s.name == setting.name]
        if not done:
            continue
        row = {"setting": setting.name, "steps": runs[0][2]["config"]["num_train_steps"]}
        row["seeds"] = len(done)
        for key in METRICS:
            values = np.array([m[key] for m in done])
            row[key], row[f"{key}_std"] = float(values.mean()), float(values.std())
        table.append(row)
    return table


def plot_accuracy(runs: Sequence[tuple[Setting, int, dict[str, Any]]], path: str) -> str:
    """Accuracy per setting and target: bars at the mean over seeds, each seed a dot."""
    names = list(dict.fromkeys(s.name for s, _, _ in runs))
    fig = Figure(figsize=(1.1 * len(names) + 2.0, 3.6))
    ax = fig.add_subplot()
    width = 0.8 / len(TARGETS)
    for t, target in enumerate(TARGETS):
        offset = (t - (len(TARGETS) - 1) / 2) * width
        values = [
            [r["metrics"][f"{target}_accuracy"] for s, _, r in runs if s.name == name]
            for name in names
        ]
        x = np.arange(len(names)) + offset
        bars = ax.bar(x, [np.mean(v) for v in values], width, label=target, alpha=0.6)
        for xi, v in zip(x, values):
            ax.scatter([xi] * len(v), v, s=8, color=bars.patches[0].get_facecolor(), zorder=3)
    ax.set_xticks(np.arange(len(names)), names, fontsize=8)
    low = min(r["metrics"][f"{t}_accuracy"] for _, _, r in runs for t in TARGETS)
    ax.set_ylim(max(0.5, low - 0.05), 1.0)
    ax.set_ylabel("10-fold accuracy (InsightFace thresholds)")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize="small", loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=80, format="png")
    return path


def training_loss(workdir: str) -> tuple[np.ndarray, np.ndarray]:
    """Steps and training loss of a run's ``metrics.jsonl`` (a step logged again after a
    resume counts once, its last record)."""
    losses = {}
    with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
        for line in f:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # a line cut by a kill
                continue
            if record.get("split") == "train" and "loss" in record:
                losses[record["step"]] = record["loss"]
    steps = np.array(sorted(losses))
    return steps, np.array([losses[s] for s in steps])


def plot_curves(
    runs: Sequence[tuple[Setting, int, dict[str, Any]]],
    root: str,
    path: str,
    extra: Mapping[str, Any] | None = None,
) -> str:
    """Training loss against steps, a panel per setting, a line per seed (``extra``: the
    ``--set`` changes of the runs, see ``run_directory``). A run whose ``metrics.jsonl``
    is not in its directory (its ``result.json`` copied from another machine) has no
    line; its numbers are in the table."""
    names = list(dict.fromkeys(s.name for s, _, _ in runs))
    columns = min(4, len(names))
    rows = -(-len(names) // columns)
    fig = Figure(figsize=(3.0 * columns, 2.4 * rows))
    for index, name in enumerate(names, start=1):
        ax = fig.add_subplot(rows, columns, index)
        for setting, seed, _ in runs:
            if setting.name == name:
                workdir = run_directory(root, setting, seed, extra)
                if os.path.exists(os.path.join(workdir, "metrics.jsonl")):
                    ax.plot(*training_loss(workdir), label=f"seed {seed}", linewidth=1)
        ax.set_title(name, fontsize=9)
        ax.tick_params(labelsize=7)
        ax.set_xlabel("step", fontsize=7)
    fig.axes[0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=80, format="png")
    return path


_LEGEND = (
    "<target>_accuracy: 10-fold verification accuracy on the target's pairs of held-out "
    "identities (InsightFace's 0.01 threshold grid on squared L2 distance, flip TTA); "
    "<target>_val: TAR at FAR = 1e-3 (10-fold); l_intra, l_inter: ArcFace's angle metrics "
    "(units of π) of 1,000 training images against the class vectors (class means for the "
    "triplet loss); train_seconds: wall time of the run's last attempt on a shared, loaded "
    "2-core CPU at low priority (nice 10 or 19). Values are mean ± std over the seeds "
    "done (column seeds)."
)


def write_outputs(
    runs: Sequence[tuple[Setting, int, dict[str, Any]]],
    rows: Sequence[Setting],
    args: argparse.Namespace,
) -> None:
    """The table ``<out>.csv/.md`` of the finished ``runs``, ``<out>_runs.jsonl`` (each
    run's config and metrics) and the figures ``<out>.png``, ``<out>_curves.png``."""
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(f"{args.out}_runs.jsonl", "w", encoding="utf-8") as f:
        for setting, seed, result in runs:
            record = {"setting": setting.name, "seed": seed, **result}
            f.write(json.dumps(record, default=list) + "\n")
    knobs = {s.name: _changed(s.benchmark) for s in rows}
    common.write_table(
        summarize(runs, rows),
        args.out,
        title=f"Loss ranking on hard synthetic faces ({args.table}, {len(runs)} runs done)",
        command=args.command,
        notes=f"Benchmark: `data.hard_faces.HardFacesConfig` {_changed(BENCHMARK, None)}; "
        f"per row, the fields changed from it: {json.dumps(knobs)}"
        + "".join(f"; {s.name}: {dict(s.overrides)}" for s in rows if s.overrides)
        + f". Every run's config: "
        f"`{args.out}_runs.jsonl`. Figures: `{args.out}.png`, `{args.out}_curves.png`.",
        metrics=METRICS,
        legend=_LEGEND,
    )
    plot_accuracy(runs, f"{args.out}.png")
    plot_curves(runs, args.runs, f"{args.out}_curves.png", dict(args.set))


def _changed(
    benchmark: hard_faces.HardFacesConfig, base: hard_faces.HardFacesConfig | None = BENCHMARK
) -> dict[str, Any]:
    """The fields of ``benchmark`` that differ from ``base`` (all of them for None)."""
    fields = dataclasses.asdict(benchmark)
    reference = dataclasses.asdict(base) if base else {}
    return {k: v for k, v in fields.items() if reference.get(k) != v}


def plan(
    argv: list[str] | None,
) -> tuple[argparse.Namespace, list[Setting], list[tuple[Setting, int, Any, str, str]]]:
    """The flags, the rows and the planned runs (``tasks``) of a command line."""
    parser = common.parser(__doc__.splitlines()[0], out="experiments/results/loss_ranking")
    parser.add_argument(
        "--table", choices=("ranking", "margins", "calibration", "pixels"), default="ranking"
    )
    parser.add_argument("--losses", type=common.names, default=LOSSES)
    parser.add_argument(
        "--benchmark",
        type=common._assignment,
        action="append",
        default=[],
        help="KEY=VALUE: a field of data.hard_faces.HardFacesConfig changed from BENCHMARK",
    )
    parser.add_argument(
        "--variants",
        type=common.names,
        default=None,
        help="the calibration or margins rows to train (names of CALIBRATION or "
        "MARGIN_SWEEP, comma-separated; all by default)",
    )
    parser.add_argument(
        "--report_only",
        action="store_true",
        help="write the outputs of the finished runs and train nothing",
    )
    parser.set_defaults(steps=STEPS, seeds=(0, 1, 2), runs="/work/loss_ranking_runs")
    args = common.parse_args(parser, argv, module="experiments.loss_ranking")
    known = {"margins": MARGIN_SWEEP, "calibration": CALIBRATION}.get(args.table, {})
    unknown = sorted(set(args.variants or ()) - set(known))
    if unknown:
        parser.error(f"--variants: no {args.table} row {', '.join(map(repr, unknown))}")
    benchmark = dataclasses.replace(BENCHMARK, **dict(args.benchmark))
    rows = settings(args.table, args.losses, benchmark, args.variants)
    return args, rows, tasks(rows, args)


def write_pixel_table(rows: Sequence[Setting], args: argparse.Namespace) -> None:
    """``<out>.csv/.md``: the pixel baselines (``pixel_baseline``) of each row's
    benchmark; nothing is trained."""
    table = []
    for setting in rows:
        folder = benchmark_folder(args.runs, setting.benchmark)
        row = {"setting": setting.name, "steps": 0, "seeds": 1}
        row |= pixel_baseline(folder, n_folds=setting.benchmark.n_folds)
        table.append(row)
    knobs = {s.name: _changed(s.benchmark) for s in rows}
    common.write_table(
        table,
        args.out,
        title="Pixel baselines on the hard synthetic faces (no network)",
        command=args.command,
        notes=f"Per row, the fields changed from `loss_ranking.BENCHMARK`: {json.dumps(knobs)}.",
        metrics=tuple(k for k in table[0] if k not in ("setting", "steps", "seeds")),
        legend="10-fold accuracy (InsightFace's thresholds) with, as the embedding, "
        "pixels_*: the mean-centred pixels of x + mirror(x); lda_*: their projection on "
        "the 128 Fisher directions (LDA, within-class scatter shrunk by 0.1) learned on "
        "the training identities.",
    )


def main(argv: list[str] | None = None) -> None:
    args, rows, planned = plan(argv)
    if args.table == "pixels":
        write_pixel_table(rows, args)
        return
    todo = [
        task
        for task in planned
        if not (args.report_only or (pathlib.Path(task[3]) / "result.json").exists())
    ]
    if args.jobs > 1 and todo:
        context = multiprocessing.get_context("spawn")  # JAX does not survive a fork.
        with futures.ProcessPoolExecutor(args.jobs, mp_context=context) as pool:
            pending = [pool.submit(run_one, *task[2:]) for task in todo]
            for future in futures.as_completed(pending):
                future.result()
                write_outputs(finished(planned), rows, args)
    else:
        for task in todo:
            run_one(*task[2:])
            write_outputs(finished(planned), rows, args)
    if done := finished(planned):
        write_outputs(done, rows, args)


if __name__ == "__main__":
    main()
