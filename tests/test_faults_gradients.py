"""Gradients where the audit of issue 18 found that no test looked (faults 1–4).

Each test names the fault it guards. The references are float64 NumPy: the papers'
formulas in ``tests/reference.py`` / ``tests/reference_successors.py`` (with arccos and
cos(mθ), not the library's formulation), differentiated by central finite differences,
and, for Circle loss and AdaFace, the same formulas with α / the feature norm frozen at
the evaluation point, as the papers' reference code stops their gradient.

1. well-classified samples (θ_y ∈ {1e-3, 0.02, 0.05}) and near π, every angular loss;
2. class-sharded Partial FC sampling at rate < 1 against the dense loss on the gathered
   sampled columns, and shards drawing different classes;
3. bfloat16 gradients against float32 for the dense, chunked and sharded heads;
4. Circle loss and AdaFace against NumPy gradients with α / the norm held fixed.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import reference as ref
import reference_successors as ref_s
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from faceloss_jax import losses

# ------------------------------------------------------------------------------------
# Helpers: inputs at a chosen target angle, finite differences in float64.
# ------------------------------------------------------------------------------------

ANGLES = (1e-3, 0.02, 0.05, np.pi - 0.02, np.pi - 1e-3)
B, D, C = 2, 4, 5


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def _at_angle(theta: float, seed: int = 0, subcenters: int = 0):
    """x (B, d), W (d, C) [or (d, C, K)], y: each target column at angle θ from its x.

    A hard negative sits 0.4 rad from each x (so that the softmax is not saturated and
    every gradient is O(0.1–1)); the other columns are random.
    """
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(B, D)) * np.array([[3.0], [5.0]])
    w = rng.normal(size=(D, C))
    y = np.array([0, 2])
    for i, label in enumerate(y):
        xh = _unit(x[i])
        u = rng.normal(size=D)
        u = _unit(u - (u @ xh) * xh)
        w[:, label] = 1.3 * (np.cos(theta) * xh + np.sin(theta) * u)
        v = rng.normal(size=D)
        v = _unit(v - (v @ xh) * xh - (v @ u) * u)
        w[:, label + 1] = 0.8 * (np.cos(0.4) * xh + np.sin(0.4) * v)
    if subcenters:  # the target sub-centre as above, the other sub-centres random
        w = np.stack([w] + [rng.normal(size=(D, C)) for _ in range(subcenters - 1)], -1)
    return x, w, y


def _fd(f: Callable[[np.ndarray], float], a: np.ndarray, h: float = 1e-6) -> np.ndarray:
    """Central finite differences of a float64 scalar function."""
    g = np.zeros_like(a)
    for idx in np.ndindex(a.shape):
        ap, am = a.copy(), a.copy()
        ap[idx] += h
        am[idx] -= h
        g[idx] = (f(ap) - f(am)) / (2 * h)
    return g


def _assert_grad_close(got, want, rtol: float, what: str) -> None:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    err = np.linalg.norm(got - want) / max(np.linalg.norm(want), 1e-30)
    assert err < rtol, f"{what}: relative gradient error {err:.3g}\n{got}\nvs\n{want}"


# ------------------------------------------------------------------------------------
# Fault 1: gradients of well-classified samples, and near π.
# ------------------------------------------------------------------------------------

STATS = (7.0, 3.0)  # AdaFace (μ, σ) with ẑ inside (−1, 1) for norms 3 and 5


def _adaface_fixed_norm(x, w, y, norms, *, scale, margin, h, mean, std):
    """AdaFace's loss (reference_successors.adaface) with the norms given, not from x."""
    eps = 1e-3
    cos = ref_s.cosines(x, w)
    z_hat = np.clip(h * (np.clip(norms, 1e-3, 100) - mean) / (std + eps), -1, 1)
    theta_y = np.arccos(cos[np.arange(len(y)), y])
    target = np.cos(np.clip(theta_y - margin * z_hat, eps, np.pi - eps)) - margin * z_hat - margin
    logits = scale * cos
    logits[np.arange(len(y)), y] = scale * target
    return ref_s.cross_entropy(logits, y)


def _core(name: str, **hp):
    return (
        lambda x, w, y: getattr(losses, name)(x, w, y, **hp),
        lambda x, w, y, x0: ref.loss(name, x, w, y, **hp),
    )


# id -> (library loss (x, w, y) -> (B,), reference (x, w, y, x0) -> (B,), sub-centres)
ANGULAR = {
    "softmax": (*_core("softmax_cross_entropy"), 0),
    "normface": (*_core("normface", scale=16.0), 0),
    "cosface": (*_core("cosface", scale=16.0, margin=0.35), 0),
    "arcface": (*_core("arcface", scale=16.0, margin=0.5), 0),
    "arcface_easy": (*_core("arcface", scale=16.0, margin=0.5, easy_margin=True), 0),
    "combined": (*_core("combined_margin", scale=16.0, m1=0.9, m2=0.3, m3=0.2), 0),
    "lsoftmax": (*_core("large_margin_softmax", margin=3, lambda_=1.0), 0),
    "sphereface": (*_core("sphereface", margin=4), 0),
    "subcenter_arcface": (
        lambda x, w, y: losses.subcenter_arcface(x, w, y, scale=16.0, margin=0.5),
        lambda x, w, y, x0: ref_s.subcenter_arcface(x, w, y, scale=16.0, margin=0.5),
        3,
    ),
    "curricularface": (
        lambda x, w, y: losses.curricularface(x, w, y, 0.3, scale=16.0, margin=0.5),
        lambda x, w, y, x0: ref_s.curricularface(x, w, y, 0.3, scale=16.0, margin=0.5),
        0,
    ),
    "magface": (
        lambda x, w, y: losses.magface(
            x,
            w,
            y,
            scale=16.0,
            lower_norm=1.0,
            upper_norm=11.0,
            lower_margin=0.1,
            upper_margin=0.5,
            lambda_g=3.5,
        ),
        lambda x, w, y, x0: ref_s.magface(
            x,
            w,
            y,
            scale=16.0,
            lower_norm=1.0,
            upper_norm=11.0,
            lower_margin=0.1,
            upper_margin=0.5,
            lambda_g=3.5,
        ),
        0,
    ),
    "adaface": (
        lambda x, w, y: losses.adaface(
            x,
            w,
            y,
            losses.AdaFaceStats(jnp.asarray(STATS[0]), jnp.asarray(STATS[1])),
            scale=16.0,
            margin=0.4,
            h=0.333,
        ),
        lambda x, w, y, x0: _adaface_fixed_norm(
            x,
            w,
            y,
            np.linalg.norm(x0, axis=1),
            scale=16.0,
            margin=0.4,
            h=0.333,
            mean=STATS[0],
            std=STATS[1],
        ),
        0,
    ),
    "elasticface_arc": (
        lambda x, w, y: losses.elasticface_arc(
            x, w, y, jax.random.key(0), scale=16.0, margin=0.5, sigma=0.0
        ),
        lambda x, w, y, x0: ref_s.elasticface(
            x, w, y, np.full(len(y), 0.5), kind="arc", scale=16.0
        ),
        0,
    ),
    "elasticface_cos": (
        lambda x, w, y: losses.elasticface_cos(
            x, w, y, jax.random.key(0), scale=16.0, margin=0.35, sigma=0.0
        ),
        lambda x, w, y, x0: ref_s.elasticface(
            x, w, y, np.full(len(y), 0.35), kind="cos", scale=16.0
        ),
        0,
    ),
    "adacos": (
        lambda x, w, y: losses.adacos(x, w, y, scale=16.0),
        lambda x, w, y, x0: ref_s.normface(x, w, y, scale=16.0),
        0,
    ),
}


@pytest.mark.parametrize("name", list(ANGULAR))
def test_gradient_of_well_classified_and_near_pi_samples(x64, name):
    """Fault 1: a clipped sqrt/arccos whose floor is too high (``tiny`` 1e-12 → 1e-2 in
    ArcFace's sin θ, ``safe_arccos``'s eps 1e-6 → 1e-2) changes the gradient at small θ,
    where random-input ``check_grads`` never looks. Every angular loss, float64, against
    finite differences of the float64 reference at θ_y ∈ {1e-3, 0.02, 0.05, π − 0.02,
    π − 1e-3}."""
    fn, reference, subcenters = ANGULAR[name]
    grad = jax.jit(jax.grad(lambda x, w, y: fn(x, w, y).sum(), (0, 1)))
    for theta in ANGLES:
        x, w, y = _at_angle(theta, subcenters=subcenters)
        gx, gw = grad(x, w, y)
        rx = _fd(lambda a: reference(a, w, y, x).sum(), x)
        rw = _fd(lambda a: reference(x, a, y, x).sum(), w)
        _assert_grad_close(gx, rx, 1e-5, f"{name} d/dx at θ = {theta:.4g}")
        _assert_grad_close(gw, rw, 1e-5, f"{name} d/dW at θ = {theta:.4g}")


# ------------------------------------------------------------------------------------
# Fault 2: class-sharded Partial FC sampling at rate < 1.
# ------------------------------------------------------------------------------------

N = 8  # host devices (tests/conftest.py)


@pytest.fixture(scope="module")
def mesh() -> Mesh:
    assert jax.device_count() == N, "tests/conftest.py must set 8 host devices"
    return Mesh(np.array(jax.devices()), ("d",))


def _sharded_sampled(mesh, key, x, w, y, rate, **hp):
    """Sampled, class-sharded ArcFace on ``mesh``: the loss, its gradients, every device's
    sampled local columns (N, K) and the sampled labels as each label's owner gives them
    (the other devices only need them outside their own block)."""
    block = w.shape[1] // N

    def local(x, w, y):
        classes, y_s = losses.sample_classes(key, y, block, sample_rate=rate, class_axis_name="d")
        loss = losses.arcface(x, w[:, classes], y_s, class_axis_name="d", **hp)
        return loss, classes[None], y_s[None]

    fn = jax.shard_map(
        local, mesh=mesh, in_specs=(P(), P(None, "d"), P()), out_specs=(P(), P("d"), P("d"))
    )
    (value, (classes, y_s)), grads = jax.jit(
        jax.value_and_grad(
            lambda x, w: (lambda out: (out[0].sum(), out[1:]))(fn(x, w, y)), (0, 1), has_aux=True
        )
    )(x, w)
    owner = np.asarray(y) // block
    return value, grads, np.asarray(classes), np.asarray(y_s)[owner, np.arange(len(y))]


def test_class_sharded_sampling_below_rate_one_equals_dense_on_sampled_columns(mesh):
    """Fault 2: at rate < 1 each device keeps K < C/N of its classes, so the sampled
    labels must index the concatenation of all devices' K-column blocks (``owner * K``,
    not ``owner * C/N``). The sharded, sampled loss and its gradients must equal the dense
    loss on the gathered sampled columns, with the labels re-indexed here by NumPy."""
    rng = np.random.default_rng(1)
    num_classes, rate = N * 32, 0.25  # 32 classes per device, K = 8
    x = rng.normal(size=(6, D)).astype(np.float32)
    w = rng.normal(size=(D, num_classes)).astype(np.float32)
    y = np.array([0, 31, 32, 100, 255, 200], np.int32)  # first/last of blocks, 5 devices
    hp = {"scale": 16.0, "margin": 0.5}
    value, (gx, gw), classes, y_s = _sharded_sampled(
        mesh, jax.random.PRNGKey(5), x, w, y, rate, **hp
    )
    k = losses.num_sampled(num_classes // N, rate, len(y))
    assert classes.shape == (N, k) and k < num_classes // N
    columns = (classes + (num_classes // N) * np.arange(N)[:, None]).reshape(-1)
    assert set(y) <= set(columns), "every positive is sampled"
    y_expected = np.array([np.flatnonzero(columns == label)[0] for label in y])
    np.testing.assert_array_equal(y_s, y_expected)

    dense_value, (dx, dw_sampled) = jax.jit(
        jax.value_and_grad(lambda x, w: losses.arcface(x, w, y_expected, **hp).sum(), (0, 1))
    )(x, w[:, columns])
    dw = np.zeros_like(w)
    dw[:, columns] = dw_sampled
    np.testing.assert_allclose(value, dense_value, rtol=1e-5)
    np.testing.assert_allclose(gx, dx, rtol=2e-4, atol=2e-5)
    np.testing.assert_allclose(gw, dw, rtol=2e-4, atol=2e-5)  # 0 off the sample


def test_class_sharded_shards_draw_different_classes(mesh):
    """Fault 2: every device must fold its own index into the sampling key; with the same
    key, devices without positives would draw the same local columns."""
    rng = np.random.default_rng(2)
    x = rng.normal(size=(4, D)).astype(np.float32)
    w = rng.normal(size=(D, N * 32)).astype(np.float32)
    y = np.array([0, 1, 2, 3], np.int32)  # all positives on device 0
    _, _, classes, _ = _sharded_sampled(mesh, jax.random.PRNGKey(0), x, w, y, 0.25)
    negatives_only = {tuple(row) for row in classes[1:]}
    assert len(negatives_only) == N - 1, classes


# ------------------------------------------------------------------------------------
# Fault 3: bfloat16 gradients against float32 ones.
# ------------------------------------------------------------------------------------

BF16_LAYOUTS = {
    "dense": {},
    "chunked": {"chunk_size": 3},
    "class_sharded_chunked": {"class_axis_name": "d", "chunk_size": 2},
}


@pytest.mark.slow  # 10-20 s of a loaded 2-core run (--durations, 2026-12-05)
def test_bfloat16_gradients_match_float32(mesh):
    """Fault 3: bfloat16 inputs must give the float32 gradients up to bfloat16 rounding
    (~1e-2 relative), in every layout; a backward pass that mis-weights the non-target
    probabilities for 16-bit weights (e.g. doubles them: +46 %) is far outside. ArcFace
    (normalized, with a margin); every layout in one compiled function."""
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.normal(size=(8, 8)), jnp.bfloat16)
    w = jnp.asarray(rng.normal(size=(8, 40)), jnp.bfloat16)
    y = jnp.asarray(rng.integers(0, 40, 8), jnp.int32)

    def loss(x, w, kwargs):
        fn = lambda x, w, y: losses.arcface(x, w, y, scale=16.0, margin=0.5, **kwargs)  # noqa: E731
        if "class_axis_name" in kwargs:
            fn = jax.shard_map(fn, mesh=mesh, in_specs=(P(), P(None, "d"), P()), out_specs=P())
        return fn(x, w, y).sum()

    @jax.jit
    def all_grads(x, w):
        return {
            (layout, dtype.__name__): jax.grad(loss, (0, 1))(x.astype(dtype), w.astype(dtype), kw)
            for layout, kw in BF16_LAYOUTS.items()
            for dtype in (jnp.bfloat16, jnp.float32)
        }

    grads = all_grads(x, w)
    for layout in BF16_LAYOUTS:
        (gx16, gw16), (gx32, gw32) = grads[layout, "bfloat16"], grads[layout, "float32"]
        assert gx16.dtype == gw16.dtype == jnp.bfloat16
        _assert_grad_close(gx16, gx32, 2e-2, f"{layout} d/dx")
        _assert_grad_close(gw16, gw32, 2e-2, f"{layout} d/dW")


# ------------------------------------------------------------------------------------
# Fault 4: Circle loss and AdaFace, with α / the feature norm held fixed.
# ------------------------------------------------------------------------------------


def _circle_fixed_alpha(sim, sim0, positive, negative, gamma, m):
    """Circle loss (Eq. 1) per row, α_p = [1 + m − s_p]₊ and α_n = [s_n + m]₊ evaluated
    at the similarities ``sim0`` (frozen, as in the paper's code), Δ_p = 1 − m, Δ_n = m."""
    out = []
    for i in range(sim.shape[0]):
        sp, sn = sim[i, positive[i]], sim[i, negative[i]]
        ap = np.maximum(1 + m - sim0[i, positive[i]], 0)
        an = np.maximum(sim0[i, negative[i]] + m, 0)
        if len(sp) == 0 or len(sn) == 0:
            out.append(0.0)
            continue
        logit_p, logit_n = -gamma * ap * (sp - (1 - m)), gamma * an * (sn - m)
        out.append(np.logaddexp(0.0, np.logaddexp.reduce(logit_n) + np.logaddexp.reduce(logit_p)))
    return np.array(out)


def test_circle_gradients_hold_alpha_fixed(x64):
    """Fault 4: Circle loss's weights α_p, α_n carry no gradient (Sun et al., CVPR 2020,
    and their code); letting it flow changes the gradient by ~50 %. Class-level and
    pair-level forms, against finite differences of NumPy with α frozen."""
    rng = np.random.default_rng(4)
    x, w = rng.normal(size=(6, D)), rng.normal(size=(D, C))
    y = np.array([0, 1, 2, 0, 1, 4])
    gamma, m = 4.0, 0.25
    others = ~np.eye(C, dtype=bool)[y]

    def class_level(x, w, x0, w0):
        sim, sim0 = ref_s.cosines(x, w), ref_s.cosines(x0, w0)
        return _circle_fixed_alpha(sim, sim0, ~others, others, gamma, m).sum()

    gx, gw = jax.jit(
        jax.grad(lambda x, w: losses.circle_loss(x, w, y, scale=gamma, margin=m).sum(), (0, 1))
    )(x, w)
    _assert_grad_close(gx, _fd(lambda a: class_level(a, w, x, w), x), 1e-6, "circle d/dx")
    _assert_grad_close(gw, _fd(lambda a: class_level(x, a, x, w), w), 1e-6, "circle d/dW")

    same = y[:, None] == y[None, :]

    def pair_level(x, x0):
        sim, sim0 = ref_s.cosines(x, x.T), ref_s.cosines(x0, x0.T)
        return _circle_fixed_alpha(sim, sim0, same & ~np.eye(6, dtype=bool), ~same, gamma, m)

    gx = jax.jit(jax.grad(lambda x: losses.circle_pair_loss(x, y, scale=gamma, margin=m).sum()))(x)
    _assert_grad_close(gx, _fd(lambda a: pair_level(a, x).sum(), x), 1e-6, "circle_pair d/dx")


def test_adaface_gradient_holds_the_norm_fixed(x64):
    """Fault 4: AdaFace's feature norm ‖x‖ enters ẑ without a gradient (Kim et al., CVPR
    2022, and their code); the gradient w.r.t. x must be NumPy's with the norm frozen, for
    norms where ẑ is not clipped, and with the statistics (μ, σ) a constant."""
    rng = np.random.default_rng(5)
    x = rng.normal(size=(6, D))
    x *= rng.uniform(4.0, 10.0, size=(6, 1)) / np.linalg.norm(x, axis=1, keepdims=True)
    w = rng.normal(size=(D, C))
    y = np.array([0, 1, 2, 3, 4, 0])
    hp = {"scale": 8.0, "margin": 0.4, "h": 0.333}
    stats = losses.AdaFaceStats(mean=jnp.asarray(STATS[0]), std=jnp.asarray(STATS[1]))
    z_hat = 0.333 * (np.linalg.norm(x, axis=1) - STATS[0]) / (STATS[1] + 1e-3)
    assert np.all(np.abs(z_hat) < 1), "ẑ inside its clip: the norm would matter"

    def reference(x, w, x0):
        return _adaface_fixed_norm(
            x, w, y, np.linalg.norm(x0, axis=1), mean=STATS[0], std=STATS[1], **hp
        ).sum()

    gx, gw = jax.jit(jax.grad(lambda x, w, s: losses.adaface(x, w, y, s, **hp).sum(), (0, 1)))(
        x, w, stats
    )
    _assert_grad_close(gx, _fd(lambda a: reference(a, w, x), x), 1e-6, "adaface d/dx")
    _assert_grad_close(gw, _fd(lambda a: reference(x, a, x), w), 1e-6, "adaface d/dW")
