"""Tests of the Euclidean family against float64 NumPy references written from the formulas."""

import doctest
import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import needs_devices
from jax.sharding import PartitionSpec as P
from jax.test_util import check_grads

from faceloss_jax import losses
from faceloss_jax.losses import _validation, euclidean

# ---------------------------------------------------------------------------
# References: float64 NumPy, explicit loops, straight from the papers.


def ref_contrastive_pair(x0, x1, same, margin):
    total = 0.0
    for a, b, y in zip(x0, x1, same, strict=True):
        dist = np.linalg.norm(a - b)
        total += y * dist**2 + (1 - y) * max(0.0, margin - dist) ** 2
    return total / 2 / len(x0)


def classic_pytorch_contrastive(x0, x1, y, margin):
    """The classic `ContrastiveLoss.forward`, transcribed line by line into NumPy."""
    diff = x0 - x1
    dist_sq = np.sum(np.power(diff, 2), 1)
    dist = np.sqrt(dist_sq)
    mdist = margin - dist
    dist = np.clip(mdist, 0.0, None)
    loss = y * dist_sq + (1 - y) * np.power(dist, 2)
    return np.sum(loss) / 2.0 / x0.shape[0]


def ref_contrastive(x, labels, margin):
    terms = []
    for i, j in itertools.combinations(range(len(x)), 2):
        dist = np.linalg.norm(x[i] - x[j])
        if labels[i] == labels[j]:
            terms.append(0.5 * dist**2)
        else:
            terms.append(0.5 * max(0.0, margin - dist) ** 2)
    return np.mean(terms) if terms else 0.0


def ref_triplet(a, p, n, margin):
    return np.array(
        [
            max(0.0, np.sum((ai - pi) ** 2) - np.sum((ai - ni) ** 2) + margin)
            for ai, pi, ni in zip(a, p, n, strict=True)
        ]
    )


def ref_sq_dist(x):
    return np.array([[np.sum((a - b) ** 2) for b in x] for a in x])


def ref_mined_triplet_loss(x, labels, margin, mining):
    """Brute-force mining; returns (loss, number of semi-hard fallbacks)."""
    d = ref_sq_dist(x)
    batch = len(x)
    pos = {a: [p for p in range(batch) if p != a and labels[p] == labels[a]] for a in range(batch)}
    neg = {a: [n for n in range(batch) if labels[n] != labels[a]] for a in range(batch)}
    hinges, fallbacks = [], 0
    for a in range(batch):
        if mining == "batch_all":
            for p in pos[a]:
                for n in neg[a]:
                    h = d[a, p] - d[a, n] + margin
                    if h > 0:
                        hinges.append(h)
        elif mining == "batch_hard":
            if pos[a] and neg[a]:
                d_ap = max(d[a, p] for p in pos[a])
                d_an = min(d[a, n] for n in neg[a])
                hinges.append(max(0.0, d_ap - d_an + margin))
        elif neg[a]:  # semi_hard
            for p in pos[a]:
                farther = [d[a, n] for n in neg[a] if d[a, n] > d[a, p]]
                if farther:
                    d_an = min(farther)
                else:
                    d_an = max(d[a, n] for n in neg[a])
                    fallbacks += 1
                hinges.append(max(0.0, d[a, p] - d_an + margin))
    return (np.mean(hinges) if hinges else 0.0), fallbacks


def ref_center_loss(x, centers, labels):
    return np.array([0.5 * np.sum((xi - centers[y]) ** 2) for xi, y in zip(x, labels, strict=True)])


def ref_update_centers(centers, x, labels, alpha):
    new = centers.copy()
    for j in range(len(centers)):
        members = [xi for xi, y in zip(x, labels, strict=True) if y == j]
        step = sum((centers[j] - xi for xi in members), np.zeros_like(centers[j]))
        new[j] = centers[j] - alpha * step / (1 + len(members))
    return new


# ---------------------------------------------------------------------------
# Inputs.


def _normal(seed, *shape, scale=1.0):
    return scale * np.random.default_rng(seed).normal(size=shape)


def _labels(seed, batch, num_classes):
    """Random labels with a singleton (an anchor without positive) in the last slot."""
    labels = np.random.default_rng(seed + 1).integers(0, num_classes, batch)
    labels[-1] = num_classes
    return labels


SHAPES = [(5, 2), (12, 4)]

# Value tests run jitted (one compilation per shape; the margin is a traced argument);
# the eager path is exercised by the doctests and the bad-input tests.
contrastive_pair_loss = jax.jit(losses.contrastive_pair_loss)
contrastive_loss = jax.jit(losses.contrastive_loss)
triplet_loss = jax.jit(losses.triplet_loss)
triplet_margin_loss = jax.jit(losses.triplet_margin_loss, static_argnames="mining")


# ---------------------------------------------------------------------------
# Values against the references.


@pytest.mark.parametrize("batch,dim", SHAPES)
def test_contrastive_pair_loss_matches_reference(batch, dim):
    x0, x1 = _normal(batch, batch, dim, scale=0.7), _normal(batch + 1, batch, dim, scale=0.7)
    same = np.random.default_rng(batch).integers(0, 2, batch)
    assert 0 < np.sum(same) < batch  # both terms are exercised
    for margin in (1.0, 2.5):
        got = contrastive_pair_loss(
            x0.astype(np.float32), x1.astype(np.float32), same.astype(bool), margin=margin
        )
        # float32 differences of rounded inputs: a distance d within (dim + 2)·u relative;
        # the hinge (m − d)² magnifies that by 2·d/(m − d) ≤ 20 here (the active pairs
        # have (m − d)/d ≥ 0.10): ≤ 120·u ≈ 7e-6 < 1e-5; measured 1.2e-7.
        np.testing.assert_allclose(got, ref_contrastive_pair(x0, x1, same, margin), rtol=1e-5)
        np.testing.assert_allclose(
            got, classic_pytorch_contrastive(x0, x1, same, margin), rtol=1e-5
        )


@pytest.mark.parametrize("batch,dim", SHAPES)
def test_contrastive_loss_matches_reference_and_pair_form(batch, dim):
    x, labels = _normal(batch, batch, dim), _labels(batch, batch, 3)
    i, j = np.triu_indices(batch, k=1)
    for margin in (1.0, 3.0):
        got = contrastive_loss(x.astype(np.float32), labels, margin=margin)
        atol = _contrastive_atol(x, margin)
        np.testing.assert_allclose(got, ref_contrastive(x, labels, margin), rtol=0, atol=atol)
        pairs = contrastive_pair_loss(x[i], x[j], labels[i] == labels[j], margin=margin)
        # The pair form's differences are within (d + 2)·u of D (test above), far inside
        # the Gram form's bound: the same atol bounds the two float32 values' difference.
        np.testing.assert_allclose(got, pairs, rtol=0, atol=atol)


@pytest.mark.parametrize("batch,dim", SHAPES)
def test_triplet_loss_matches_reference(batch, dim):
    a, p, n = (_normal(batch + k, batch, dim, scale=0.3) for k in range(3))
    got = triplet_loss(a, p, n, margin=0.2)
    assert got.shape == (batch,)
    expected = ref_triplet(a, p, n, 0.2)
    # float32 distances of differences, each within (dim + 2)·u relative, so a hinge
    # within 6·u·(d_ap + d_an) ≤ 6·u·2.8 ≈ 1e-6 absolute (atol; measured 5.5e-8).
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert 0 < np.count_nonzero(expected) < batch  # hinge active and inactive


def _contrastive_atol(x, margin):
    """The in-batch contrastive loss reads D² in the Gram form, within δ = ``_gram_atol``
    absolute; ½D² then moves by ½δ and ½max(0, m − D)² by (m − D)·δ/(2D) (dD = dD²/2D),
    so their mean over the pairs by at most the largest of these factors times δ."""
    d = np.sqrt(ref_sq_dist(x))[np.triu_indices(len(x), k=1)]
    hinge = np.where(d < margin, (margin - d) / (2 * d), 0.0)
    return _gram_atol(x, x) * max(0.5, float(np.max(hinge)))


def _gram_atol(a, b):
    """float32 ‖a‖² + ‖b‖² − 2·a·b against float64: the norms and the cross term
    (|2·a·b| ≤ ‖a‖² + ‖b‖²), d-term sums of rounded inputs, are each ≤ (d + 2)·u·(‖a‖² +
    ‖b‖²) off, and the subtraction cancels for near points, so the bound is absolute:
    2·(d + 2)·u·max(‖a‖² + ‖b‖²), ≤ 1.1e-5 for these shapes (measured ≤ 0.3 of it).
    A wrong formula (a sign, a missing square) is O(1) off."""
    na, nb = np.sum(np.square(a), -1), np.sum(np.square(b), -1)
    return 2 * (a.shape[-1] + 2) * 2.0**-24 * float(np.max(na[:, None] + nb[None, :]))


@pytest.mark.parametrize("batch,dim", SHAPES)
def test_pairwise_sq_distances_matches_reference(batch, dim):
    x = _normal(batch, batch, dim)
    got = jax.jit(losses.pairwise_sq_distances)(x.astype(np.float32))
    np.testing.assert_allclose(got, ref_sq_dist(x), rtol=0, atol=_gram_atol(x, x))
    assert np.all(np.diag(got) == 0)


def test_sq_distances_between_two_sets_match_bruteforce():
    a, b = _normal(1, 5, 3), _normal(2, 7, 3)
    expected = np.sum((a[:, None, :] - b[None, :, :]) ** 2, axis=-1)
    got = losses.sq_distances(a.astype(np.float32), b.astype(np.float32))
    assert got.shape == (5, 7) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=0, atol=_gram_atol(a, b))
    assert losses.sq_distances(a.astype(jnp.bfloat16), b.astype(np.float32)).dtype == np.float32
    with pytest.raises(ValueError, match="sq_distances"):
        losses.sq_distances(a[0], b)


@pytest.mark.parametrize("mining", losses.MININGS)
@pytest.mark.parametrize("batch,dim", SHAPES)
def test_triplet_margin_loss_matches_bruteforce(mining, batch, dim):
    x, labels = _normal(batch, batch, dim), _labels(batch, batch, 3)
    for margin in (0.2, 2.0):
        got = triplet_margin_loss(x.astype(np.float32), labels, margin=margin, mining=mining)
        expected, _ = ref_mined_triplet_loss(x, labels, margin, mining)
        # Each hinge D²_ap − D²_an + α reads two Gram-form D², each within δ = _gram_atol
        # absolute, so each term and their mean within 2δ; a miner that picks another
        # candidate within δ of the best changes the value by less than that too.
        np.testing.assert_allclose(got, expected, rtol=0, atol=2 * _gram_atol(x, x))
        assert expected > 0


def test_semi_hard_fallback_matches_bruteforce():
    # Anchor 2's positive (3) is farther than every negative: the fallback
    # takes the farthest negative (0), whose hinge 3.8025 - 1.1025 + 0.2 > 0.
    x, labels = np.array([[0.0], [1.0], [1.05], [3.0]]), np.array([0, 0, 1, 1])
    expected, fallbacks = ref_mined_triplet_loss(x, labels, 0.2, "semi_hard")
    assert fallbacks == 1
    got = triplet_margin_loss(x.astype(np.float32), labels, mining="semi_hard")
    # 1-D points of magnitude ≤ 3: every D² within a few u of 9, the hinge ≈ 2.9 within
    # ~16·u·9 ≈ 1e-5 absolute, i.e. ≤ 3e-6 relative < rtol 1e-5.
    np.testing.assert_allclose(got, expected, rtol=1e-5)


@pytest.mark.parametrize("seed", range(3))
def test_miners_select_the_bruteforce_triplets(seed):
    x, labels = _normal(seed, 9, 2), _labels(seed, 9, 3)
    d = ref_sq_dist(x)
    positive, negative, valid = map(np.asarray, jax.jit(losses.batch_hard_triplets)(d, labels))
    semi_negative, semi_valid = map(np.asarray, jax.jit(losses.semi_hard_triplets)(d, labels))
    for a in range(9):
        pos = [p for p in range(9) if p != a and labels[p] == labels[a]]
        neg = [n for n in range(9) if labels[n] != labels[a]]
        assert valid[a] == bool(pos and neg)
        if valid[a]:
            assert positive[a] == max(pos, key=lambda p: d[a, p])
            assert negative[a] == min(neg, key=lambda n: d[a, n])
        for p in range(9):
            assert semi_valid[a, p] == (p in pos and bool(neg))
            if semi_valid[a, p]:
                farther = [n for n in neg if d[a, n] > d[a, p]]
                want = (
                    min(farther, key=lambda n: d[a, n])
                    if farther
                    else max(neg, key=lambda n: d[a, n])
                )
                assert semi_negative[a, p] == want
    mask = np.asarray(jax.jit(losses.batch_all_triplets)(labels))
    assert mask.shape == (9, 9, 9)
    for a, p, n in itertools.product(range(9), repeat=3):
        assert mask[a, p, n] == (a != p and labels[a] == labels[p] and labels[a] != labels[n])


@pytest.mark.parametrize("mining", losses.MININGS)
def test_triplet_margin_loss_without_triplets_is_zero(mining):
    x = _normal(0, 4, 2)
    for labels in (np.zeros(4, int), np.arange(4)):  # no negative / no positive
        assert triplet_margin_loss(x, labels, mining=mining) == 0


@pytest.mark.parametrize("batch,dim,num_classes", [(6, 2, 3), (10, 5, 4)])
def test_center_loss_matches_reference(batch, dim, num_classes):
    x, centers = _normal(batch, batch, dim), _normal(batch + 1, num_classes, dim)
    labels = np.random.default_rng(batch).integers(0, num_classes, batch)
    got = jax.jit(losses.center_loss)(x.astype(np.float32), centers.astype(np.float32), labels)
    # float32 ½‖x − c‖² of differences of rounded inputs (no cancellation): ≤ (dim + 3)·u
    # ≈ 5e-7 relative; rtol 1e-5.
    np.testing.assert_allclose(got, ref_center_loss(x, centers, labels), rtol=1e-5)


def test_update_centers_matches_reference_with_repeated_labels():
    x, centers = _normal(0, 10, 3), _normal(1, 5, 3)
    labels = np.array([0, 0, 0, 2, 2, 1, 0, 2, 1, 0])  # class 3, 4 absent
    got = losses.update_centers(centers.astype(np.float32), x.astype(np.float32), labels, alpha=0.3)
    # float32: a class's ≤ 5 differences summed and scaled, ≤ 8·u·Σ|x − c| ≲ 5e-6
    # absolute in the worst case, ~√n·u in practice (measured 1e-7), against rtol 1e-5
    # of the updated centres (≥ 0.22) + atol 1e-6; a wrong count or α is O(0.1) off.
    np.testing.assert_allclose(
        got, ref_update_centers(centers, x, labels, 0.3), rtol=1e-5, atol=1e-6
    )
    np.testing.assert_array_equal(got[3:], centers[3:].astype(np.float32))
    assert got.dtype == jnp.float32


def test_update_centers_carries_no_gradient():
    x, centers, labels = _normal(0, 6, 2), _normal(1, 3, 2), np.array([0, 1, 1, 2, 0, 0])
    grads = jax.grad(lambda c, e: jnp.sum(losses.update_centers(c, e, labels)), argnums=(0, 1))(
        centers, x
    )
    assert all(np.all(g == 0) for g in grads)


def _sharded_update_inputs():
    x, centers = _normal(0, 8 * 3, 4), _normal(1, 5, 4)
    labels = np.random.default_rng(2).integers(0, 5, 8 * 3)
    return centers, x, labels  # float64 (the tests enable x64)


# The per-device centre updates psum the same per-class sums as the global update, in
# another order: float64 makes that n·u·Σ|x| ≤ 24 · 1.1e-16 · O(3) ≈ 1e-14; 1e-12.
CENTERS_TOL = {"rtol": 1e-12, "atol": 1e-12}


@needs_devices(8)
def test_update_centers_pmap_equals_global_batch(x64):
    centers, x, labels = _sharded_update_inputs()
    update = functools.partial(losses.update_centers, alpha=0.5, axis_name="i")
    per_device = jax.pmap(update, axis_name="i", in_axes=(None, 0, 0))(
        centers, x.reshape(8, 3, 4), labels.reshape(8, 3)
    )
    expected = losses.update_centers(centers, x, labels, alpha=0.5)
    for replica in per_device:
        np.testing.assert_allclose(replica, expected, **CENTERS_TOL)


@needs_devices(8)
def test_update_centers_shard_map_equals_global_batch(x64):
    centers, x, labels = _sharded_update_inputs()
    mesh = jax.make_mesh((8,), ("i",))
    update = jax.shard_map(
        functools.partial(losses.update_centers, axis_name="i"),
        mesh=mesh,
        in_specs=(P(), P("i"), P("i")),
        out_specs=P(),
    )
    sharded = jax.sharding.NamedSharding(mesh, P("i"))
    got = jax.jit(update)(centers, jax.device_put(x, sharded), jax.device_put(labels, sharded))
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, losses.update_centers(centers, x, labels), **CENTERS_TOL)


# ---------------------------------------------------------------------------
# Transformations and gradients. Each case: (name, fn of float inputs, float inputs).


def _cases(seed=0, dtype=np.float64):
    x, labels = _normal(seed, 7, 3).astype(dtype), _labels(seed, 7, 2)
    y, z = _normal(seed + 1, 7, 3).astype(dtype), _normal(seed + 2, 7, 3).astype(dtype)
    centers = _normal(seed + 3, 3, 3).astype(dtype)
    same = labels == np.roll(labels, 1)
    center_labels = labels % 3
    return {
        "contrastive_pair": (
            lambda a, b: losses.contrastive_pair_loss(a, b, same, margin=2.0),
            (x, y),
        ),
        "contrastive": (lambda a: losses.contrastive_loss(a, labels, margin=2.0), (x,)),
        "triplet": (lambda a, b, c: losses.triplet_loss(a, b, c, margin=0.5), (x, y, z)),
        **{
            f"triplet_{m}": (
                functools.partial(
                    lambda a, m: losses.triplet_margin_loss(a, labels, margin=1.0, mining=m), m=m
                ),
                (x,),
            )
            for m in losses.MININGS
        },
        "center": (lambda a, c: losses.center_loss(a, c, center_labels), (x, centers)),
        "update_centers": (lambda c, a: losses.update_centers(c, a, center_labels), (centers, x)),
    }


CASES = list(_cases())
DIFFERENTIABLE = [name for name in CASES if name != "update_centers"]


def _jit_value_and_grads(fn, num_args):
    return jax.jit(jax.value_and_grad(lambda *a: jnp.sum(fn(*a)), argnums=tuple(range(num_args))))


@pytest.mark.parametrize("name", DIFFERENTIABLE)
def test_check_grads_float64(name, x64):
    fn, args = _cases()[name]
    check_grads(jax.jit(fn), args, order=1, modes=("fwd", "rev"))


@pytest.mark.parametrize("name", DIFFERENTIABLE)
def test_finite_grads_at_zero_distance(name):
    fn, args = _cases(dtype=np.float32)[name]
    value_and_grads = _jit_value_and_grads(fn, len(args))
    for point in (args[0][:1], np.zeros_like(args[0][:1])):  # coincident, zero vectors
        value, grads = value_and_grads(*(np.broadcast_to(point, a.shape) for a in args))
        assert np.isfinite(value)
        assert all(np.all(np.isfinite(g)) for g in grads)
        if name == "contrastive_pair":  # different pairs at distance 0 pay ½m² each
            assert value > 0


@pytest.mark.parametrize("name", DIFFERENTIABLE)
def test_bfloat16_inputs_give_float32_losses_and_finite_grads(name):
    fn, args = _cases(dtype=np.float32)[name]
    low = tuple(jnp.asarray(a, jnp.bfloat16) for a in args)
    value, grads = _jit_value_and_grads(fn, len(args))(*low)
    assert value.dtype == jnp.float32
    assert all(
        g.dtype == jnp.bfloat16 and np.all(np.isfinite(np.asarray(g, np.float32))) for g in grads
    )
    # Computed in float32: the same value as on the upcast inputs (the same float32
    # operations on the same values; ≤ 16·u allows another fusion's few roundings).
    upcast = tuple(a.astype(jnp.float32) for a in low)
    np.testing.assert_allclose(value, jax.jit(lambda *a: jnp.sum(fn(*a)))(*upcast), rtol=1e-6)


@pytest.mark.parametrize("name", CASES)
def test_jit_and_vmap_equal_unbatched(name):
    fn, _ = _cases()[name]
    stacked = [_cases(seed=s, dtype=np.float32)[name][1] for s in range(3)]
    batched = tuple(np.stack(parts) for parts in zip(*stacked, strict=True))
    jitted = jax.jit(fn)
    expected = np.stack([jitted(*args) for args in stacked])
    # The same float32 operations, batched: only the order of the ≤ 64-term sums may
    # change, ≤ 2·64·u·Σ|terms| ≈ 7.6e-6 of values of order 1 (rtol 1e-5, atol 1e-6 for
    # the zeros of inactive hinges); a wrong batching axis is O(1) off.
    np.testing.assert_allclose(jax.jit(jax.vmap(fn))(*batched), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(fn(*stacked[0]), expected[0], rtol=1e-5, atol=1e-6)  # eager


# ---------------------------------------------------------------------------
# Bad input.

X, LABELS, CENTERS = (
    np.zeros((4, 2), np.float32),
    np.array([0, 1, 0, 1]),
    np.zeros((2, 2), np.float32),
)
LABELED = {
    "contrastive_loss": lambda x, y: losses.contrastive_loss(x, y),
    "triplet_margin_loss": lambda x, y: losses.triplet_margin_loss(x, y),
    "center_loss": lambda x, y: losses.center_loss(x, CENTERS, y),
    "update_centers": lambda x, y: losses.update_centers(CENTERS, x, y),
}


@pytest.mark.parametrize("name", LABELED)
def test_bad_embeddings_and_labels(name):
    fn = LABELED[name]
    with pytest.raises(TypeError, match=f"{name}: labels must have an integer dtype, got float32"):
        fn(X, LABELS.astype(np.float32))
    with pytest.raises(ValueError, match=r"embeddings \(B, d\) must have rank 2, got shape \(4,\)"):
        fn(X[:, 0], LABELS)
    with pytest.raises(ValueError, match=r"labels \(B,\) must have rank 1"):
        fn(X, LABELS[:, None])
    with pytest.raises(ValueError, match="batch sizes differ: embeddings 4, labels 3"):
        jax.jit(fn)(X, LABELS[:3])  # shape checks run at trace time


@pytest.mark.parametrize("fn", [losses.center_loss, lambda x, c, y: losses.update_centers(c, x, y)])
def test_center_labels_out_of_range_and_dimension(fn):
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\); got 2 at index 3"):
        fn(X, CENTERS, np.array([0, 1, 0, 2]))
    with pytest.raises(ValueError, match=r"got -1 at index 0 \(2 labels out of range\)"):
        fn(X, CENTERS, np.array([-1, 1, 5, 1]))
    with pytest.raises(ValueError, match="embeddings have dimension 2 but centers have 3"):
        fn(X, np.zeros((2, 3)), LABELS)


def test_bad_pair_and_triplet_shapes():
    with pytest.raises(
        ValueError, match=r"contrastive_pair_loss: shapes differ: x0 \(4, 2\), x1 \(3, 2\)"
    ):
        losses.contrastive_pair_loss(X, X[:3], LABELS)
    with pytest.raises(ValueError, match="contrastive_pair_loss: batch sizes differ: x0 4, same 3"):
        losses.contrastive_pair_loss(X, X, LABELS[:3])
    with pytest.raises(ValueError, match=r"triplet_loss: shapes differ: .* negative \(4, 3\)"):
        losses.triplet_loss(X, X, np.zeros((4, 3)))
    with pytest.raises(ValueError, match=r"sq_distances must have shape \(B, B\) = \(4, 4\)"):
        losses.semi_hard_triplets(np.zeros((4, 3)), LABELS)


def test_unknown_mining_lists_the_options():
    with pytest.raises(
        ValueError,
        match="unknown mining 'hardest'; expected one of .*batch_all.*batch_hard.*semi_hard",
    ):
        losses.triplet_margin_loss(X, LABELS, mining="hardest")


# ---------------------------------------------------------------------------
# Documentation.


@pytest.mark.slow  # 10-20 s of a loaded 2-core run (--durations, 2026-12-05)
@pytest.mark.parametrize("module", [euclidean, _validation], ids=lambda m: m.__name__)
def test_docstring_examples_run(module):
    failed, attempted = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert attempted > 0 and failed == 0
