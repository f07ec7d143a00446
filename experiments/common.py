"""What every experiment runner shares: configs with overrides, a fresh training run per
(setting, seed), the learned features of a run, tables (CSV + Markdown) and figures.

A runner builds a list of ``Setting``s (a name and a config), calls ``run_settings``
and writes its table and figure; each run trains from scratch in its own work directory
``<runs>/<setting>/seed_<seed>`` (removed first, so a rerun never resumes), so the
numbers depend only on the configs and seeds.
"""

import argparse
import ast
import csv
import dataclasses
import importlib
import multiprocessing
import os
import re
import shlex
import shutil
import sys
import time
from collections.abc import Mapping, Sequence
from concurrent import futures
from typing import Any

import ml_collections
import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure

from faceloss_jax import evaluation, train
from faceloss_jax.train_lib import periodic_eval, run_state

# The metrics of every table: evaluate_run's keys, and the wall time of the run.
METRICS = (
    "closed_set_accuracy",
    "verification_accuracy",
    "auc",
    "l_intra",
    "l_inter",
    "train_seconds",
)


@dataclasses.dataclass(frozen=True)
class Setting:
    """One row of a table: a ``name`` and the experiment ``config`` (seed not yet set)."""

    name: str
    config: ml_collections.ConfigDict


def experiment_config(
    loss: str, overrides: Mapping[str, Any] | None = None, *, variant: str = "mnist"
) -> ml_collections.ConfigDict:
    """``configs/<loss>.py:get_config(variant)`` with dotted-key ``overrides``.

    Args:
      loss: the config file's name, e.g. "arcface".
      overrides: ``{"loss.margin": 0.3}``: dotted keys of existing fields and their values.
      variant: the config variant ("mnist", "face").

    Returns:
      The config.
    """
    config = importlib.import_module(f"configs.{loss}").get_config(variant)
    return override(config, overrides or {})


def override(
    config: ml_collections.ConfigDict, overrides: Mapping[str, Any]
) -> ml_collections.ConfigDict:
    """A locked copy of ``config`` with the dotted-key ``overrides`` set
    (``update_from_flattened_dict``; an unknown key is a KeyError naming it)."""
    config = ml_collections.ConfigDict(config.to_dict())
    config.lock()
    config.update_from_flattened_dict(dict(overrides))
    return config


def shorten(config: ml_collections.ConfigDict, *, steps: int | None) -> ml_collections.ConfigDict:
    """The config for an experiment run: ``steps`` training steps (None: the config's),
    one checkpoint and one evaluation at the end, no per-run figures."""
    steps = steps or config.num_train_steps
    warmup = min(config.optimizer.warmup_steps, steps // 10)
    return override(
        config,
        {
            "num_train_steps": steps,
            "optimizer.warmup_steps": warmup,
            "log_every_steps": min(config.log_every_steps, steps),
            "checkpoint_every_steps": steps,
            "eval_every_steps": steps,
            "max_checkpoints_to_keep": 1,
            "eval.plot": False,
        },
    )


def train_run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Trains ``config`` from scratch in ``workdir`` (deleted first) and returns the final
    metrics of ``evaluation.evaluate_run`` plus ``train_seconds`` (wall time of training
    and evaluation, compilation included)."""
    shutil.rmtree(workdir, ignore_errors=True)
    start = time.perf_counter()
    metrics = train.train_and_evaluate(config, workdir)
    return {**metrics, "train_seconds": time.perf_counter() - start}


def final_test_features(
    config: ml_collections.ConfigDict, workdir: str
) -> tuple[np.ndarray, np.ndarray]:
    """The raw (unnormalized) test-split features and labels of the run in ``workdir``,
    from its final checkpoint."""
    images, labels = periodic_eval.load_split(config, config.eval.test_split)
    model, state = run_state.restore_run(config, workdir)
    variables = {"params": state.params["backbone"], "batch_stats": state.batch_stats}
    features = evaluation.extract_embeddings(
        lambda x: model.apply(variables, x, train=False),
        images,
        batch_size=config.eval.batch_size,
        flip=False,
        normalize=False,
    )
    return features, labels


def _run_one(
    config: ml_collections.ConfigDict,
    workdir: str,
    name: str,
    with_features: bool,
    columns: Sequence[str],
) -> tuple[dict[str, float], tuple[np.ndarray, np.ndarray] | None]:
    """One run (in this process or a worker): its metrics and, optionally, its test
    features and labels."""
    metrics = train_run(config, workdir)
    print(
        f"[{name} seed {config.seed}] " + ", ".join(f"{k}={metrics[k]:.4f}" for k in columns),
        flush=True,
    )
    return metrics, final_test_features(config, workdir) if with_features else None


def run_settings(
    settings: Sequence[Setting],
    *,
    seeds: Sequence[int],
    steps: int | None,
    runs: str,
    overrides: Mapping[str, Any] | None = None,
    jobs: int = 1,
    with_features: bool = False,
    metrics: Sequence[str] = METRICS,
) -> tuple[list[dict[str, Any]], list[tuple[str, np.ndarray, np.ndarray]]]:
    """Trains every setting with every seed; returns one row per setting.

    Args:
      settings: the rows.
      seeds: the seeds (``config.seed``: initialization, data order, pairs).
      steps: training steps per run (None: each config's own).
      runs: the directory of the runs' work directories (checkpoints, logs).
      overrides: dotted-key values set in every config (e.g. smaller evaluation sets).
      jobs: runs trained at once, each in its own process (a run's numbers do not
        depend on it; its wall time does).
      with_features: also return each setting's test features of the first seed.
      metrics: the keys of each run's metrics that make the columns.

    Returns:
      Rows ``{"setting": name, "steps": n, "seeds": k, <metric>: mean,
      <metric>_std: std over seeds}`` for the ``metrics``, and the panels
      ``(name, features, labels)`` (empty without ``with_features``).
    """
    tasks = []
    for setting in settings:
        for seed in seeds:
            config = override(
                shorten(setting.config, steps=steps), {**(overrides or {}), "seed": seed}
            )
            workdir = os.path.join(runs, re.sub(r"[^\w.=-]+", "_", setting.name), f"seed_{seed}")
            first = with_features and seed == seeds[0]
            tasks.append((config, workdir, setting.name, first, tuple(metrics)))
    if jobs > 1:
        context = multiprocessing.get_context("spawn")  # JAX does not survive a fork.
        with futures.ProcessPoolExecutor(jobs, mp_context=context) as pool:
            results = list(pool.map(_run_one, *zip(*tasks)))
    else:
        results = [_run_one(*task) for task in tasks]

    rows, panels = [], []
    for index, setting in enumerate(settings):
        per_seed = results[index * len(seeds) : (index + 1) * len(seeds)]
        row = {
            "setting": setting.name,
            "steps": tasks[index * len(seeds)][0].num_train_steps,
            "seeds": len(seeds),
        }
        for key in metrics:
            values = np.array([result[key] for result, _ in per_seed])
            row[key], row[f"{key}_std"] = float(values.mean()), float(values.std())
        rows.append(row)
        if per_seed[0][1] is not None:
            panels.append((setting.name, *per_seed[0][1]))
    return rows, panels


def write_table(
    rows: Sequence[Mapping[str, Any]],
    out: str,
    *,
    title: str,
    command: str,
    notes: str = "",
    metrics: Sequence[str] = METRICS,
    legend: str | None = None,
) -> None:
    """Writes ``<out>.csv`` (every column) and ``<out>.md``: a title, the command that
    produced it, the ``metrics`` as ``mean ± std`` (std over seeds) and ``legend`` (by
    default, that of ``METRICS``)."""
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    columns = list(rows[0])
    with open(f"{out}.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    extra = [
        c
        for c in columns
        if c not in ("setting", "steps", "seeds") and not c.endswith("_std") and c not in metrics
    ]
    header = ["setting", *extra, "steps", "seeds", *metrics]
    lines = [
        f"# {title}",
        "",
        f"Command: `{command}`",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for row in rows:
        cells = [_format(row, c) for c in header]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", legend or _LEGEND]
    if notes:
        lines += ["", notes]
    with open(f"{out}.md", "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")


_LEGEND = (
    "closed_set_accuracy: test digits of the training classes; verification_accuracy, auc: "
    "10-fold verification on pairs of the held-out classes (open set); l_intra, l_inter: "
    "ArcFace's angle metrics (in units of π) of the test features against their class "
    "centres; train_seconds: wall time of training + evaluation on a shared 2-core CPU "
    "(varies between runs, unlike the other columns). Values are mean ± std over seeds."
)


def _format(row: Mapping[str, Any], column: str) -> str:
    value = row[column]
    if isinstance(value, float):
        digits = 1 if column == "train_seconds" else 4
        std = row.get(f"{column}_std")
        if std is not None and row.get("seeds", 1) > 1:
            return f"{value:.{digits}f} ± {std:.{digits}f}"
        return f"{value:.{digits}f}"
    return str(value)


def parse_args(
    parser: argparse.ArgumentParser, argv: Sequence[str] | None, *, module: str
) -> argparse.Namespace:
    """Parses ``argv`` (None: the command line) of a ``parser()``, defaults ``--runs`` to
    ``/tmp/faceloss_experiments/<basename of --out>``, and adds ``args.command``: the
    command that reproduces the run, typed from the repository root (with ``XLA_FLAGS``
    when set: thread settings change the wall times)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    if args.runs is None:
        args.runs = os.path.join("/tmp/faceloss_experiments", os.path.basename(args.out))
    args.command = shlex.join(["python", "-m", module, *argv])
    if xla_flags := os.environ.get("XLA_FLAGS"):
        args.command = f"XLA_FLAGS={shlex.quote(xla_flags)} {args.command}"
    return args


def plot_feature_grid(
    panels: Sequence[tuple[str, np.ndarray, np.ndarray]], path: str, *, columns: int = 3
) -> str:
    """One figure of several runs' features: 2-D features on the plane, 3-D ones on the
    unit sphere (the center-loss paper's Fig. 2, SphereFace's Fig. 1), panel by panel.

    Args:
      panels: ``(title, features (N, d), labels (N,))`` with d = 2 or 3.
      path: the PNG to write.
      columns: panels per row.
    """
    dims = {features.shape[1] for _, features, _ in panels}
    if dims - {2, 3}:
        raise ValueError(f"panels need 2-D or 3-D features; got dimensions {sorted(dims)}")
    rows = -(-len(panels) // columns)
    fig = Figure(figsize=(3.0 * columns, 3.0 * rows))
    colors = np.array(colormaps["tab10"].colors)
    for index, (title, features, labels) in enumerate(panels, start=1):
        if features.shape[1] == 3:
            ax = fig.add_subplot(rows, columns, index, projection="3d")
            points = evaluation.l2_normalize(features)
            ax.set_box_aspect((1, 1, 1))
            ax.set_axis_off()
        else:
            ax = fig.add_subplot(rows, columns, index)
            points = features
            ax.set_aspect("equal", adjustable="datalim")
            ax.tick_params(labelsize=6)
        ax.scatter(*points.T, c=colors[labels % 10], s=1, linewidths=0)
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=80, format="png")
    return path


def plot_curves(
    curves: Mapping[str, tuple[Sequence[float], Sequence[float], Sequence[float]]],
    path: str,
    *,
    xlabel: str,
    ylabel: str = "open-set verification accuracy",
) -> str:
    """Lines with error bars: ``name -> (x, mean, std)``, one line per name."""
    fig = Figure(figsize=(5.0, 3.5))
    ax = fig.add_subplot()
    for name, (x, mean, std) in curves.items():
        ax.errorbar(x, mean, yerr=std, marker="o", capsize=3, label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=80, format="png")
    return path


def parser(description: str, *, out: str) -> argparse.ArgumentParser:
    """The flags of every runner: ``--steps``, ``--seeds``, ``--out``, ``--runs``."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        help="training steps per run (default: each config's own)",
    )
    p.add_argument("--seeds", type=_ints, default=(0,), help="comma-separated seeds")
    p.add_argument("--out", default=out, help="output prefix: <out>.csv, .md, .png")
    p.add_argument(
        "--runs",
        default=None,
        help="where the runs' work directories go (not committed); default: "
        "/tmp/faceloss_experiments/<basename of --out>",
    )
    p.add_argument("--jobs", type=int, default=1, help="runs trained at once (processes)")
    p.add_argument(
        "--set",
        type=_assignment,
        action="append",
        default=[],
        help="KEY=VALUE: a config field set in every run, e.g. eval.num_pairs=600",
    )
    return p


def _assignment(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key, value


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(t) for t in text.split(","))


def floats(text: str) -> tuple[float, ...]:
    """Parses a comma-separated list of numbers (a flag value)."""
    return tuple(float(t) for t in text.split(","))


def names(text: str) -> tuple[str, ...]:
    """Parses a comma-separated list of names (a flag value)."""
    return tuple(t for t in text.split(",") if t)


def run_table_and_features(
    settings: Sequence[Setting], args: argparse.Namespace, *, title: str, columns: int = 3
) -> list[dict[str, Any]]:
    """Runs ``settings`` with the runner's flags and writes the table ``<out>.csv/.md``
    and the grid of the first seed's test features ``<out>.png``."""
    rows, panels = run_settings(
        settings,
        seeds=args.seeds,
        steps=args.steps,
        runs=args.runs,
        overrides=dict(args.set),
        jobs=args.jobs,
        with_features=True,
    )
    write_table(
        rows,
        args.out,
        title=title,
        command=args.command,
        notes=f"Figure: `{args.out}.png` (test features of seed {args.seeds[0]}).",
    )
    plot_feature_grid(panels, f"{args.out}.png", columns=columns)
    return rows


def plot_bars(
    rows: Sequence[Mapping[str, Any]],
    path: str,
    *,
    bars: Sequence[tuple[str, str]] = (
        ("closed_set_accuracy", "closed-set accuracy"),
        ("verification_accuracy", "open-set verification"),
    ),
) -> str:
    """Accuracies per setting, mean ± std bars: ``bars`` are (column, legend label)
    pairs, by default closed-set and open-set verification accuracy."""
    fig = Figure(figsize=(0.6 * len(bars) * len(rows) + 2.0, 3.5))
    ax = fig.add_subplot()
    x = np.arange(len(rows))
    width = 0.8 / len(bars)
    for index, (key, label) in enumerate(bars):
        ax.bar(
            x + (index - (len(bars) - 1) / 2) * width,
            [r[key] for r in rows],
            width,
            yerr=[r[f"{key}_std"] for r in rows],
            capsize=3,
            label=label,
        )
    ax.set_xticks(x, [r["setting"] for r in rows], fontsize=8)
    ax.set_ylim(0.0, 1.0)
    ax.legend(fontsize="small", loc="lower right")
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=80, format="png")
    return path
