"""The loss-ranking runner end to end at toy sizes: 2 losses, 1 seed, a SIGKILL in the
middle of the first run, the resume, a call that trains nothing, and the unique-image
scoring against the training loop's callback. (That a resumed run equals an uninterrupted
one is the trainer's guarantee, tested in tests/test_train.py.)"""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from experiments import loss_ranking
from faceloss_jax import data
from faceloss_jax.train_lib import periodic_eval, run_state

pytestmark = pytest.mark.slow

ROOT = pathlib.Path(__file__).resolve().parents[1]
TINY_BENCHMARK = {
    "num_identities": 16,
    "held_out_identities": 8,
    "num_pairs": 32,
    "n_folds": 2,
    "image_size": 12,
}
TINY_RUN = {
    "batch_size": 8,
    "checkpoint_every_steps": 2,
    "eval.n_folds": 2,
    "eval.batch_size": 64,
    "model.name": "lenet_pp",  # compiles in seconds; the plumbing is the same
    "model.embedding_dim": 8,
}


def _argv(tmp_path: pathlib.Path, losses: str, runs: str) -> list[str]:
    return [
        f"--losses={losses}",
        "--seeds=0",
        "--steps=12",
        *(f"--benchmark={k}={v}" for k, v in TINY_BENCHMARK.items()),
        *(f"--set={k}={v}" for k, v in TINY_RUN.items()),
        f"--runs={tmp_path / runs}",
        f"--out={tmp_path / runs / 'out'}",
    ]


def _kill_at_first_checkpoint(argv: list[str], checkpoints: pathlib.Path) -> None:
    """Runs the runner in a subprocess and SIGKILLs it once ``checkpoints`` holds a step."""
    process = subprocess.Popen(
        [sys.executable, "-m", "experiments.loss_ranking", *argv],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    try:
        while not (checkpoints.exists() and any(p.name.isdigit() for p in checkpoints.iterdir())):
            assert process.poll() is None, "the runner ended before its first checkpoint"
            assert time.monotonic() < deadline, "no checkpoint within 120 s"
            time.sleep(0.05)
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()


def _runs(out: pathlib.Path) -> list[dict]:
    return [json.loads(line) for line in open(f"{out}_runs.jsonl", encoding="utf-8")]


def test_runner_resumes_after_sigkill_and_skips_finished_runs(tmp_path, capsys):
    argv = _argv(tmp_path, "softmax,cosface", "killed")
    _, _, planned = loss_ranking.plan(argv)
    first_workdir = pathlib.Path(planned[0][3])
    _kill_at_first_checkpoint(argv, first_workdir / "checkpoints")
    assert not (first_workdir / "result.json").exists()

    loss_ranking.main(argv)
    assert "Resumed from the checkpoint of step" in capsys.readouterr().out
    out = tmp_path / "killed" / "out"
    runs = _runs(out)
    assert [(r["setting"], r["seed"]) for r in runs] == [("softmax", 0), ("cosface", 0)]
    for run, loss in zip(runs, ("softmax", "cosface")):
        assert run["config"]["num_train_steps"] == 12 and run["config"]["loss"]["name"] == loss
        for key in loss_ranking.METRICS:
            assert np.isfinite(run["metrics"][key]), key
    assert "| softmax | 12 | 1 |" in open(f"{out}.md", encoding="utf-8").read()
    assert os.path.getsize(f"{out}.png") > 0 and os.path.getsize(f"{out}_curves.png") > 0

    # Finished runs are read back, not retrained.
    loss_ranking.main(argv)
    assert "[" not in capsys.readouterr().out  # a trained run prints "[<workdir>] …"

    # Scoring each distinct image once reports what the training loop's callback does.
    _, _, config, workdir, folder = planned[0]
    _, state = run_state.restore_run(config, workdir)
    variables = {"params": state.params["backbone"], "batch_stats": state.batch_stats}
    ours = loss_ranking.score_targets(config, variables, folder)
    size = TINY_BENCHMARK["image_size"]
    targets = {
        name: data.read_verification_bin(f"{folder}/{name}.bin", image_size=size)
        for name in loss_ranking.TARGETS
    }
    theirs = periodic_eval.evaluate_targets(config, variables, targets)
    for key in ours:
        np.testing.assert_allclose(ours[key], theirs[key], rtol=1e-6, err_msg=key)
