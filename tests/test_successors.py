"""The successor losses against float64 NumPy references, at the edges, under transforms,
in every layout of the angular engine, and their state updates across devices."""

import dataclasses
import doctest
import functools
import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import reference_successors as ref
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P
from jax.test_util import check_grads

from faceloss_jax import losses
from faceloss_jax.losses import (
    adaptive_margins,
    adaptive_scale,
    circle,
    curriculum,
    subcenter,
    xbm,
)

KEY = jax.random.key(7)
STATS = losses.AdaFaceStats(mean=jnp.asarray(15.0), std=jnp.asarray(8.0))


def _margins(batch, margin, sigma):
    """The margins ElasticFace draws from KEY for a float64 batch."""
    return np.asarray(margin + sigma * jax.random.normal(KEY, (batch,), jnp.float64))


def _elastic_ref(kind, margin, plus):
    def reference(x, w, y, *, scale, sigma):
        m = _margins(len(y), margin, sigma)
        if plus:
            m = ref.elastic_plus_margins(m, ref.cosines(x, w)[np.arange(len(y)), y])
        return ref.elasticface(x, w, y, m, kind=kind, scale=scale)

    return reference


@dataclasses.dataclass(frozen=True)
class Case:
    """A loss: library call (x, w, y, **hp, **layout), its reference, its settings.

    layouts: "all" (margin_softmax: chunked, class-sharded, data-parallel), "chunk"
    (no class sharding) or "dense"; sub: K sub-centres (weights (d, C, K)) or 0;
    norm: the range of the embeddings' norms; check_x: whether finite differences
    in x match autodiff (False where the loss stops a gradient by design); variant:
    another setting of a loss listed before, checked against the reference only (the
    compiling tests run on the first setting; the easy-margin branches are the core
    losses').
    """

    id: str
    fn: Callable
    reference: Callable
    hp: dict
    layouts: str = "all"
    sub: int = 0
    norm: tuple = (0.5, 2.0)
    check_x: bool = True
    variant: bool = False


CASES = [
    Case(
        "subcenter",
        losses.subcenter_arcface,
        ref.subcenter_arcface,
        {"scale": 64.0, "margin": 0.5},
        layouts="dense",
        sub=3,
    ),
    Case(
        "subcenter-easy",
        losses.subcenter_arcface,
        ref.subcenter_arcface,
        {"scale": 32.0, "margin": 0.4, "easy_margin": True},
        layouts="dense",
        sub=2,
        variant=True,
    ),
    Case(
        "curricular",
        lambda x, w, y, **kw: losses.curricularface(x, w, y, 0.3, **kw),
        lambda x, w, y, **kw: ref.curricularface(x, w, y, 0.3, **kw),
        {"scale": 64.0, "margin": 0.5},
        layouts="dense",
    ),
    Case(
        "adaface",
        lambda x, w, y, **kw: losses.adaface(x, w, y, STATS, **kw),
        lambda x, w, y, **kw: ref.adaface(x, w, y, 15.0, 8.0, **kw),
        {"scale": 64.0, "margin": 0.4, "h": 0.333},
        norm=(1.0, 40.0),
        check_x=False,
    ),
    Case(
        "magface",
        losses.magface,
        ref.magface,
        {"scale": 32.0, "lower_margin": 0.5, "upper_margin": 1.0, "easy_margin": False},
        norm=(5.0, 120.0),
    ),
    Case("magface-defaults", losses.magface, ref.magface, {}, norm=(5.0, 120.0), variant=True),
    Case(
        "elastic-arc",
        lambda x, w, y, **kw: losses.elasticface_arc(x, w, y, KEY, margin=0.5, **kw),
        _elastic_ref("arc", 0.5, False),
        {"scale": 64.0, "sigma": 0.05},
    ),
    Case(
        "elastic-cos-plus",
        lambda x, w, y, **kw: losses.elasticface_cos(x, w, y, KEY, margin=0.35, plus=True, **kw),
        _elastic_ref("cos", 0.35, True),
        {"scale": 64.0, "sigma": 0.05},
        layouts="chunk",
    ),
    Case(
        "elastic-arc-plus",
        lambda x, w, y, **kw: losses.elasticface_arc(x, w, y, KEY, margin=0.5, plus=True, **kw),
        _elastic_ref("arc", 0.5, True),
        {"scale": 64.0, "sigma": 0.1},
        layouts="chunk",
        variant=True,
    ),
    Case(
        "adacos-fixed",
        losses.adacos,
        lambda x, w, y: ref.normface(x, w, y, scale=math.sqrt(2) * math.log(w.shape[1] - 1)),
        {},
    ),
    Case("adacos-dynamic", losses.adacos, ref.normface, {"scale": 7.5}, variant=True),
    Case(
        "circle",
        losses.circle_loss,
        ref.circle_loss,
        {"scale": 256.0, "margin": 0.25},
        layouts="dense",
        check_x=False,
    ),
]
IDS = [case.id for case in CASES]
BASE_CASES = [case for case in CASES if not case.variant]
LAYOUT_CASES = [case for case in BASE_CASES if case.layouts != "dense"]


def _data(case, batch, dim, classes, seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(batch, dim))
    x *= rng.uniform(*case.norm, size=(batch, 1)) / np.linalg.norm(x, axis=1, keepdims=True)
    w = rng.normal(size=(dim, classes, case.sub) if case.sub else (dim, classes))
    y = rng.integers(0, classes, size=batch).astype(np.int32)
    return x.astype(dtype), w.astype(dtype), y


def _at_angles(case, thetas, dim=3, classes=5):
    """Embeddings at exact target angles θ from class 0's centre e_0, of mid-range norm."""
    thetas = np.asarray(thetas, np.float64)
    x = np.zeros((len(thetas), dim))
    x[:, 0], x[:, 1] = np.cos(thetas), np.sin(thetas)
    x[thetas == np.pi] = -np.eye(dim)[0]  # exactly opposite, cos θ = −1 with no rounding
    rng = np.random.default_rng(1)
    shape = (dim, classes, case.sub) if case.sub else (dim, classes)
    w = rng.normal(size=shape)
    w[:, 0] = np.eye(dim)[:, :1] if case.sub else np.eye(dim)[:, 0]
    return x * np.mean(case.norm), w, np.zeros(len(thetas), np.int32)


def _call(case, x, w, y, **kw):
    return case.fn(x, w, y, **case.hp, **kw)


def _reference(case, x, w, y):
    return case.reference(x, w, y, **case.hp)


# ----------------------------------------------------------------------------------
# Values.
# ----------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=IDS)
@pytest.mark.parametrize("data", ["edge-angles", "random"])
def test_matches_numpy_reference(x64, case, data):
    if data == "random":
        x, w, y = _data(case, 19, 16, 37)
    else:  # θ_y = 0 and π exactly, and in between
        x, w, y = _at_angles(case, [0.0, np.pi / 2, np.pi, 0.8 * np.pi, 0.3])
    got = _call(case, x, w, y)
    assert got.shape == y.shape and got.dtype == jnp.float64
    # float64 against the NumPy reference: 37 classes · 1.1e-16 · (1 + s ≤ 257) · O(10)
    # ≈ 1e-11; 1e-9 leaves 100×.
    np.testing.assert_allclose(got, _reference(case, x, w, y), rtol=1e-9, atol=1e-9)


@pytest.mark.slow  # 10-20 s of a loaded 2-core run (--durations, 2026-12-05)
def test_reductions_to_the_core_losses(x64):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(12, 4))
    x *= 20.0 / np.linalg.norm(x, axis=1, keepdims=True)  # every ‖x‖ = 20
    w, y = rng.normal(size=(4, 9)), rng.integers(0, 9, size=12)
    # float64: the same logits by other formulas (a margin written another way, a norm
    # folded in), a few u each, × s = 30 (or ‖x‖ = 20), plus the log-sum-exp's 9 terms:
    # ≲ 12·u·31 ≈ 4e-14 relative; rtol 1e-9 leaves ≥ 1e4×.
    arc = losses.arcface(x, w, y, scale=30.0, margin=0.4)
    np.testing.assert_allclose(
        losses.subcenter_arcface(x, w[:, :, None], y, scale=30.0, margin=0.4), arc
    )
    np.testing.assert_allclose(  # a margin constant in the norm: ArcFace
        losses.magface(
            x, w, y, scale=30.0, lower_margin=0.4, upper_margin=0.4, lambda_g=0.0, easy_margin=False
        ),
        arc,
        rtol=1e-9,
    )
    stats = losses.AdaFaceStats(mean=jnp.asarray(20.0), std=jnp.asarray(5.0))  # ẑ = 0
    np.testing.assert_allclose(
        losses.adaface(x, w, y, stats, scale=30.0, margin=0.35),
        losses.cosface(x, w, y, scale=30.0, margin=0.35),
        rtol=1e-9,
    )
    np.testing.assert_allclose(
        losses.elasticface_cos(x, w, y, KEY, scale=30.0, margin=0.35, sigma=0.0),
        losses.cosface(x, w, y, scale=30.0, margin=0.35),
        rtol=1e-9,
    )
    np.testing.assert_allclose(
        losses.elasticface_arc(x, w, y, KEY, scale=30.0, margin=0.4, sigma=0.0),
        losses.combined_margin(x, w, y, scale=30.0, m2=0.4),
        rtol=1e-9,
    )
    np.testing.assert_allclose(
        losses.adacos(x, w, y, scale=12.0), losses.normface(x, w, y, scale=12.0)
    )
    # Without hard negatives (each x on its own centre, cos θ_j < cos m) t plays no role.
    on_centre = w[:, y].T * np.linspace(1.0, 3.0, 12)[:, None]
    np.testing.assert_allclose(
        losses.curricularface(on_centre, w, y, 0.7, scale=30.0, margin=0.1),
        losses.arcface(on_centre, w, y, scale=30.0, margin=0.1),
        atol=1e-8,
    )  # at θ_y ≈ 0 sin θ_y = √(1 − cos²) amplifies a rounding of cos to 1e-8


# ----------------------------------------------------------------------------------
# Gradients.
# ----------------------------------------------------------------------------------


@pytest.mark.parametrize("case", BASE_CASES, ids=[c.id for c in BASE_CASES])
def test_check_grads(x64, case):
    # float64 central differences with step 1e-4: truncation ≈ 1e-8·|f‴| (s = 4: ≲ 1e-6),
    # rounding u/1e-4 ≈ 1e-12; atol = rtol = 1e-5 leave 10×.
    x, w, y = _data(case, 5, 4, 6, seed=3)
    hp = dict(case.hp, **({"scale": 4.0} if "scale" in case.hp else {}))
    if case.check_x:
        check_grads(
            jax.jit(lambda x, w: case.fn(x, w, y, **hp).sum()),
            (x, w),
            order=1,
            modes=["rev"],
            atol=1e-5,
            rtol=1e-5,
        )
    elif case.id == "adaface":  # the norm enters without a gradient: check W only
        check_grads(
            jax.jit(lambda w: case.fn(x, w, y, **hp).sum()),
            (w,),
            order=1,
            modes=["rev"],
            atol=1e-5,
            rtol=1e-5,
        )


@pytest.mark.parametrize("case", BASE_CASES, ids=[c.id for c in BASE_CASES])
def test_gradients_finite_in_bfloat16_at_the_edges(case):
    x, w, y = _at_angles(case, np.linspace(0.0, np.pi, 61))  # includes exact 0 and π
    # A zero-norm embedding and a zero-norm class centre on top.
    x = np.concatenate([x, np.zeros((1, x.shape[1]))])
    w = np.concatenate([w, np.zeros_like(w[:, :1])], axis=1)
    y = np.append(y, w.shape[1] - 1).astype(np.int32)
    xb, wb = jnp.asarray(x, jnp.bfloat16), jnp.asarray(w, jnp.bfloat16)
    value, grads = jax.jit(
        jax.value_and_grad(lambda x, w: _call(case, x, w, y).sum(), argnums=(0, 1))
    )(xb, wb)
    assert value.dtype == jnp.float32 and np.isfinite(float(value))
    for g in grads:
        assert g.dtype == jnp.bfloat16
        assert np.all(np.isfinite(np.asarray(g, np.float32)))


# ----------------------------------------------------------------------------------
# Transforms and layouts.
# ----------------------------------------------------------------------------------


@pytest.mark.parametrize("case", BASE_CASES, ids=[c.id for c in BASE_CASES])
def test_jit_and_vmap(case):
    x, w, y = _data(case, 3 * 6, 4, 9, dtype=np.float32)
    x, y = x.reshape(3, 6, 4), y.reshape(3, 6)
    fn = lambda x, y: _call(case, x, w, y)  # noqa: E731
    eager = np.stack([fn(x[i], y[i]) for i in range(3)])
    # float32, jit/vmap against eager: a cosine (d = 4) off by ≤ 6·u, a logit by s times
    # that (Circle's γ = 256), the loss by ≤ 2 logit errors: 2·6·(1 + s)·u absolute.
    atol = 2 * 6 * (1 + case.hp.get("scale", 64.0)) * 2.0**-24
    np.testing.assert_allclose(jax.jit(jax.vmap(fn))(x, y), eager, rtol=1e-5, atol=atol)


def _mesh():
    return Mesh(np.array(jax.devices()), ("c",))


@pytest.mark.parametrize("case", LAYOUT_CASES, ids=[c.id for c in LAYOUT_CASES])
def test_chunked_and_class_sharded_equal_dense(x64, case):
    """W's columns sharded over 8 devices and streamed in chunks on each: one compile."""
    x, w, y = _data(case, 8, 5, 3 * jax.device_count(), seed=5)
    if case.layouts == "all":
        layout = jax.shard_map(
            lambda x, w, y: _call(case, x, w, y, chunk_size=2, class_axis_name="c"),
            mesh=_mesh(),
            in_specs=(P(), P(None, "c"), P()),
            out_specs=P(),
        )
    else:
        layout = lambda x, w, y: _call(case, x, w, y, chunk_size=5)  # noqa: E731
    value, grads = _value_and_grads(layout, x, w, y)
    dense_value, dense_grads = _value_and_grads(lambda x, w, y: _call(case, x, w, y), x, w, y)
    _assert_layout_equals_dense(value, grads, dense_value, dense_grads)


@pytest.mark.parametrize("case_id", ["magface", "elastic-arc"])
def test_data_and_class_parallel_equal_dense(x64, case_id):
    """The training layout: the batch and W's columns split over one axis (Partial FC)."""
    devices = jax.device_count()
    case = next(c for c in CASES if c.id == case_id)
    x, w, y = _data(case, 2 * devices, 5, 2 * devices, seed=6)
    sharded = jax.shard_map(
        lambda x, w, y: _call(case, x, w, y, axis_name="c", class_axis_name="c"),
        mesh=_mesh(),
        in_specs=(P("c"), P(None, "c"), P("c")),
        out_specs=P("c"),
    )
    value, grads = _value_and_grads(sharded, x, w, y)
    if case.id.startswith("elastic"):
        # Each device draws its own examples' margins from its key: the same draws on
        # every device unless the caller folds the device index into the key.
        margins = np.tile(_margins(2, 0.5, case.hp["sigma"]), devices)
        np.testing.assert_allclose(
            value, ref.elasticface(x, w, y, margins, kind="arc", scale=case.hp["scale"]), rtol=1e-9
        )
        return
    dense_value, dense_grads = _value_and_grads(lambda x, w, y: _call(case, x, w, y), x, w, y)
    _assert_layout_equals_dense(value, grads, dense_value, dense_grads)


def _assert_layout_equals_dense(value, grads, dense_value, dense_grads):
    """float64: a layout adds the dense loss's ≤ 24 class terms in another order (chunks,
    devices), off by n·u·(1 + s)·Σ|terms| ≈ 24 · 1.1e-16 · 65 ≈ 2e-13 (s ≤ 64) of the
    value and of the largest gradient element; 1e-10 and 1e-9 leave ≥ 500×, and an
    element that cancels to ~0 is held to the largest's scale."""
    np.testing.assert_allclose(value, dense_value, rtol=1e-10)
    for g, g_dense in zip(grads, dense_grads):
        atol = 1e-9 * float(np.abs(g_dense).max())
        np.testing.assert_allclose(g, g_dense, rtol=1e-9, atol=atol)


def _value_and_grads(fn, x, w, y):
    """fn(x, w, y) (B,) and the gradient of a non-uniform weighting of it, one compile."""

    def value_and_grads(x, w):
        value, vjp = jax.vjp(lambda x, w: fn(x, w, y), x, w)
        return value, vjp(jnp.linspace(1.0, 2.0, len(y), dtype=value.dtype))

    return jax.jit(value_and_grads)(x, w)


@pytest.mark.slow  # 10-20 s of a loaded 2-core run (--durations, 2026-12-05)
def test_adacos_traced_scale_in_chunked_jit():
    case = next(c for c in CASES if c.id == "adacos-dynamic")
    x, w, y = _data(case, 6, 4, 11, dtype=np.float32)
    f = jax.jit(jax.grad(lambda w, s: losses.adacos(x, w, y, scale=s, chunk_size=4).sum()))
    g_dense = jax.grad(lambda w: losses.adacos(x, w, y, scale=9.0).sum())(w)
    # float32 (a traced float32 scale): chunks round the cosines (d = 4, ≲ 4·u) and the
    # log-sum-exp of 11 classes differently; × s = 9 in every logit and so in the softmax
    # weights: ≈ (4 + 11)·(1 + 9)·u ≈ 1e-5 of the largest gradient element, summed over
    # 6 examples ≈ 6e-5. 1e-4 of it leaves margin; a lost chunk is O(0.1).
    tol = 1e-4
    atol = tol * float(np.abs(g_dense).max())
    np.testing.assert_allclose(f(w, jnp.float32(9.0)), g_dense, rtol=tol, atol=atol)


# ----------------------------------------------------------------------------------
# State updates.
# ----------------------------------------------------------------------------------


def test_state_updates_match_reference(x64):
    case = next(c for c in CASES if c.id == "adaface")
    x, w, y = _data(case, 10, 4, 7, seed=8)
    # float64 statistics of 10 examples (means, a standard deviation, the median and
    # log-sum-exp of ≤ 70 cosines × s ≤ 6) against the reference's: ≲ 70·u·(1 + s) ≈ 5e-14
    # relative; rtol 1e-12. (√2·log(C − 1): a few roundings, the default rtol 1e-7.)
    np.testing.assert_allclose(
        losses.curricularface_update_t(0.2, x, w, y), ref.curricularface_t(0.2, x, w, y), rtol=1e-12
    )
    new = losses.adaface_update_stats(STATS, x, alpha=0.3)
    np.testing.assert_allclose(new, ref.adaface_stats(15.0, 8.0, x, alpha=0.3), rtol=1e-12)
    init = losses.adaface_init_stats()
    assert (float(init.mean), float(init.std)) == (20.0, 100.0)
    np.testing.assert_allclose(
        losses.adacos_dynamic_scale(6.0, x, w, y),
        ref.adacos_dynamic_scale(6.0, x, w, y),
        rtol=1e-12,
    )
    np.testing.assert_allclose(losses.adacos_fixed_scale(85742), math.sqrt(2) * math.log(85741))
    # The state carries no gradient.
    assert jax.grad(lambda x: losses.curricularface_update_t(0.2, x, w, y))(x).any() == 0


def test_state_updates_under_pmap_use_the_global_batch(x64):
    devices = jax.device_count()
    case = next(c for c in CASES if c.id == "adaface")
    x, w, y = _data(case, 3 * devices, 4, 6, seed=9)

    @functools.partial(jax.pmap, axis_name="d", in_axes=(0, 0, None), out_axes=None)
    def updates(x, y, w):
        return (
            losses.curricularface_update_t(0.2, x, w, y, axis_name="d"),
            losses.adaface_update_stats(STATS, x, axis_name="d"),
            losses.adacos_dynamic_scale(6.0, x, w, y, axis_name="d"),
        )

    t, stats, scale = updates(x.reshape(devices, 3, 4), y.reshape(devices, 3), w)
    # float64, the psum adds the devices' partial sums in another order: as above,
    # ≲ 5e-14 relative; rtol 1e-12. A per-device statistic is O(0.1) off.
    np.testing.assert_allclose(t, ref.curricularface_t(0.2, x, w, y), rtol=1e-12)
    np.testing.assert_allclose(stats, ref.adaface_stats(15.0, 8.0, x), rtol=1e-12)
    np.testing.assert_allclose(scale, ref.adacos_dynamic_scale(6.0, x, w, y), rtol=1e-12)


@pytest.mark.slow  # 10-20 s of a loaded 2-core run (--durations, 2026-12-05)
def test_adacos_scale_with_class_sharded_weights(x64):
    devices = jax.device_count()
    case = next(c for c in CASES if c.id == "adacos-dynamic")
    x, w, y = _data(case, 2 * devices, 4, 3 * devices, seed=4)
    expected = ref.adacos_dynamic_scale(5.0, x, w, y)
    fn = jax.shard_map(  # Partial FC: the batch and the classes split over one axis
        lambda x, w, y: losses.adacos_dynamic_scale(
            5.0, x, w, y, axis_name="c", class_axis_name="c"
        ),
        mesh=_mesh(),
        in_specs=(P("c"), P(None, "c"), P("c")),
        out_specs=P(),
    )
    # float64, sums over the class shards in another order: ≲ 5e-14 relative (see
    # test_state_updates_match_reference); rtol 1e-12.
    np.testing.assert_allclose(fn(x, w, y), expected, rtol=1e-12)


# ----------------------------------------------------------------------------------
# Sub-center cleanup.
# ----------------------------------------------------------------------------------


@pytest.mark.slow  # 4–6 s of an idle 2-core run (--durations, 2026-12-05)
def test_subcenter_cleanup(x64):
    rng = np.random.default_rng(0)
    w = rng.normal(size=(6, 4, 3))
    x, y = rng.normal(size=(40, 6)), rng.integers(0, 4, size=40)
    clean = losses.subcenter_cleanup(x, w, y, max_angle=math.radians(80))
    keep, dominant, dominant_weights = ref.subcenter_cleanup(x, w, y, max_angle=math.radians(80))
    assert clean.keep.tolist() == keep.tolist() and clean.dominant.tolist() == dominant.tolist()
    assert 0 < keep.sum() < 40
    np.testing.assert_array_equal(clean.weights, dominant_weights)
    # A hand-made class: three samples at sub-centre 1, one at sub-centre 0 (dropped).
    w = np.stack([np.eye(2), -np.eye(2)], axis=-1)
    x = np.array([[-1.0, 0.2], [-1.0, -0.2], [-1.0, 0.0], [1.0, 0.0]])
    clean = losses.subcenter_cleanup(x, w, np.zeros(4, np.int32))
    assert clean.dominant.tolist() == [1, 0] and clean.keep.tolist() == [True] * 3 + [False]


# ----------------------------------------------------------------------------------
# Pair-level Circle loss and cross-batch memory.
# ----------------------------------------------------------------------------------


def test_circle_pair_loss_matches_reference(x64):
    rng = np.random.default_rng(11)
    x, y = rng.normal(size=(13, 5)), np.array([0, 0, 1, 1, 1, 2, 3, 3, 0, 4, 4, 2, 5])
    for hp in ({}, {"scale": 32.0, "margin": 0.4}):
        np.testing.assert_allclose(
            losses.circle_pair_loss(x, y, **hp),
            ref.circle_pair_loss(x, y, **hp),
            # float64 against the NumPy reference: n·u·(1 + γ)·|loss| ≲ 13 · 1.1e-16 · 257
            # · O(10) ≈ 4e-12 relative (γ ≤ 256, the default); 1e-9 leaves 250×. The
            # atol covers the samples whose loss is exactly 0 (no positive or negative).
            rtol=1e-9,
            atol=1e-12,
        )


@pytest.mark.slow  # 4–6 s of an idle 2-core run (--durations, 2026-12-05)
def test_circle_pair_loss_finite_gradients_in_bfloat16():
    x = jnp.asarray([[1.0, 0.0], [1.0, 0.0], [-1.0, 0.0], [0.0, 0.0], [0.0, 1.0]], jnp.bfloat16)
    y = jnp.array([0, 0, 1, 1, 2])  # duplicates, an opposite, a zero vector, a loner
    value, grad = jax.jit(jax.value_and_grad(lambda x: losses.circle_pair_loss(x, y).sum()))(x)
    assert value.dtype == jnp.float32 and np.isfinite(float(value))
    assert grad.dtype == jnp.bfloat16 and np.all(np.isfinite(np.asarray(grad, np.float32)))
    assert float(losses.circle_pair_loss(x, y)[4]) == 0.0


def _numpy_memory(memory):
    return {key: np.asarray(value) for key, value in memory._asdict().items()}


def test_xbm_enqueue_ring_buffer_and_warmup():
    memory = losses.xbm_init(5, 2)
    expected = _numpy_memory(memory)
    rng = np.random.default_rng(0)
    enqueue = jax.jit(lambda m, x, y: losses.xbm_enqueue(m, x, y, warmup_steps=2))
    for step in range(6):
        x, y = rng.normal(size=(2, 2)).astype(np.float32), rng.integers(0, 3, size=2)
        memory = enqueue(memory, x, y)
        expected = ref.xbm_enqueue(expected, x, y, warmup_steps=2)
        for key, value in expected.items():
            np.testing.assert_array_equal(getattr(memory, key), value, err_msg=f"{key} @ {step}")
    assert memory.filled.all() and int(memory.steps) == 6


def test_xbm_losses_match_reference(x64):
    rng = np.random.default_rng(1)
    memory = losses.xbm_init(7, 3, dtype=jnp.float64)
    for _ in range(2):  # 6 of 7 slots filled
        memory = losses.xbm_enqueue(memory, rng.normal(size=(3, 3)), rng.integers(0, 3, size=3))
    x, y = rng.normal(size=(4, 3)), np.array([0, 1, 2, 5])  # label 5: no positive
    expected = _numpy_memory(memory)
    # float64 squared distances of 3-d points (≤ 5·u of (‖a‖ + ‖b‖)²) through hinges and
    # means: ~1e-14 relative while no hinge sits within 1e-2 of its margin; rtol 1e-12.
    np.testing.assert_allclose(
        losses.xbm_contrastive_loss(x, y, memory, margin=2.0),
        ref.xbm_contrastive(x, y, expected, margin=2.0),
        rtol=1e-12,
    )
    np.testing.assert_allclose(
        losses.xbm_triplet_loss(x, y, memory, margin=1.0),
        ref.xbm_triplet(x, y, expected, margin=1.0),
        rtol=1e-12,
    )


def test_xbm_empty_memory_and_finite_gradients():
    x, y = jnp.asarray([[0.5, 0.5], [1.0, 0.0]], jnp.bfloat16), jnp.array([0, 1])
    both = lambda x, m: (
        losses.xbm_contrastive_loss(x, y, m)  # noqa: E731
        + losses.xbm_triplet_loss(x, y, m)
    )
    step = jax.jit(jax.value_and_grad(both))
    empty = losses.xbm_init(4, 2)
    value, grad = step(x, empty)
    assert float(value) == 0.0 and not np.asarray(grad, np.float32).any()
    # The batch's own copies in memory: distance 0 to a positive and to a negative.
    memory = losses.xbm_enqueue(empty, x, jnp.array([0, 0]))
    value, grad = step(x, memory)
    assert value.dtype == jnp.float32 and float(value) > 0
    assert np.all(np.isfinite(np.asarray(grad, np.float32)))


def test_xbm_enqueue_under_pmap_stores_the_global_batch():
    devices = jax.device_count()
    x = np.arange(2.0 * devices * 3, dtype=np.float32).reshape(2 * devices, 3)
    y = np.arange(2 * devices, dtype=np.int32)
    enqueue = jax.pmap(
        lambda m, x, y: losses.xbm_enqueue(m, x, y, axis_name="d"),
        axis_name="d",
        in_axes=(None, 0, 0),
    )
    memory = enqueue(
        losses.xbm_init(3 * devices, 3), x.reshape(devices, 2, 3), y.reshape(devices, 2)
    )
    expected = ref.xbm_enqueue(_numpy_memory(losses.xbm_init(3 * devices, 3)), x, y)
    for key, value in expected.items():
        np.testing.assert_array_equal(getattr(memory, key), np.stack([value] * devices))


# ----------------------------------------------------------------------------------
# Bad input, docstrings.
# ----------------------------------------------------------------------------------


def test_bad_input_is_named():
    x, w, y = np.ones((4, 3), np.float32), np.ones((3, 5), np.float32), np.array([0, 1, 2, 3])
    for dense in (
        losses.subcenter_arcface,
        losses.circle_loss,
        lambda *a, **k: losses.curricularface(*a, 0.0, **k),
    ):
        for layout in ({"chunk_size": 2}, {"axis_name": "c"}, {"class_axis_name": "c"}):
            with pytest.raises(NotImplementedError, match="dense only"):
                dense(x, w[..., None] if dense is losses.subcenter_arcface else w, y, **layout)
    cases = [
        (lambda: losses.subcenter_arcface(x, w, y), ValueError, r"weights \(d, C, K\)"),
        (
            lambda: losses.subcenter_arcface(x, w[..., None], y + 2),
            ValueError,
            r"labels must lie in \[0, 5\)",
        ),
        (lambda: losses.adaface(x, w.T, y, STATS), ValueError, "embedding_dim, num_classes"),
        (lambda: losses.adaface_update_stats(STATS, x[:1]), ValueError, "at least 2"),
        (
            lambda: losses.curricularface_update_t(0.0, x, w, y, alpha=2.0),
            ValueError,
            r"alpha must lie in \[0, 1\]",
        ),
        (
            lambda: losses.magface(x, w, y, lower_norm=50.0, upper_norm=10.0),
            ValueError,
            "lower_norm < upper_norm",
        ),
        (lambda: losses.elasticface_cos(x, w, y, KEY, sigma=-1.0), ValueError, "sigma"),
        (lambda: losses.adacos_fixed_scale(2), ValueError, "at least 3 classes"),
        (lambda: losses.circle_pair_loss(x, y.astype(np.float32)), TypeError, "integer dtype"),
        (lambda: losses.xbm_enqueue(losses.xbm_init(3, 3), x, y), ValueError, "does not fit"),
        (
            lambda: losses.xbm_triplet_loss(x, y, losses.xbm_init(8, 2)),
            ValueError,
            "dimension 3 but the memory holds 2",
        ),
    ]
    for call, error, match in cases:
        with pytest.raises(error, match=match):
            call()
    with pytest.raises(NotImplementedError, match="plus=True"):
        jax.shard_map(
            lambda w: losses.elasticface_arc(x, w, y, KEY, plus=True, class_axis_name="c"),
            mesh=_mesh(),
            in_specs=P(None, "c"),
            out_specs=P(),
        )(np.ones((3, 8), np.float32))


@pytest.mark.slow  # 10-20 s of a loaded 2-core run (--durations, 2026-12-05)
@pytest.mark.parametrize(
    "module", [adaptive_margins, adaptive_scale, circle, curriculum, subcenter, xbm]
)
def test_docstring_examples_run(module):
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
