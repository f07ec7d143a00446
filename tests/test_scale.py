"""Every layout of every angular loss equals the dense loss, on 8 host CPU devices.

Layouts: data-parallel (``axis_name``), class-sharded (``class_axis_name``),
class-sharded + chunked, data-parallel + class-sharded on one axis (the Partial FC
layout), Partial FC sampling at rate 1, each under ``jax.shard_map`` with the gradient
taken outside and under ``jax.pmap`` with the gradient taken inside the step.
"""

import doctest

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import checkerboard, needs_devices
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from faceloss_jax import losses
from faceloss_jax.losses import partial_fc

N = 8
pytestmark = needs_devices(8)
B, D, C = 16, 6, 40  # C / N = 5 classes per device
LOSSES = [
    ("softmax_cross_entropy", {}),
    ("normface", {"scale": 16.0}),
    ("cosface", {"scale": 30.0, "margin": 0.35}),
    ("arcface", {"scale": 30.0, "margin": 0.5}),
    ("combined_margin", {"scale": 30.0, "m1": 0.9, "m2": 0.3, "m3": 0.2}),
    ("large_margin_softmax", {"margin": 2, "lambda_": 1.0}),
    ("sphereface", {"margin": 4}),
]
IDS = [name for name, _ in LOSSES]
# The layouts are compared in float64: each adds the dense loss's terms in another order
# (per-device blocks, chunks, psum), so they agree to float64 rounding, n·u·Σ|terms| with
# n ≤ C = 40 terms, u = 2⁻⁵³, amplified by the logits' size (s = 30; SphereFace's
# ‖x‖‖w‖ψ(θ) ≲ 200): ≲ 1e-12 of the largest gradient. 1e-10 leaves 100× and is 1000×
# below a layout that rounds anything through float32 (~1e-7).
TOL = 1e-10


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(B, D)).astype(np.float32)
    w = rng.normal(size=(D, C)).astype(np.float32)
    y = rng.integers(0, C, B).astype(np.int32)
    y[:3] = [0, C - 1, 7]  # first and last device's classes
    return x, w, y


@pytest.fixture
def data64(data, x64):
    """``data`` in float64 (the float32 values exactly), float64 enabled for the test."""
    return tuple(a.astype(np.float64) if a.dtype.kind == "f" else a for a in data)


@pytest.fixture(scope="module")
def mesh():
    return Mesh(np.array(jax.devices()), ("d",))


def _dense(name, hp, x, w, y):
    """Reference: the dense loss summed, and its gradients w.r.t. x and w."""
    return jax.value_and_grad(lambda x, w: getattr(losses, name)(x, w, y, **hp).sum(), (0, 1))(x, w)


def _assert_close(got, want):
    (v, (gx, gw)), (v0, (gx0, gw0)) = got, want
    assert gx.dtype == gw.dtype == np.float64
    # A gradient element that cancels to ~0 still carries its terms' rounding: relative
    # to the largest gradient element.
    scale = max(float(np.abs(gx0).max()), float(np.abs(gw0).max()))
    np.testing.assert_allclose(v, v0, rtol=TOL)
    np.testing.assert_allclose(gx, gx0, rtol=TOL, atol=TOL * scale)
    np.testing.assert_allclose(gw, gw0, rtol=TOL, atol=TOL * scale)


LAYOUTS = {
    # name: (in_specs of x, w, y; loss kwargs; whether the loss output is per-device)
    "data_parallel": ((P("d"), P(), P("d")), {"axis_name": "d"}),
    "class_sharded": ((P(), P(None, "d"), P()), {"class_axis_name": "d"}),
    "class_sharded_chunked": ((P(), P(None, "d"), P()), {"class_axis_name": "d", "chunk_size": 2}),
    "partial_fc": (
        (P("d"), P(None, "d"), P("d")),
        {"axis_name": "d", "class_axis_name": "d", "chunk_size": 3},
    ),
}

# Half of the loss × layout cells run in the fast tier, every loss and every layout in it.
LOSS_LAYOUTS = checkerboard(
    [pytest.param(name, hp, id=name) for name, hp in LOSSES],
    [pytest.param(layout, id=layout) for layout in LAYOUTS],
)


@pytest.mark.parametrize("name,hp,layout", LOSS_LAYOUTS)
def test_shard_map_equals_dense(data64, mesh, name, hp, layout):
    x, w, y = data64
    in_specs, kwargs = LAYOUTS[layout]
    batch_sharded = in_specs[0] == P("d")

    def local(x, w, y):
        return getattr(losses, name)(x, w, y, **kwargs, **hp)

    sharded = jax.shard_map(
        local, mesh=mesh, in_specs=in_specs, out_specs=P("d") if batch_sharded else P()
    )
    got = jax.jit(jax.value_and_grad(lambda x, w: sharded(x, w, y).sum(), (0, 1)))(x, w)
    _assert_close(got, _dense(name, hp, x, w, y))


@pytest.mark.parametrize("name,hp,layout", LOSS_LAYOUTS)
def test_pmap_in_step_gradient_equals_dense(data64, name, hp, layout):
    """pmap: each device differentiates its own loss; replicated grads are pmean'd."""
    x, w, y = data64
    in_specs, kwargs = LAYOUTS[layout]
    batch_sharded, class_sharded = in_specs[0] == P("d"), in_specs[1] == P(None, "d")

    def step(x, w, y):
        value, (gx, gw) = jax.value_and_grad(
            lambda x, w: getattr(losses, name)(x, w, y, **kwargs, **hp).sum(), (0, 1)
        )(x, w)
        if batch_sharded:  # each device holds a part of the loss: sum the parts
            value = jax.lax.psum(value, "d")
        else:  # x is replicated: average its gradient like any replicated input
            gx = jax.lax.pmean(gx, "d")
        if not class_sharded:  # replicated W, per-device losses: sum of the parts
            gw = jax.lax.psum(gw, "d")
        return value, gx, gw

    xs = x.reshape(N, B // N, D) if batch_sharded else x
    ys = y.reshape(N, B // N) if batch_sharded else y
    ws = w.reshape(D, N, C // N) if class_sharded else w
    value, gx, gw = jax.pmap(
        step,
        axis_name="d",
        in_axes=(
            0 if batch_sharded else None,
            1 if class_sharded else None,
            0 if batch_sharded else None,
        ),
        out_axes=(0, 0, 1 if class_sharded else 0),
    )(xs, ws, ys)
    gx = gx.reshape(B, D) if batch_sharded else gx[0]
    gw = gw.reshape(D, C) if class_sharded else gw[0]
    _assert_close((value[0], (gx, gw)), _dense(name, hp, x, w, y))


@pytest.mark.parametrize("name,hp", LOSSES, ids=IDS)
def test_sampling_rate_one_equals_dense(data64, mesh, name, hp):
    x, w, y = data64
    key = jax.random.PRNGKey(3)

    def sampled(x, w):
        classes, y_s = losses.sample_classes(key, y, C, sample_rate=1.0)
        return getattr(losses, name)(x, w[:, classes], y_s, **hp).sum()

    _assert_close(jax.jit(jax.value_and_grad(sampled, (0, 1)))(x, w), _dense(name, hp, x, w, y))

    def local(x, w, y):
        classes, y_s = losses.sample_classes(key, y, C // N, sample_rate=1.0, class_axis_name="d")
        return getattr(losses, name)(x, w[:, classes], y_s, class_axis_name="d", **hp)

    sharded = jax.shard_map(local, mesh=mesh, in_specs=(P(), P(None, "d"), P()), out_specs=P())
    got = jax.jit(jax.value_and_grad(lambda x, w: sharded(x, w, y).sum(), (0, 1)))(x, w)
    _assert_close(got, _dense(name, hp, x, w, y))


@pytest.mark.slow  # 10-20 s of a loaded 2-core run (--durations, 2026-12-05)
def test_sampling_keeps_positives_and_fixed_shape():
    key = jax.random.PRNGKey(0)
    labels = jnp.array([3, 3, 999, 0, 512, 77])
    for rate in (0.1, 0.3):
        classes, sampled = jax.jit(
            lambda k, y: losses.sample_classes(k, y, 1000, sample_rate=rate)
        )(key, labels)
        assert classes.shape == (losses.num_sampled(1000, rate, 6),)
        assert np.all(np.diff(classes) > 0), "sorted and distinct"
        np.testing.assert_array_equal(classes[sampled], labels)
        other, _ = losses.sample_classes(jax.random.PRNGKey(1), labels, 1000, sample_rate=rate)
        assert not np.array_equal(classes, other), "the key decides the negatives"
    # The sampled loss is the dense loss on the sampled columns.
    x = jax.random.normal(key, (6, 4))
    w = jax.random.normal(key, (4, 1000))
    classes, sampled = losses.sample_classes(key, labels, 1000, sample_rate=0.2)
    np.testing.assert_allclose(
        losses.cosface(x, w[:, classes], sampled),
        losses.cosface(x, jnp.take(w, classes, axis=1), sampled),
    )
    # A batch larger than r·C still gets all of its positives.
    assert losses.num_sampled(10, 0.1, 6) == 6


@pytest.mark.slow  # 10-20 s of a loaded 2-core run (--durations, 2026-12-05)
def test_bfloat16_sharded_chunked_is_finite(data, mesh):
    x, w, y = data
    xb, wb = jnp.asarray(x, jnp.bfloat16), jnp.asarray(w, jnp.bfloat16)
    sharded = jax.shard_map(
        lambda x, w, y: losses.arcface(x, w, y, class_axis_name="d", chunk_size=2),
        mesh=mesh,
        in_specs=(P(), P(None, "d"), P()),
        out_specs=P(),
    )
    value, grads = jax.jit(jax.value_and_grad(lambda x, w: sharded(x, w, y).sum(), (0, 1)))(xb, wb)
    assert value.dtype == jnp.float32 and np.isfinite(float(value))
    assert all(np.all(np.isfinite(np.asarray(g, np.float32))) for g in grads)
    # bfloat16 (u_b = 2⁻⁹) against float32 inputs: x and w, then x̂ and ŵ, are rounded to
    # it, so a cosine is ≤ 4·u_b off; × s = 64 in every logit, and a loss moves
    # ≤ 2·64·4·u_b = 1.0, ≤ 2.7e-2 of each example's (≥ 38 here); measured 1.6e-4.
    np.testing.assert_allclose(float(value), float(losses.arcface(x, w, y).sum()), rtol=3e-2)


def test_errors(data, mesh):
    x, w, y = data
    with pytest.raises(ValueError, match="cannot be sharded evenly over 8 devices"):
        losses.class_block_size(1001, 8)
    with pytest.raises(ValueError, match="axis name 'nope' is not bound"):
        jax.shard_map(
            lambda x, w, y: losses.arcface(x, w, y, class_axis_name="nope"),
            mesh=mesh,
            in_specs=(P(), P(None, "d"), P()),
            out_specs=P(),
        )(x, w, y)
    with pytest.raises(ValueError, match="axis name 'batch' is not bound"):
        losses.cosface(x, w, y, axis_name="batch")
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="chunk_size must be a positive int"):
            losses.normface(x, w, y, chunk_size=bad)
    with pytest.raises(ValueError, match="sample_rate must be in"):
        losses.sample_classes(jax.random.PRNGKey(0), y, C, sample_rate=0.0)


@pytest.mark.slow  # 10-20 s of a loaded 2-core run (--durations, 2026-12-05)
def test_docstring_examples_run():
    result = doctest.testmod(partial_fc)
    assert result.attempted > 0 and result.failed == 0
