"""P×K batches and triplet mining on many identities: why identity-balanced batches matter.

On face data a uniformly shuffled batch of B images from C ≫ B identities holds almost
no two images of one identity, so the triplet and contrastive losses find few or no
positive pairs. This study trains a small backbone on synthetic identities
(``faceloss_jax.data.synthetic``, 400 training identities × 8 images, 12×12) with

* the triplet loss: uniform batches (online batch-all) vs P×K batches (12 identities ×
  4 images) with online batch-all, batch-hard and semi-hard mining, and with offline
  mining (``losses.mining``: FaceNet's semi-hard selection every 5 steps);
* a pure contrastive loss (Hadsell et al. 2006, margin 1 on unit embeddings; registered
  here as ``pair_contrastive``): uniform vs P×K batches;

logging per step the triplets the batch offers (valid: ``y_a = y_p ≠ y_n``; active:
violating the margin, ``D²_ap − D²_an + α > 0``, with the network of that step), and
reports 10-fold open-set verification accuracy on 100 held-out identities, mean ± std
over seeds. The training step is the library's (``train_step.train_step`` under
``shard_map`` on one device), the data ``data.create_iterator``.

    python -m experiments.pxk_mining --steps=60 --seeds=0,1,2 \\
        --out=experiments/results/pxk_mining
"""

import argparse
import csv
import dataclasses
import functools
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
from matplotlib.figure import Figure

from experiments import common
from faceloss_jax import data, evaluation, losses
from faceloss_jax.losses import hyperparameters as hp
from faceloss_jax.losses import mining
from faceloss_jax.train_lib import objectives, optimizers, run_state, train_step

# The study's own loss, registered while a setting runs (``run``), so that the package's
# table of losses stays the package's.
PAIR_CONTRASTIVE = objectives.Objective(
    losses.contrastive_loss,
    "contrastive loss (Hadsell, Chopra, LeCun, CVPR 2006)",
    {"margin": hp.positive("m of the different-pair hinge")},
    classifier="none",
    layouts=frozenset({"data_parallel"}),
    unit_embeddings=True,
)

BATCH, K = 48, 4
MARGIN = 0.2  # α of the triplet loss (FaceNet); the logged triplets use it for every loss
# The face recipe scaled to a 2-core CPU (as experiments/synthetic_openset.py).
CPU_RECIPE = {
    "model.name": "lenet_pp",
    "model.embedding_dim": 64,
    "dataset.image_size": 12,
    "dataset.num_identities": 400,
    "dataset.images_per_identity": 8,
    "dataset.held_out_identities": 100,
    "dataset.test_images_per_identity": 4,
    "half_precision": False,
    "batch_size": BATCH,
    "optimizer.name": "adamw",
    "optimizer.schedule": "cosine",
    "optimizer.learning_rate": 1e-3,
    "optimizer.warmup_steps": 5,
}


@dataclasses.dataclass(frozen=True)
class Setting:
    """A row: the loss, P×K or uniform batches, the mining, and loss overrides."""

    loss: str
    batches: str
    mining: str
    overrides: tuple[tuple[str, Any], ...] = ()

    @property
    def name(self) -> str:
        return f"{self.loss} / {self.batches} / {self.mining}"


SETTINGS = (
    Setting("triplet", "uniform", "batch_all", (("loss.mining", "batch_all"),)),
    Setting("triplet", "P×K", "batch_all", (("loss.mining", "batch_all"),)),
    Setting("triplet", "P×K", "batch_hard", (("loss.mining", "batch_hard"),)),
    Setting("triplet", "P×K", "semi_hard", (("loss.mining", "semi_hard"),)),
    Setting(
        "triplet",
        "P×K",
        "offline",
        (
            ("loss.mining", "offline"),
            ("loss.offline_rule", "semi_hard"),
            ("loss.every_steps", 5),
            ("loss.subset_size", BATCH),
        ),
    ),
    Setting("pair_contrastive", "uniform", "all pairs"),
    Setting("pair_contrastive", "P×K", "all pairs"),
)


def make_config(
    setting: Setting, seed: int, *, steps: int, recipe: dict[str, Any] | None = None
) -> ml_collections.ConfigDict:
    """The triplet face config with the CPU recipe, the setting's batches and loss."""
    recipe = {**CPU_RECIPE, **(recipe or {})}
    config = ml_collections.ConfigDict(
        common.experiment_config("triplet", variant="face").to_dict()
    )
    config.update_from_flattened_dict(recipe)
    if setting.loss != "triplet":
        config.loss = ml_collections.ConfigDict(
            {"name": setting.loss, **objectives.default_hyperparameters(setting.loss)}
        )
    config.update_from_flattened_dict(dict(setting.overrides))
    config.dataset.identities_per_batch = 0
    config.dataset.samples_per_identity = K if setting.batches == "P×K" else 0
    config.num_train_steps, config.seed = steps, seed
    objectives.check_loss_config(config.loss)
    return config


def _open_set(config: ml_collections.ConfigDict) -> tuple[np.ndarray, np.ndarray]:
    source = data.create_source(config.dataset, "openset")
    records = [source[i] for i in range(len(source))]
    images = np.stack([r["image"] for r in records])
    return data.normalize(images, config.dataset.normalization), np.array(
        [r["label"] for r in records]
    )


@functools.cache
def _compiled(setting: Setting, steps: int, recipe: tuple[tuple[str, Any], ...]):
    """The model, its jitted train step (library's), triplet statistics and embedding,
    compiled once per loss setting (uniform and P×K batches share them) for all seeds."""
    config = make_config(setting, 0, steps=steps, recipe=dict(recipe))
    model = run_state.training_model(config)
    learning_rate_fn = optimizers.create_learning_rate_schedule(
        config.optimizer, num_train_steps=steps
    )
    mesh = train_step.data_mesh(jax.devices()[:1])
    state = _initial_state(config, model, learning_rate_fn, seed=0)
    step_fn = train_step.create_parallel_train_step(
        model,
        config,
        learning_rate_fn,
        mesh=mesh,
        state_specs=run_state.state_partition_specs(state, class_sharded=False),
        parallelism="shard_map",
    )

    @jax.jit
    def embed(params, batch_stats, images):
        return model.apply({"params": params, "batch_stats": batch_stats}, images, train=False)

    @jax.jit
    def statistics(params, batch_stats, images, labels):
        x = losses.l2_normalize(embed(params, batch_stats, images))
        return mining.triplet_statistics(x, labels, margin=MARGIN)

    return model, learning_rate_fn, mesh, step_fn, embed, statistics, state


def _initial_state(config, model, learning_rate_fn, *, seed: int):
    size = config.dataset.image_size
    return run_state.create_train_state(
        config,
        model,
        jax.random.PRNGKey(seed),
        num_classes=data.num_classes(config.dataset),
        image_shape=(size, size, config.dataset.channels),
        learning_rate_fn=learning_rate_fn,
    )


def run(
    setting: Setting, seed: int, *, steps: int, recipe: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Trains one setting for ``steps`` steps; returns the per-step log and the final
    open-set verification accuracy (10 folds over 2,000 pairs)."""
    with objectives.registered("pair_contrastive", PAIR_CONTRASTIVE):
        return _train(setting, seed, steps=steps, recipe=recipe)


def _train(
    setting: Setting, seed: int, *, steps: int, recipe: dict[str, Any] | None
) -> dict[str, Any]:
    config = make_config(setting, seed, steps=steps, recipe=recipe)
    start = time.perf_counter()
    model, learning_rate_fn, mesh, step_fn, embed, statistics, template = _compiled(
        dataclasses.replace(setting, batches="P×K"), steps, tuple(sorted((recipe or {}).items()))
    )
    # The seed's initialization in the template's state (the same optimizer object, so
    # the compiled step takes it).
    fresh = _initial_state(config, model, learning_rate_fn, seed=seed)
    state = template.replace(
        params=fresh.params,
        opt_state=template.tx.init(fresh.params),
        batch_stats=fresh.batch_stats,
        loss_state=fresh.loss_state,
        rng=fresh.rng,
    )
    iterator = data.create_iterator(
        data.create_source(config.dataset, "train"),
        config.dataset,
        global_batch_size=config.batch_size,
        seed=seed,
        train=True,
        process_index=0,
        process_count=1,
        repeat_batches=objectives.held_batches(config.loss),
    )
    log = []
    for step in range(1, steps + 1):
        batch = next(iterator)
        stats = statistics(
            state.params["backbone"], state.batch_stats, batch["image"], batch["label"]
        )
        state, metrics = step_fn(
            state, train_step.shard_batch(batch, parallelism="shard_map", mesh=mesh)
        )
        log.append(
            {
                "step": step,
                "loss": float(metrics["loss"]),
                **{k: float(v) for k, v in stats.items()},
            }
        )
    images, labels = _open_set(config)
    embeddings = np.concatenate(
        [
            np.asarray(embed(state.params["backbone"], state.batch_stats, images[i : i + 200]))
            for i in range(0, len(images), 200)
        ]
    )
    first, second, issame = evaluation.make_pairs(labels, num_pairs=2000, seed=seed)
    scores = evaluation.pair_scores(embeddings[first], embeddings[second])
    accuracy = float(np.mean(evaluation.kfold_accuracy(scores, issame, n_folds=10)[0]))
    return {
        "log": log,
        "verification_accuracy": accuracy,
        "seconds": time.perf_counter() - start,
    }


def summarize(setting: Setting, results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """A table row: mean ± std over seeds of accuracy and the per-step triplet counts."""

    def stat(values):
        return float(np.mean(values)), float(np.std(values))

    per_run = {
        "verification_accuracy": [r["verification_accuracy"] for r in results],
        "active_triplets": [np.mean([s["active_triplets"] for s in r["log"]]) for r in results],
        "active_fraction": [np.mean([s["active_fraction"] for s in r["log"]]) for r in results],
        "anchors_with_positive": [
            np.mean([s["anchors_with_positive"] for s in r["log"]]) for r in results
        ],
        "steps_without_active": [
            np.mean([s["active_triplets"] == 0 for s in r["log"]]) for r in results
        ],
        "seconds": [r["seconds"] for r in results],
    }
    row = {
        "loss": setting.loss,
        "batches": setting.batches,
        "mining": setting.mining,
        "seeds": len(results),
    }
    for key, values in per_run.items():
        row[key], row[f"{key}_std"] = stat(values)
    return row


def write(
    rows: list[dict[str, Any]], curves: dict[str, np.ndarray], out: str, command: str
) -> None:
    """``<out>.csv``, ``<out>.md`` (mean ± std) and ``<out>.png``."""
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    with open(f"{out}.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    columns = (
        "verification_accuracy",
        "anchors_with_positive",
        "active_triplets",
        "active_fraction",
        "steps_without_active",
    )
    lines = [
        "# P×K batches and triplet mining on 400 synthetic identities",
        "",
        f"Command: `{command}`",
        "",
        "| loss | batches | mining | " + " | ".join(columns) + " |",
        "|---|---|---|" + "---|" * len(columns),
    ]
    for row in rows:
        cells = [
            f"{row[c]:.3f} ± {row[c + '_std']:.3f}"
            if c != "active_triplets"
            else f"{row[c]:.0f} ± {row[c + '_std']:.0f}"
            for c in columns
        ]
        lines.append(
            f"| {row['loss']} | {row['batches']} | {row['mining']} | " + " | ".join(cells) + " |"
        )
    lines += [
        "",
        "verification_accuracy: 10-fold accuracy on 2,000 pairs of 100 held-out identities. "
        "Per training step, averaged over the steps (then mean ± std over seeds): "
        "anchors_with_positive, the fraction of the batch's images with another image of "
        "their identity in it; active_triplets, the triplets (a, p, n) with "
        f"D²_ap − D²_an + {MARGIN} > 0 under the network of that step (L2-normalized "
        "embeddings); active_fraction, active / valid triplets; steps_without_active, "
        f"the fraction of steps with none. Batch {BATCH} (P×K: 12 × 4); offline: "
        "semi-hard selection every 5 steps on the held batch.",
    ]
    with open(f"{out}.md", "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")

    figure = Figure(figsize=(11, 4))
    left, right = figure.subplots(1, 2)
    for name, curve in curves.items():
        left.plot(np.arange(1, len(curve) + 1), curve + 1, label=name)
    left.set_yscale("log")
    left.set_xlabel("step")
    left.set_ylabel("active triplets in the batch + 1 (mean over seeds)")
    left.legend(fontsize=7)
    names = [f"{r['loss'].replace('pair_', '')}\n{r['batches']}\n{r['mining']}" for r in rows]
    right.bar(
        range(len(rows)),
        [r["verification_accuracy"] for r in rows],
        yerr=[r["verification_accuracy_std"] for r in rows],
        capsize=3,
    )
    right.set_xticks(range(len(rows)), names, fontsize=7)
    right.set_ylim(0.5, 1.0)
    right.set_ylabel("open-set verification accuracy")
    figure.tight_layout()
    figure.savefig(f"{out}.png", dpi=120)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument(
        "--seeds", type=lambda s: tuple(int(v) for v in s.split(",")), default=(0, 1, 2)
    )
    parser.add_argument("--out", default="experiments/results/pxk_mining")
    args = parser.parse_args(argv)
    command = "python -m experiments.pxk_mining " + " ".join(sys.argv[1:] if argv is None else argv)
    rows, curves = [], {}
    for setting in SETTINGS:
        results = [run(setting, seed, steps=args.steps) for seed in args.seeds]
        rows.append(summarize(setting, results))
        curves[setting.name] = np.mean(
            [[s["active_triplets"] for s in r["log"]] for r in results], axis=0
        )
        print(
            f"[{setting.name}] "
            + ", ".join(f"{k}={v:.3f}" for k, v in rows[-1].items() if isinstance(v, float)),
            flush=True,
        )
    write(rows, curves, args.out, command)


if __name__ == "__main__":
    main()
