"""The README's command end to end: LeNets++ on the embedded MNIST, then re-evaluation."""

import pathlib
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

REPO = pathlib.Path(__file__).resolve().parents[1]


def _run(module: str, *flags: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", module, *flags],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def _report(stdout: str) -> list[str]:
    """The evaluation block: from the closed-set line up to the 'Results in' footer."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("closed-set accuracy:"))
    end = next((i for i, line in enumerate(lines) if line.startswith("Results in")), len(lines))
    return lines[start:end]


def test_main_trains_mnist_then_evaluate_restores_the_same_model(tmp_path):
    stdout = _run(
        "faceloss_jax.main",
        "--config=configs/arcface.py",
        f"--workdir={tmp_path}",
        "--config.num_train_steps=2",
        "--config.optimizer.warmup_steps=0",
        "--config.batch_size=8",
        "--config.log_every_steps=1",
        "--config.eval.max_examples=64",
        "--config.eval.num_pairs=100",
    )
    assert stdout.startswith("plan: 2,800 images of 7 identities (mnist)")
    report = _report(stdout)
    assert report[0].startswith("closed-set accuracy:")
    assert report[1].startswith("verification accuracy:")
    assert (tmp_path / "eval" / "step_2.json").exists()
    assert (tmp_path / "eval" / "features_3d_step2.png").exists()

    again = _run("faceloss_jax.evaluate", f"--workdir={tmp_path}")
    assert again.splitlines()[0] == "step 2"
    assert _report(again) == report
