"""Where the numbers of a run go: TensorBoard, ``metrics.jsonl`` and a progress bar.

Only process 0 writes; the other processes of a multi-host run get a writer that
does nothing, so the training loop needs no ``if process_index() == 0``.
"""

import json
import sys
import time
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
import tqdm
from etils import epath


def _import_tensorboardx():
    """tensorboardX, kept from importing PyTorch (seconds per process) where it is
    installed: it imports torch only to accept torch tensors, and only floats are logged
    here. ``sys.modules[name] = None`` makes ``import name`` raise ImportError."""
    if "tensorboardX" in sys.modules or "torch" in sys.modules:
        import tensorboardX  # noqa: PLC0415

        return tensorboardX
    sys.modules["torch"] = None
    try:
        import tensorboardX  # noqa: PLC0415
    finally:
        del sys.modules["torch"]
    return tensorboardX


class MetricWriter:
    """Writes scalars to TensorBoard (``<workdir>/tensorboard``) and one JSON object per
    call to ``<workdir>/metrics.jsonl`` (``{"step": N, "split": ..., name: value}``).

    Args:
      workdir: the run directory.
      enabled: whether this process writes (by default only process 0 does).
    """

    def __init__(self, workdir: epath.PathLike, *, enabled: bool | None = None):
        self._enabled = jax.process_index() == 0 if enabled is None else enabled
        self._workdir = epath.Path(workdir)
        self._tensorboard = None
        if self._enabled:
            self._workdir.mkdir(parents=True, exist_ok=True)
            tensorboardX = _import_tensorboardx()

            self._tensorboard = tensorboardX.SummaryWriter(str(self._workdir / "tensorboard"))

    def write_scalars(self, step: int, split: str, scalars: Mapping[str, Any]) -> None:
        """Logs ``scalars`` (numbers or 0-d arrays) of ``split`` ("train", "eval") at ``step``."""
        if not self._enabled:
            return
        values = {name: float(np.asarray(value)) for name, value in scalars.items()}
        for name, value in values.items():
            self._tensorboard.add_scalar(f"{split}/{name}", value, step)
        with (self._workdir / "metrics.jsonl").open("a", encoding="utf-8") as f:
            f.write(json.dumps({"step": step, "split": split, **values}) + "\n")
        self._tensorboard.flush()

    def close(self) -> None:
        if self._tensorboard is not None:
            self._tensorboard.close()


class ProgressBar:
    """A tqdm bar over the training steps with loss, steps/s, examples/s and ETA.

    Args:
      total: the number of training steps of the run.
      initial: the step the run starts (or resumes) from.
      batch_size: the global batch size, for the examples/s figure.
      enabled: whether to show the bar (by default on process 0 only).
    """

    def __init__(self, *, total: int, initial: int, batch_size: int, enabled: bool | None = None):
        enabled = jax.process_index() == 0 if enabled is None else enabled
        self._bar = tqdm.tqdm(
            total=total, initial=initial, disable=not enabled, unit="step", dynamic_ncols=True
        )
        self._batch_size = batch_size
        self._last = (initial, time.perf_counter())

    def update(self, step: int, loss: float) -> float:
        """Moves the bar to ``step`` and returns the steps/s since the last update."""
        last_step, last_time = self._last
        now = time.perf_counter()
        steps_per_second = (step - last_step) / max(now - last_time, 1e-9)
        self._last = (step, now)
        self._bar.set_postfix(
            loss=f"{loss:.4f}",
            steps_per_s=f"{steps_per_second:.2f}",
            examples_per_s=f"{steps_per_second * self._batch_size:.0f}",
            refresh=False,
        )
        self._bar.update(step - last_step)
        return steps_per_second

    def write(self, text: str) -> None:
        """Prints ``text`` above the bar (nothing when the bar is disabled or text empty)."""
        if text and not self._bar.disable:
            self._bar.write(text)

    def close(self) -> None:
        self._bar.close()


def format_targets(
    metrics: Mapping[str, float],
    best: Mapping[str, float],
    *,
    step: int | None = None,
    protocol: str = "insightface",
    n_folds: int = 10,
) -> str:
    """The verification targets of ``metrics`` (``best`` names them), as arcface_torch
    logs them, with the threshold mode: ``[lfw][2000]XNorm: 21.3  Accuracy-Flip:
    0.99533+-0.00350  Accuracy-Highest: 0.99600  (10-fold, insightface thresholds)``
    (also ``evaluate --bins``'s format)."""
    where = "" if step is None else f"[{step}]"
    return "\n".join(
        f"[{name}]{where}XNorm: {metrics[f'{name}_xnorm']:.6f}  Accuracy-Flip: "
        f"{metrics[f'{name}_accuracy']:.5f}+-{metrics[f'{name}_accuracy_std']:.5f}  "
        f"Accuracy-Highest: {metrics.get(f'{name}_best', best[name]):.5f}  "
        f"({n_folds}-fold, {protocol} thresholds)"
        for name in best
    )


def target_names(metrics: Mapping[str, float]) -> list[str]:
    """The verification targets in ``metrics``: the names of its ``<name>_xnorm`` keys."""
    return [key[: -len("_xnorm")] for key in metrics if key.endswith("_xnorm")]


def format_report(metrics: Mapping[str, float]) -> str:
    """The headline numbers of a run, one per line: the closed-set and open-set
    numbers when the run has them, and each verification target (10-fold accuracy ±
    std by InsightFace's protocol unless ``config.eval.threshold`` said otherwise)."""
    lines = []
    if "closed_set_accuracy" in metrics:
        lines += [
            f"closed-set accuracy:   {metrics['closed_set_accuracy']:.4f}",
            f"verification accuracy: {metrics['verification_accuracy']:.4f} "
            f"± {metrics['verification_std']:.4f} (10-fold, open set)",
            f"AUC: {metrics['auc']:.4f}   EER: {metrics['eer']:.4f}   "
            f"TAR@FAR=1e-3: {metrics['val_at_far_1e-3']:.4f}",
            f"L_Intra: {metrics['l_intra']:.4f}   L_Inter: {metrics['l_inter']:.4f}",
        ]
    for name in target_names(metrics):
        line = (
            f"{name}: accuracy {metrics[f'{name}_accuracy']:.4f} ± "
            f"{metrics[f'{name}_accuracy_std']:.4f} (10-fold, flip), XNorm "
            f"{metrics[f'{name}_xnorm']:.3f}, VAL {metrics[f'{name}_val']:.4f} @ FAR "
            f"{metrics[f'{name}_far']:.4f}"
        )
        if f"{name}_best" in metrics:
            line += f", best {metrics[f'{name}_best']:.4f}"
        lines.append(line)
    return "\n".join(lines)


def format_plan(
    config: Any, *, num_images: int, num_classes: int, num_devices: int, num_processes: int
) -> str:
    """The plan of a run, printed at its start: data, batch, steps and epochs, devices,
    precision, and the classifier's layout and memory per device.

    Args:
      config: the experiment config.
      num_images, num_classes: of the training source.
      num_devices, num_processes: of the run.
    """
    batch, steps = config.batch_size, config.num_train_steps
    accumulate = config.optimizer.grad_accum_steps
    per_epoch = max(1, num_images // batch)
    path = config.dataset.get("path")
    where = config.dataset.name + (f", {path}" if path else "")
    lines = [
        f"plan: {num_images:,} images of {num_classes:,} identities ({where})",
        f"  batch {batch:,} global = {batch // num_devices:,} per device × {num_devices} "
        f"device(s), {num_processes} process(es); {accumulate} micro-batch(es) per update",
        f"  {per_epoch:,} steps per epoch; {steps:,} steps ({steps / per_epoch:.2f} epochs), "
        f"{config.optimizer.warmup_steps:,} of warmup",
        f"  precision: {'bfloat16' if config.half_precision else 'float32'} backbone, "
        "float32 head, loss and master weights",
    ]
    if "sample_rate" in config.loss:
        sharded = config.loss.class_sharded
        columns = num_classes // num_devices if sharded else num_classes
        moments = {"sgd": 1, "adamw": 2}.get(config.optimizer.name, 0)
        size = config.model.embedding_dim * columns * 4 / 2**20
        lines.append(
            f"  head: W {config.model.embedding_dim} × {num_classes:,}, "
            f"{'split over the devices' if sharded else 'replicated'}, Partial FC rate "
            f"{config.loss.sample_rate}: {size:,.1f} MiB a device, "
            f"{size * (1 + moments):,.1f} MiB with the optimizer's {moments} moment(s)"
        )
    return "\n".join(lines)
