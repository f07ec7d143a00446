"""A backbone trained at another input size than 112 embeds, evaluates and converts at
its own size (``weights.Backbone.image_size``)."""

import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from faceloss_jax import data, embed, models, train, weights
from faceloss_jax.train_lib import cli

REPO = pathlib.Path(__file__).resolve().parents[1]
SIZE = 32


@pytest.fixture(scope="module")
def run_32(tmp_path_factory):
    """A one-step iResNet-18 run on 32×32 synthetic faces."""
    workdir = tmp_path_factory.mktemp("run32")
    config = cli.config_from_command_line(
        [
            "--config=configs/arcface.py:face",
            "--config.model.name=iresnet18",
            "--config.model.embedding_dim=16",
            f"--config.dataset.image_size={SIZE}",
            "--config.dataset.num_identities=8",
            "--config.dataset.held_out_identities=4",
            "--config.dataset.images_per_identity=2",
            "--config.dataset.test_images_per_identity=2",
            "--config.batch_size=8",
            "--config.num_train_steps=1",
            "--config.optimizer.warmup_steps=0",
            "--config.half_precision=False",
            "--config.eval.plot=False",
            "--config.eval.num_pairs=8",
            "--config.eval.n_folds=2",
        ]
    )
    train.train_and_evaluate(config, str(workdir))
    return workdir


@pytest.mark.slow  # a run (1 step, its evaluation) and the CLI: ~2.5 minutes on 2 cores
def test_embed_cli_on_a_run_trained_at_32(run_32, tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    for name, shape in (("crop.png", (SIZE, SIZE, 3)), ("photo.png", (50, 40, 3))):
        paths.append(tmp_path / name)
        Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8)).save(paths[-1])
    output = tmp_path / "emb.npy"
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    result = subprocess.run(
        [sys.executable, "-m", "faceloss_jax.embed", f"--workdir={run_32}", *map(str, paths)]
        + [f"--output={output}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "image 1 is 40×50, not an aligned 32×32 crop: resized" in result.stdout
    assert "cosine" in result.stdout
    # No absl/orbax INFO lines ("I1204 17:31:05.340 …") unless --verbosity asks for them.
    assert not [
        line for line in result.stderr.splitlines() if line[:1] == "I" and line[1:5].isdigit()
    ]
    backbone = weights.load_backbone(run_32)
    assert backbone.image_size == SIZE
    images = [np.asarray(Image.open(p).convert("RGB")) for p in paths]
    # Two float32 forwards (the CLI's process has other XLA flags, so other sum orders):
    # each layer's sums of n = fan-in terms err by ~√n·u (Higham & Mary's probabilistic
    # bound), added over the layers and the two sides, 2·Σ√n·u ≈ 1e-4 of the largest
    # element, which is ≤ 1 in a unit embedding. A wrong input size or crop is O(1) off.
    kernels = [
        leaf.shape
        for path, leaf in jax.tree_util.tree_leaves_with_path(backbone.variables["params"])
        if "kernel" in jax.tree_util.keystr(path)
    ]
    tol = 2 * sum(np.sqrt(np.prod(shape[:-1])) for shape in kernels) * 2.0**-24
    np.testing.assert_allclose(
        np.load(output), embed.embed_faces(backbone, images), rtol=tol, atol=tol
    )


def test_a_converted_backbone_keeps_its_size(tmp_path):
    model_config = {"name": "iresnet18", "embedding_dim": 16}
    shapes = jax.eval_shape(
        lambda: models.create_model(model_config).init(
            jax.random.key(0), jnp.zeros((1, SIZE, SIZE, 3)), train=False
        )
    )
    variables = jax.tree.map(lambda s: np.full(s.shape, 0.01, s.dtype), shapes)
    saved = weights.save_backbone(tmp_path / "b32", variables, model_config, image_size=SIZE)
    backbone = weights.load_backbone(saved)
    assert backbone.image_size == SIZE
    landmarks = np.tile(data.ARCFACE_REFERENCE, (2, 1, 1))
    faces = np.full((2, 112, 112, 3), 128, np.uint8)
    assert embed.embed_faces(backbone, faces, landmarks, flip=False).shape == (2, 16)
    # A backbone.json without image_size (older conversions): the model's 112.
    legacy = weights.save_backbone(tmp_path / "b112", variables, model_config)
    assert weights.load_backbone(legacy).image_size == 112
