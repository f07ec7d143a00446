"""The angular losses against float64 NumPy references, at the edges, under transforms."""

import doctest
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import reference
from conftest import checkerboard
from jax.test_util import check_grads

from faceloss_jax import losses
from faceloss_jax.losses import angular, engine, geometry, schedules

# (loss name, hyper-parameters): every loss, with its papers' settings and variants.
CASES = [
    ("softmax_cross_entropy", {}),
    ("normface", {"scale": 16.0}),
    ("cosface", {"scale": 64.0, "margin": 0.35}),
    ("cosface", {"scale": 30.0, "margin": 0.35}),
    ("arcface", {"scale": 64.0, "margin": 0.5}),
    ("arcface", {"scale": 64.0, "margin": 0.5, "easy_margin": True}),
    ("combined_margin", {"scale": 64.0, "m1": 1.0, "m2": 0.3, "m3": 0.2}),
    ("combined_margin", {"scale": 32.0, "m1": 0.9, "m2": 0.4, "m3": 0.15}),
    ("large_margin_softmax", {"margin": 2, "lambda_": 0.0}),
    ("large_margin_softmax", {"margin": 4, "lambda_": 2.5}),
    ("sphereface", {"margin": 4, "lambda_": 0.0}),
    ("sphereface", {"margin": 3, "lambda_": 5.0}),
]
IDS = [f"{name}-{i}" for i, (name, _) in enumerate(CASES)]


def _data(batch, dim, classes, seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(batch, dim)).astype(dtype)
    w = rng.normal(size=(dim, classes)).astype(dtype)
    y = rng.integers(0, classes, size=batch).astype(np.int32)
    return x, w, y


def _fn(name):
    return getattr(losses, name)


@pytest.mark.parametrize("name,hp", CASES, ids=IDS)
@pytest.mark.parametrize("shape", [(1, 2, 2), (8, 3, 10), (33, 16, 101)])
def test_matches_numpy_reference(x64, name, hp, shape):
    x, w, y = _data(*shape)
    got = _fn(name)(x, w, y, **hp)
    assert got.shape == (shape[0],) and got.dtype == jnp.float64
    # float64 against the NumPy reference: n·u·(1 + s)·|loss| ≲ 101 · 1.1e-16 · 65 · O(10)
    # ≈ 7e-12 (C ≤ 101 classes, s ≤ 64); 1e-9 leaves 100×.
    np.testing.assert_allclose(got, reference.loss(name, x, w, y, **hp), rtol=1e-9, atol=1e-9)


def test_softmax_bias_matches_reference(x64):
    x, w, y = _data(6, 4, 9)
    b = np.linspace(-1, 1, 9)
    got = losses.softmax_cross_entropy(x, w, y, bias=b)
    np.testing.assert_allclose(got, reference.loss("softmax_cross_entropy", x, w, y, bias=b))


def _at_angles(thetas, dim=3, classes=5):
    """Embeddings at exact target angles θ from class 0's centre e_0 (in the e0-e1 plane)."""
    thetas = np.asarray(thetas, np.float64)
    x = np.zeros((len(thetas), dim))
    x[:, 0], x[:, 1] = np.cos(thetas), np.sin(thetas)
    x[thetas == np.pi] = -np.eye(dim)[0]  # exactly opposite, cos θ = −1 with no rounding
    rng = np.random.default_rng(1)
    w = np.concatenate([np.eye(dim)[:, :1], rng.normal(size=(dim, classes - 1))], axis=1)
    return x * 1.7, w, np.zeros(len(thetas), np.int32)


@pytest.mark.parametrize("name,hp", CASES, ids=IDS)
def test_hand_made_angles(x64, name, hp):
    x, w, y = _at_angles([0.0, np.pi / 2, np.pi, 0.8 * np.pi, 0.3])
    # float64, 5 classes: as in test_matches_numpy_reference, 1e-9 ≫ 5·u·65·O(10).
    np.testing.assert_allclose(
        _fn(name)(x, w, y, **hp), reference.loss(name, x, w, y, **hp), rtol=1e-9, atol=1e-9
    )


def test_arcface_falls_back_beyond_pi(x64):
    # θ + m > π: the target is cos θ − m·sin m, not the (increasing) cos(θ + m).
    theta, m = 0.85 * np.pi, 0.5
    x, w, y = _at_angles([theta])
    z = np.asarray(angular.additive_angular_margin(jnp.cos(theta), m))
    np.testing.assert_allclose(z, np.cos(theta) - m * np.sin(m))
    assert not np.isclose(z, np.cos(theta + m))
    # Below π − m the exact cos(θ + m).
    np.testing.assert_allclose(angular.additive_angular_margin(jnp.cos(0.5), m), np.cos(1.0))
    # easy_margin keeps cos θ where cos θ ≤ 0.
    np.testing.assert_allclose(
        angular.additive_angular_margin(jnp.cos(theta), m, easy_margin=True), np.cos(theta)
    )


@pytest.mark.parametrize("m", [1, 2, 3, 4, 5])
def test_psi_matches_piecewise_definition(x64, m):
    theta = np.linspace(0.0, np.pi, 721)
    np.testing.assert_allclose(
        angular.multiple_angle_psi(jnp.cos(theta), m), reference.psi(theta, m), atol=1e-9
    )
    assert np.all(np.diff(reference.psi(theta, m)) <= 1e-12), "ψ must decrease"


def test_reductions(x64):
    # float64: the same logits by other formulas (cos(arccos c + 0), m1·θ with m1 = 1, a
    # normalization of w): a few u each, × s = 30, plus the log-sum-exp's 7 terms:
    # ≲ 10·u·31 ≈ 3e-14 relative; the default rtol 1e-7 (and 1e-6) leave ≥ 3e6×.
    x, w, y = _data(16, 5, 7)
    wn = w / np.linalg.norm(w, axis=0)
    softmax = losses.softmax_cross_entropy(x, w, y)
    np.testing.assert_allclose(losses.large_margin_softmax(x, w, y, margin=1), softmax)
    np.testing.assert_allclose(
        losses.sphereface(x, w, y, margin=1), losses.softmax_cross_entropy(x, wn, y)
    )
    norm = losses.normface(x, w, y, scale=30.0)
    np.testing.assert_allclose(losses.arcface(x, w, y, scale=30.0, margin=0.0), norm)
    np.testing.assert_allclose(losses.cosface(x, w, y, scale=30.0, margin=0.0), norm)
    np.testing.assert_allclose(
        losses.combined_margin(x, w, y, scale=30.0, m1=1.0, m2=0.0, m3=0.0), norm, rtol=1e-6
    )
    np.testing.assert_allclose(
        losses.combined_margin(x, w, y, scale=30.0, m1=1.0, m2=0.0, m3=0.35),
        losses.cosface(x, w, y, scale=30.0, margin=0.35),
        rtol=1e-6,
    )
    # A margin makes the loss larger: the target logit only decreases.
    assert np.all(np.asarray(losses.arcface(x, w, y, scale=30.0, margin=0.3)) > norm)


@pytest.mark.parametrize("name,hp", CASES, ids=IDS)
def test_check_grads(x64, name, hp):
    x, w, y = _data(5, 4, 6, seed=3)
    hp = dict(hp)
    if "scale" in hp:
        hp["scale"] = 4.0  # keep the function's curvature moderate for finite differences

    def f(x, w):
        return _fn(name)(x, w, y, **hp).sum()

    # float64 central differences with step 1e-4: truncation ≈ 1e-8·|f‴| (s = 4: ≲ 1e-6),
    # rounding u/1e-4 ≈ 1e-12; 1e-5 leaves 10×.
    check_grads(f, (x, w), order=1, modes=["fwd", "rev"], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name,hp", CASES, ids=IDS)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_gradients_finite_over_all_target_angles(name, hp, dtype):
    thetas = np.linspace(0.0, np.pi, 181)  # includes exact 0 and π
    x, w, y = _at_angles(thetas)
    x, w = jnp.asarray(x, dtype), jnp.asarray(w, dtype)
    # Zero-norm embedding and zero-norm class centre on top.
    x = jnp.concatenate([x, jnp.zeros((1, x.shape[1]), dtype)])
    w = jnp.concatenate([w, jnp.zeros((w.shape[0], 1), dtype)], axis=1)
    y = jnp.concatenate([jnp.asarray(y), jnp.array([w.shape[1] - 1], jnp.int32)])

    value, grads = jax.jit(
        jax.value_and_grad(lambda x, w: _fn(name)(x, w, y, **hp).sum(), argnums=(0, 1))
    )(x, w)
    assert value.dtype == jnp.float32
    assert np.isfinite(np.asarray(value))
    for g in grads:
        assert g.dtype == dtype
        assert np.all(np.isfinite(np.asarray(g, np.float32)))


# float32, jit/vmap against eager: XLA fuses and orders the sums differently. A cosine
# (d = 4) is off by ≤ (d + 2)·u, a logit by s times that (s ≤ 64, or ‖x‖‖w‖·|ψ| ≲ 64 for
# the unnormalized ones), the loss by ≤ 2 logit errors: 2·6·65·u ≈ 5e-5 absolute.
JIT_TOL = {"rtol": 1e-5, "atol": 5e-5}


@pytest.mark.parametrize("name,hp", CASES, ids=IDS)
def test_jit_and_vmap(name, hp):
    x, w, y = _data(3 * 6, 4, 9, dtype=np.float32)
    fn = lambda x, y: _fn(name)(x, w, y, **hp)  # noqa: E731
    eager = fn(x, y)
    np.testing.assert_allclose(jax.jit(fn)(x, y), eager, **JIT_TOL)
    batched = jax.vmap(fn)(x.reshape(3, 6, 4), y.reshape(3, 6))
    np.testing.assert_allclose(batched.reshape(-1), eager, **JIT_TOL)


# Each loss with one chunk size in the fast tier (the other in the slow one).
@pytest.mark.parametrize(
    "chunk_size,name,hp",
    checkerboard(
        [pytest.param(1, id="1"), pytest.param(7, id="7")],
        [pytest.param(name, hp, id=i) for (name, hp), i in zip(CASES, IDS)],
    ),
)
def test_chunked_equals_dense(x64, name, hp, chunk_size):
    x, w, y = _data(10, 6, 23, seed=5)
    bias = np.linspace(-0.5, 0.5, 23).astype(np.float32)
    if name == "softmax_cross_entropy":
        hp = {"bias": bias}

    def f(x, w, chunk):
        return _fn(name)(x, w, y, chunk_size=chunk, **hp)

    dense = f(x, w, None)
    # float64: chunks rescale and add the dense log-sum-exp's 23 terms in another order,
    # n·u·(1 + s)·Σ|terms| ≈ 23 · 1.1e-16 · 65 ≈ 2e-13 (s ≤ 64); 1e-10 / 1e-9 leave ≥ 500×.
    np.testing.assert_allclose(f(x, w, chunk_size), dense, rtol=1e-10)
    g_dense = jax.grad(lambda x, w: (f(x, w, None) * np.arange(10)).sum(), (0, 1))(x, w)
    g_chunk = jax.jit(jax.grad(lambda x, w: (f(x, w, chunk_size) * np.arange(10)).sum(), (0, 1)))(
        x, w
    )
    for a, b in zip(g_chunk, g_dense):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-9)


@pytest.mark.slow  # 4–6 s of an idle 2-core run (--durations, 2026-12-05)
def test_chunked_bias_gradient_equals_dense():
    x, w, y = _data(10, 6, 23, seed=5, dtype=np.float32)
    b = np.linspace(-0.5, 0.5, 23).astype(np.float32)
    grad = lambda c: jax.grad(  # noqa: E731
        lambda b: losses.softmax_cross_entropy(x, w, y, bias=b, chunk_size=c).sum()
    )(b)
    # float32: a logit x·w (d = 6, Σ|x_k w_k| ≲ 10) is off by ≤ d·u·10 ≈ 4e-6, which is
    # the relative error of its softmax probability; the bias gradient sums 10 examples'
    # probabilities (≤ 1): ≤ 4e-5 absolute, and the largest element is O(1). 1e-4 of it
    # is above that bound and far below a dropped or doubled chunk (O(0.1)).
    g = grad(None)
    tol = 1e-4
    np.testing.assert_allclose(grad(5), g, rtol=tol, atol=tol * float(np.abs(g).max()))


@pytest.mark.parametrize("name,hp", CASES[::4], ids=IDS[::4])
def test_chunked_check_grads(x64, name, hp):
    x, w, y = _data(4, 3, 11, seed=7)
    hp = dict(hp, **({"scale": 4.0} if "scale" in hp else {}))
    check_grads(
        lambda x, w: _fn(name)(x, w, y, chunk_size=4, **hp).sum(),
        (x, w),
        order=1,
        modes=["rev"],
        atol=1e-5,  # float64 central differences, as in test_check_grads
        rtol=1e-5,
    )


def test_chunked_bfloat16_is_finite_and_close():
    x, w, y = _data(16, 32, 300, seed=2, dtype=np.float32)
    xb, wb = jnp.asarray(x, jnp.bfloat16), jnp.asarray(w, jnp.bfloat16)
    loss, grads = jax.jit(
        jax.value_and_grad(lambda x, w: losses.arcface(x, w, y, chunk_size=64).sum(), (0, 1))
    )(xb, wb)
    assert loss.dtype == jnp.float32 and np.isfinite(float(loss))
    assert all(np.all(np.isfinite(np.asarray(g, np.float32))) for g in grads)
    ref = losses.arcface(xb.astype(jnp.float32), wb.astype(jnp.float32), y).sum()
    # bfloat16 (u_b = 2⁻⁹): the normalized x̂ and ŵ are rounded to it, ≤ u_b each, so a
    # cosine (Σ|x̂_k ŵ_k| ≤ 1, accumulated in float32) is ≤ 2·u_b off; × s = 64 in every
    # logit, and a loss (log-sum-exp minus the target) moves ≤ 2·64·2·u_b = 0.5, ≤ 1.3e-2
    # of each example's (≥ 38 here) and so of the sum; measured 1.2e-4.
    np.testing.assert_allclose(float(loss), float(ref), rtol=2e-2)


# ----------------------------------------------------------------------------------
# Bad input.
# ----------------------------------------------------------------------------------


def test_label_out_of_range_is_named():
    x, w, _ = _data(3, 4, 5, dtype=np.float32)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 5\); got 5 at index 2"):
        losses.arcface(x, w, np.array([0, 1, 5]))
    with pytest.raises(ValueError, match="got -1"):
        losses.cosface(x, w, np.array([-1, 1, 2]))


@pytest.mark.parametrize(
    "mutate,error,match",
    [
        (lambda x, w, y: (x, w, y.astype(np.float32)), TypeError, "integer dtype"),
        (lambda x, w, y: (x, w[None], y), ValueError, r"weights \(d, C\) must have rank 2"),
        (lambda x, w, y: (x, w.T, y), ValueError, "shaped \\(embedding_dim, num_classes\\)"),
        (lambda x, w, y: (x[:2], w, y), ValueError, r"batch size.*2.*3"),
        (lambda x, w, y: (x[0], w, y), ValueError, r"embeddings \(B, d\) must have rank 2"),
        (lambda x, w, y: (x.astype(np.int32), w, y), TypeError, "floating point"),
    ],
)
def test_bad_shapes_and_dtypes(mutate, error, match):
    x, w, y = _data(3, 4, 5, dtype=np.float32)
    for name, hp in CASES:
        with pytest.raises(error, match=match):
            jax.jit(lambda x, w, y: _fn(name)(x, w, y, **hp))(*mutate(x, w, y))


def test_bad_hyper_parameters():
    x, w, y = _data(3, 4, 5, dtype=np.float32)
    with pytest.raises(ValueError, match="margin must be an integer"):
        losses.sphereface(x, w, y, margin=1.5)
    with pytest.raises(ValueError, match="chunk_size must be a positive int"):
        losses.arcface(x, w, y, chunk_size=0)
    with pytest.raises(ValueError, match=r"bias must have shape \(5,\)"):
        losses.softmax_cross_entropy(x, w, y, bias=np.zeros(4))


# ----------------------------------------------------------------------------------
# Geometry, schedules, docstrings.
# ----------------------------------------------------------------------------------


def test_geometry_matches_reference(x64):
    # float64 cosines of 5-d vectors (≤ 7·u) through arccos (condition 1/sin θ, O(1) for
    # random directions) and means: ~1e-14; assert_allclose's default rtol 1e-7.
    x, w, y = _data(20, 5, 7)
    cos = (x * w[:, y].T).sum(1) / np.linalg.norm(x, axis=1) / np.linalg.norm(w[:, y], axis=0)
    np.testing.assert_allclose(losses.intra_angle(x, w, y), np.arccos(cos).mean() / np.pi)
    wn = w / np.linalg.norm(w, axis=0)
    angles = [
        math.acos(np.clip(wn[:, i] @ wn[:, j], -1, 1)) for i in range(7) for j in range(7) if i != j
    ]
    np.testing.assert_allclose(losses.inter_angle(w), -np.mean(angles) / np.pi)
    grads = jax.grad(lambda x, w: losses.intra_angle(x, w, y) + losses.inter_angle(w), (0, 1))(
        x, np.tile(w[:, :1], (1, 7))
    )  # all centres equal: cos = 1
    assert all(np.all(np.isfinite(g)) for g in grads)


def test_lambda_schedule_papers_settings():
    sphere = losses.lambda_schedule()
    assert float(sphere(0)) == 1000.0
    # float32: 0.12 rounded, 1 + 120 exact, one division rounded: ≤ u = 6e-8 < 1e-7.
    np.testing.assert_allclose(float(sphere(1000)), max(5.0, 1000 / (1 + 0.12 * 1000)))
    assert float(sphere(10**7)) == 5.0
    lsoftmax = losses.lambda_schedule(1000.0, 2.5e-5, 35.0, 0.0)
    # float32 power with exponent 35: the base's rounding times 35 (its condition) plus
    # the pow's own few ulp, ≲ 40·u ≈ 2.4e-6; 1e-5.
    np.testing.assert_allclose(float(lsoftmax(10_000)), 1000 * (1.25) ** -35, rtol=1e-5)
    steps = jnp.arange(0, 20_000, 500)
    assert np.all(np.diff(np.asarray(jax.vmap(lsoftmax)(steps))) <= 0)


def test_lambda_from_schedule_traces_under_jit():
    x, w, y = _data(4, 3, 5, dtype=np.float32)
    sched = losses.lambda_schedule()
    f = jax.jit(lambda step: losses.sphereface(x, w, y, lambda_=sched(step)).sum())
    # float32, jitted or eager (other fusions): a cosine (d = 3) ≤ 5·u off, × ‖x‖ ≤ 1.8 in
    # a logit, ≤ 2 logit errors a loss: ≤ 4·18·u on a sum of 6.7, 6e-7 relative; 1e-6.
    np.testing.assert_allclose(
        f(10), losses.sphereface(x, w, y, lambda_=float(sched(10))).sum(), rtol=1e-6
    )


@pytest.mark.parametrize("module", [angular, engine, geometry, schedules])
def test_docstring_examples_run(module):
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
