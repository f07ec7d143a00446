"""The experiment runners end to end at toy sizes, and their helpers."""

import csv
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from experiments import (
    common,
    face_recipe_synthetic,
    lambda_ablation,
    margin_sweeps,
    mnist_features,
    synthetic_openset,
)
from faceloss_jax import data

pytestmark = pytest.mark.slow
ROOT = pathlib.Path(__file__).resolve().parent.parent

# Small evaluation sets and batches: a run costs its compilation and little else.
TINY = [
    "--steps=2",
    "--set=batch_size=16",
    "--set=eval.max_examples=64",
    "--set=eval.num_pairs=100",
    "--set=eval.n_folds=2",
]


def _read_csv(path: str) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _check_outputs(out: str, *, settings: list[str]) -> list[dict[str, str]]:
    """The CSV has one row per setting with metrics in range, the Markdown names the
    command, the PNG exists and is small."""
    rows = _read_csv(f"{out}.csv")
    assert [r["setting"] for r in rows] == settings
    for row in rows:
        for key in ("closed_set_accuracy", "verification_accuracy", "auc"):
            assert 0.0 <= float(row[key]) <= 1.0, (key, row[key])
        assert float(row["train_seconds"]) > 0
    with open(f"{out}.md", encoding="utf-8") as f:
        markdown = f.read()
    assert f"--out={out}" in markdown and "| setting |" in markdown
    assert 0 < os.path.getsize(f"{out}.png") < 300_000
    return rows


def test_mnist_features(tmp_path):
    out = str(tmp_path / "mnist")
    mnist_features.main(
        [*TINY, "--losses=arcface,triplet", f"--out={out}", f"--runs={tmp_path / 'runs'}"]
    )
    _check_outputs(out, settings=["arcface", "triplet"])


def test_lambda_ablation(tmp_path):
    out = str(tmp_path / "lambda")
    lambda_ablation.main(
        [*TINY, "--losses=sphereface", f"--out={out}", f"--runs={tmp_path / 'runs'}"]
    )
    _check_outputs(out, settings=["sphereface annealed λ", "sphereface λ = 0"])


def test_margin_sweep_keeps_integer_margins(tmp_path):
    out = str(tmp_path / "sweep")
    margin_sweeps.main(
        [*TINY, "--loss=sphereface", "--values=1,2", f"--out={out}", f"--runs={tmp_path / 'runs'}"]
    )
    rows = _check_outputs(out, settings=["sphereface margin=1", "sphereface margin=2"])
    assert [r["margin"] for r in rows] == ["1", "2"]


def test_synthetic_openset(tmp_path):
    out = str(tmp_path / "synthetic")
    synthetic_openset.main(
        [
            *TINY,
            "--losses=cosface",
            "--seeds=0",
            "--set=dataset.image_size=16",
            "--set=dataset.num_identities=8",
            "--set=dataset.held_out_identities=4",
            "--set=dataset.images_per_identity=4",
            "--set=dataset.test_images_per_identity=2",
            "--set=model.embedding_dim=8",
            f"--out={out}",
            f"--runs={tmp_path / 'runs'}",
        ]
    )
    _check_outputs(out, settings=["cosface"])


def test_face_recipe_synthetic(tmp_path):
    """The recordio path with the face recipe: a tiny folder written where the runner
    looks for it, LeNets++ for a quick compilation (the unclipped rows differ only in
    their config, checked below)."""
    runs = tmp_path / "runs"
    data.write_insightface_folder(
        runs / "folder",
        num_identities=8,
        images_per_identity=4,
        held_out_identities=4,
        num_pairs=40,
        image_size=16,
    )
    out = str(tmp_path / "face")
    face_recipe_synthetic.main(
        [
            "--steps=2",
            "--seeds=0",
            "--losses=arcface",
            "--no_ablation",
            "--set=batch_size=8",
            "--set=eval.n_folds=2",
            "--set=eval.batch_size=40",
            "--set=model.name=lenet_pp",
            "--set=model.embedding_dim=8",
            f"--out={out}",
            f"--runs={runs}",
        ]
    )
    rows = _read_csv(f"{out}.csv")
    assert [r["setting"] for r in rows] == ["arcface"]
    for row in rows:
        for target in face_recipe_synthetic.TARGETS:
            assert 0.0 <= float(row[f"{target}_accuracy"]) <= 1.0
    configs = face_recipe_synthetic.settings(
        ("arcface", "softmax"), str(runs / "folder"), ablation=True
    )
    assert [c.name for c in configs] == ["arcface", "softmax", "arcface, no clip"]
    assert [c.config.optimizer.grad_clip_norm for c in configs] == [5.0, 5.0, None]
    assert "lfw_accuracy" in open(f"{out}.md", encoding="utf-8").read()


def test_margin_sweep_rejects_unknown_parameter():
    with pytest.raises(KeyError, match="no loss.radius"):
        margin_sweeps.settings("arcface", "radius", (0.1,))


def test_override_rejects_unknown_key():
    config = common.experiment_config("arcface")
    with pytest.raises(KeyError, match="margn"):
        common.override(config, {"loss.margn": 0.3})
    assert common.override(config, {"loss.margin": 0.3}).loss.margin == 0.3
    assert config.loss.margin != 0.3  # the original is untouched


def test_lambda_ablation_turns_annealing_off():
    annealed, fixed = lambda_ablation.settings(("lsoftmax",))
    assert annealed.config.loss.lambda_base > fixed.config.loss.lambda_base == 0.0
    assert fixed.config.loss.lambda_min == 0.0


def test_synthetic_lambda_reaches_minimum_halfway():
    (setting,) = synthetic_openset.settings(("sphereface",), steps=100)
    loss = setting.config.loss
    value = loss.lambda_base * (1 + loss.lambda_gamma * 50) ** -loss.lambda_power
    # float64: γ from a p-th root, then the p-th power back: a few u, times p (the power's
    # condition number), ≈ 1e-15; rtol 1e-12.
    np.testing.assert_allclose(value, loss.lambda_min, rtol=1e-12)


def test_feature_grid_plots_2d_and_3d_panels_and_rejects_others(tmp_path):
    labels = np.arange(10) % 3
    panels = [("a", np.zeros((10, 2)), labels), ("b", np.ones((10, 3)), labels)]
    path = common.plot_feature_grid(panels, str(tmp_path / "grid.png"))
    assert os.path.getsize(path) > 0
    with pytest.raises(ValueError, match="2-D or 3-D features; got dimensions \\[2, 3, 4\\]"):
        common.plot_feature_grid(
            [*panels, ("c", np.ones((10, 4)), labels)], str(tmp_path / "bad.png")
        )


def test_set_flag_parses_values():
    args = common.parser("x", out="o").parse_args(
        ["--set=eval.num_pairs=600", "--set=model.name=iresnet18", "--seeds=0,1"]
    )
    assert dict(args.set) == {"eval.num_pairs": 600, "model.name": "iresnet18"}
    assert args.seeds == (0, 1)


def test_runs_follow_out_unless_given():
    """Two outputs of one runner never share (and overwrite) run directories."""
    parser = common.parser("x", out="experiments/results/o")
    args = common.parse_args(parser, ["--out=results/other"], module="m")
    assert args.runs == "/tmp/faceloss_experiments/other"
    assert common.parse_args(parser, ["--runs=/r"], module="m").runs == "/r"


def test_bench_train_documented_command(tmp_path):
    """`python -m experiments.bench_train --models=lenet_pp --lenet_batch=128` (its
    docstring's command) at 2 steps: JAX's and PyTorch's rates, their ratio the quotient."""
    json_path = tmp_path / "bench.json"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "experiments.bench_train",
            "--models=lenet_pp",
            "--lenet_batch=128",
            "--steps=2",
            "--repeats=1",
            f"--json={json_path}",
        ],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    result = json.loads(json_path.read_text(encoding="utf-8"))
    jax_rate, torch_rate = (
        result["lenet_pp_softmax"]["steps_per_s"],
        result["torch_lenet_pp_softmax"]["steps_per_s"],
    )
    assert jax_rate > 0 and torch_rate > 0
    assert result["jax_over_torch_steps_per_s"] == pytest.approx(jax_rate / torch_rate, abs=0.005)
