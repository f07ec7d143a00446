"""Backbone forward values pinned to stored outputs (fault 9 of issue 18).

Parameter counts and shapes cannot see a reordered or missing layer: swapping BatchNorm
and PReLU in iResNet's residual unit, or dropping its shortcut, keeps both. Each backbone
here is run in inference mode on a small input with deterministic, non-trivial variables
(``backbone_reference.make_variables``: random BN statistics, scales, biases and PReLU
slopes) and compared with ``tests/data/backbone_golden.npz``, the output of an independent
float64 NumPy forward pass written from the papers and InsightFace's code
(``tests/backbone_reference.py``; regenerate with ``tests/data/make_backbone_golden.py``,
which refuses to write unless Flax and NumPy agree).

Input sizes reduce every backbone to a 1×1 map before its flatten (16×16 for iResNet,
8×8 for LeNets++; MobileFaceNet's global depthwise conv covers its 2×2 map at 32×32), so
the pins do not depend on the flatten order.
"""

from __future__ import annotations

import pathlib

import backbone_reference
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from faceloss_jax import models

GOLDEN = pathlib.Path(__file__).resolve().parent / "data" / "backbone_golden.npz"
# name -> input shape (B, H, W, C)
BACKBONES = {
    "iresnet18": (2, 16, 16, 3),
    "mobilefacenet": (2, 32, 32, 3),
    "lenet_pp": (2, 8, 8, 1),
}


def setup(name: str):
    """The backbone (8-d embeddings), its deterministic variables and input images."""
    model = models.create_model(ml_collections.ConfigDict({"name": name, "embedding_dim": 8}))
    shape = BACKBONES[name]
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(shape), train=False))
    variables = backbone_reference.make_variables(dict(shapes))
    images = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    return model, variables, images


def rounding_bound(variables) -> float:
    """The relative error of a float32 forward pass against float64, Σ_layers √n·u.

    The body, FC and final BN compute in float32 whatever the inputs, so the comparison
    cannot be float64: each layer's sums of n = fan-in terms err by ~√n·u relative
    (Higham & Mary's probabilistic bound; the worst case n·u adds to 2e-3 over
    iResNet-18), added over the layers: 4.3e-5 (iResNet-18), 2.8e-5 (MobileFaceNet),
    1.2e-5 (LeNets++) of the largest output; measured ≤ 1.7e-6. A reordered or dropped
    layer moves the output by O(1).
    """
    kernels = [
        leaf
        for path, leaf in jax.tree_util.tree_leaves_with_path(variables["params"])
        if "kernel" in jax.tree_util.keystr(path)
    ]
    return float(sum(np.sqrt(np.prod(k.shape[:-1])) for k in kernels) * 2.0**-24)


@pytest.mark.parametrize("name", list(BACKBONES))
def test_backbone_forward_matches_stored_reference(name):
    """Fault 9: every backbone's inference-mode output equals the stored float64 NumPy
    reference, to float32 precision (a reordered layer moves it by O(1))."""
    golden = np.load(GOLDEN)
    model, variables, images = setup(name)
    np.testing.assert_array_equal(images, golden[f"{name}/images"])
    got = np.asarray(jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, images))
    want = golden[f"{name}/embeddings"]
    assert got.shape == want.shape == (BACKBONES[name][0], 8)
    tol = rounding_bound(variables)
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol * np.abs(want).max())
