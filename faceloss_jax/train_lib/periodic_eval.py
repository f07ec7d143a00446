"""Evaluation during training, as arcface_torch's verification callback: the
evaluation sets (closed and open set splits, ``.bin`` verification targets), the float32
evaluation model, the metrics of a state and the best accuracy so far.
"""

import functools
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
from etils import epath
from flax import linen as nn
from jax.experimental import multihost_utils
from jax.tree_util import Partial

from faceloss_jax import data, errors, evaluation
from faceloss_jax.train_lib import objectives, run_state


class _Subset:
    """The examples ``indices`` of a random-access source."""

    def __init__(self, source: Any, indices: np.ndarray):
        self._source, self._indices = source, indices

    def __len__(self) -> int:
        return len(self._indices)

    def __getitem__(self, index: int) -> Any:
        return self._source[int(self._indices[index])]


def load_split(config: ml_collections.ConfigDict, split: str) -> tuple[np.ndarray, np.ndarray]:
    """The images (preprocessed for the backbone) and labels of a dataset split: all of
    them, or a random subset (drawn from ``config.seed``) of ``config.eval.max_examples``."""
    source = data.create_source(config.dataset, split)
    limit = config.eval.max_examples
    if limit is not None and limit < len(source):
        indices = np.random.default_rng(config.seed).choice(len(source), limit, replace=False)
        source = _Subset(source, np.sort(indices))
    iterator = data.create_iterator(
        source,
        config.dataset,
        global_batch_size=config.eval.batch_size,
        seed=config.seed,
        train=False,
        num_epochs=1,
        process_index=0,
        process_count=1,
    )
    images, labels = [], []
    for batch in iterator:
        mask = np.asarray(batch.get("mask", np.ones(len(batch["label"]), bool)))
        images.append(np.asarray(batch["image"])[mask])
        labels.append(np.asarray(batch["label"])[mask])
    return np.concatenate(images), np.concatenate(labels)


@functools.cache
def _inference_apply(model: nn.Module) -> Callable:
    """``(variables, images) -> embeddings`` in inference mode, one object per model, so
    that ``Partial(fn, variables)`` traces the variables (rather than baking them into
    the program as constants) and every evaluation reuses the compiled extraction."""
    return functools.partial(model.apply, train=False)


def has_closed_set(config: ml_collections.ConfigDict) -> bool:
    """Whether the source has the ``eval.test_split`` and ``eval.open_split`` splits
    (an InsightFace folder has only "train": it is evaluated on its ``.bin`` targets)."""
    splits = data.sources.get(config.dataset.name).splits
    return config.eval.test_split in splits and config.eval.open_split in splits


def val_target_paths(config: ml_collections.ConfigDict) -> dict[str, epath.Path]:
    """``{name: <dir>/<name>.bin}`` of ``config.eval.val_targets`` (entries may also be
    comma-separated lists), ``<dir>`` being ``config.eval.val_dir`` or else the dataset
    folder ``config.dataset.path``.

    Raises:
      ConfigError: targets are set but no folder is known.
      FileNotFoundError: a ``.bin`` is missing (every missing file is named).
    """
    names = [
        name.strip()
        for entry in config.eval.get("val_targets", ())
        for name in str(entry).split(",")
        if name.strip()
    ]
    if not names:
        return {}
    directory = config.eval.get("val_dir") or config.dataset.get("path")
    if not directory:
        raise errors.ConfigError(
            f"config.eval.val_targets={tuple(names)} needs config.eval.val_dir (or "
            "config.dataset.path) to name the folder holding their .bin files"
        )
    paths = {name: epath.Path(directory) / f"{name}.bin" for name in names}
    missing = [str(path) for path in paths.values() if not path.exists()]
    if missing:
        present = sorted(p.name for p in epath.Path(directory).glob("*.bin"))
        raise FileNotFoundError(
            f"verification target(s) not found: {', '.join(missing)} (config.eval.val_targets="
            f"{tuple(names)}; .bin files in {directory}: {', '.join(present) or 'none'}). "
            "Set config.eval.val_dir, or drop them from config.eval.val_targets."
        )
    return paths


def load_eval_data(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The evaluation sets.

    ``"test"`` (training classes) and ``"open"`` (held-out ones) when the source has
    those splits (``has_closed_set``); ``"targets"``: ``{name: data.PairSet}`` of the
    ``.bin`` verification targets (``val_target_paths``), decoded at
    ``config.dataset.image_size``. Missing target files fail here, at the start of a
    run, not at its first evaluation.
    """
    paths = val_target_paths(config)
    eval_data = {}
    if has_closed_set(config):
        eval_data["test"] = load_split(config, config.eval.test_split)
        eval_data["open"] = load_split(config, config.eval.open_split)
    if paths:
        eval_data["targets"] = {
            name: data.read_verification_bin(
                path, image_size=config.dataset.image_size, channels=config.dataset.channels
            )
            for name, path in paths.items()
        }
    return eval_data


def evaluation_model(config: ml_collections.ConfigDict) -> nn.Module:
    """The training backbone in float32, as arcface_torch evaluates (outside autocast):
    every evaluation (closed and open set, the verification targets) embeds with it."""
    float32 = ml_collections.ConfigDict(config.to_dict())
    float32.half_precision = False
    float32.sync_batch_norm = False  # inference uses the running statistics
    return run_state.training_model(float32)


def evaluate_targets(
    config: ml_collections.ConfigDict,
    variables: Mapping[str, Any],
    targets: Mapping[str, data.PairSet],
) -> dict[str, float]:
    """``<name>_accuracy``, ``_accuracy_std``, ``_xnorm``, ``_val``, ``_far`` of each
    verification target (``evaluation.evaluate_pair_set``: flip TTA, 10-fold protocol in
    ``config.eval.threshold`` mode, float32 backbone)."""
    embed_fn = Partial(_inference_apply(evaluation_model(config)), variables)
    preprocess = functools.partial(data.normalize, normalization=config.dataset.normalization)
    metrics = {}
    for name, pairs in targets.items():
        report = evaluation.evaluate_pair_set(
            embed_fn,
            pairs.images,
            pairs.issame,
            preprocess=preprocess,
            n_folds=config.eval.n_folds,
            threshold=config.eval.threshold,
            batch_size=config.eval.batch_size,
        )
        metrics |= {f"{name}_{key}": report[key] for key in TARGET_KEYS}
    return metrics


# The numbers logged per verification target (and ``<name>_best``, by the loop).
TARGET_KEYS = ("accuracy", "accuracy_std", "xnorm", "val", "far")


def evaluate(
    config: ml_collections.ConfigDict,
    state: run_state.TrainState,
    eval_data: Mapping[str, Any],
    *,
    workdir: epath.PathLike | None,
    step: int,
) -> dict[str, float]:
    """Closed-set accuracy, open-set verification, geometry and the verification targets.

    With ``eval_data["test"]`` and ``["open"]``: ``evaluation.evaluate_run`` on the
    training classes and held-out identities. With ``eval_data["targets"]``: each
    ``.bin`` set as arcface_torch's verification callback (``evaluate_targets``). It
    runs on every process (each on its local devices, from a host copy of the
    variables); process 0 writes the figures and ``<workdir>/eval/step_<step>.json``.
    Closed-set accuracy uses the classifier (cosine for the normalized losses), or
    nearest class centres for the triplet loss. Every embedding comes from the float32
    ``evaluation_model``.
    """
    host = multihost_utils.process_allgather(
        {"params": state.params, "batch_stats": state.batch_stats}, tiled=True
    )
    variables = {"params": host["params"]["backbone"], "batch_stats": host["batch_stats"]}
    write = workdir is not None and jax.process_index() == 0
    metrics = {}
    if "test" in eval_data:
        head, classifier = host["params"]["head"], None
        if objectives.has_classifier(config.loss):
            classifier = np.asarray(objectives.classifier_weights(config.loss, head))
        (test_images, test_labels), (open_images, open_labels) = (
            eval_data["test"],
            eval_data["open"],
        )
        metrics |= evaluation.evaluate_run(
            Partial(_inference_apply(evaluation_model(config)), variables),
            test_images=test_images,
            test_labels=test_labels,
            open_images=open_images,
            open_labels=open_labels,
            weights=classifier,
            workdir=str(workdir) if write else None,
            step=step,
            seed=config.seed,
            plot=config.eval.plot,
            num_pairs=config.eval.num_pairs,
            n_folds=config.eval.n_folds,
            flip=config.eval.flip,
            batch_size=config.eval.batch_size,
        )
    if eval_data.get("targets"):
        metrics |= evaluate_targets(config, variables, eval_data["targets"])
    if write:
        eval_dir = epath.Path(workdir) / "eval"
        eval_dir.mkdir(parents=True, exist_ok=True)
        (eval_dir / f"step_{step}.json").write_text(json.dumps(metrics, indent=2), encoding="utf-8")
    return metrics


def previous_best(workdir: epath.Path, names: Sequence[str], *, up_to: int) -> dict[str, float]:
    """The best accuracy of each target logged in ``metrics.jsonl`` up to step ``up_to``
    (a resumed run continues arcface_torch's "Accuracy-Highest"; it starts at 0)."""
    best = dict.fromkeys(names, 0.0)
    path = workdir / "metrics.jsonl"
    if not names or not path.exists():
        return best
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line cut by a kill
            continue
        if record.get("split") != "eval" or record.get("step", 0) > up_to:
            continue
        for name in names:
            best[name] = max(best[name], record.get(f"{name}_accuracy", 0.0))
    return best


def update_best(metrics: dict[str, float], best: dict[str, float]) -> None:
    """Adds ``<name>_best`` to ``metrics``, the highest ``<name>_accuracy`` so far."""
    for name in best:
        best[name] = max(best[name], metrics[f"{name}_accuracy"])
        metrics[f"{name}_best"] = best[name]
