"""Where the numbers of a run go: TensorBoard, ``metrics.jsonl`` and a progress bar.

Only process 0 writes; the other processes of a multi-host run get a writer that
does nothing, so the training loop needs no ``if process_index() == 0``.
"""

import json
import time
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
import tensorboardX
import tqdm
from etils import epath


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
            self._tensorboard = tensorboardX.SummaryWriter(str(self._workdir / "tensorboard"))

    def write_scalars(self, step: int, split: str, scalars: Mapping[str, Any]) -> None:
        """Logs ``scalars`` (numbers or 0-d arrays) of ``split`` ("train", "eval") at ``step``."""
        if not self._enabled:
            return
        values = {name: float(np.asarray(value)) for name, value in scalars.items()}
        for name, value in values.items():
            self._tensorboard.add_scalar(f"{split}/{name}", value, step)
        with (self._workdir / "metrics.jsonl").open("a") as f:
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

    def close(self) -> None:
        self._bar.close()


def format_report(metrics: Mapping[str, float]) -> str:
    """The headline numbers of a run, one per line."""
    lines = [
        f"closed-set accuracy:   {metrics['closed_set_accuracy']:.4f}",
        f"verification accuracy: {metrics['verification_accuracy']:.4f} "
        f"± {metrics['verification_std']:.4f} (10-fold, open set)",
        f"AUC: {metrics['auc']:.4f}   EER: {metrics['eer']:.4f}   "
        f"TAR@FAR=1e-3: {metrics['val_at_far_1e-3']:.4f}",
        f"L_Intra: {metrics['l_intra']:.4f}   L_Inter: {metrics['l_inter']:.4f}",
    ]
    return "\n".join(lines)
