"""Global mining of the pair losses: with ``axis_name`` on 8 host devices, the pair and
triplet losses mine the global batch, and the mean over the axis of the per-device
values and gradients is the single-device loss of the whole batch and its gradient.

Each case maps inputs through a shared linear layer W (the "backbone"), so the test
checks the gradient a data-parallel train step applies: under ``shard_map`` with
``check_vma=False`` (the train step's mode) the per-device gradient, then ``pmean``;
with varying-axis types (``check_vma=True``) the gradient of ``pmean(loss)``; and
under ``pmap``. float64, so a tolerance of 1e-9 leaves room only for the order of sums.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import needs_devices
from jax.sharding import PartitionSpec as P

from faceloss_jax import losses

NUM_DEVICES, PER_DEVICE, DIM, FEATURES = 8, 4, 3, 5
pytestmark = needs_devices(8)
AXIS = "data"


def _memory(rng):
    memory = losses.xbm_init(16, DIM, dtype=jnp.float64)
    stored = jnp.asarray(rng.normal(size=(12, DIM)))
    return losses.xbm_enqueue(memory, stored, jnp.asarray(rng.integers(0, 4, 12)))


# name -> (embeddings, labels, memory, axis_name) -> scalar loss (this device's share).
CASES = {
    "contrastive": lambda x, y, m, axis: losses.contrastive_loss(x, y, margin=1.5, axis_name=axis),
    "triplet_batch_all": lambda x, y, m, axis: losses.triplet_margin_loss(
        x, y, margin=0.5, mining="batch_all", axis_name=axis
    ),
    "triplet_batch_hard": lambda x, y, m, axis: losses.triplet_margin_loss(
        x, y, margin=0.5, mining="batch_hard", axis_name=axis
    ),
    "triplet_semi_hard": lambda x, y, m, axis: losses.triplet_margin_loss(
        x, y, margin=0.5, mining="semi_hard", axis_name=axis
    ),
    # Per-sample losses: the step averages its own samples', as for the angular losses.
    "circle_pair": lambda x, y, m, axis: jnp.mean(
        losses.circle_pair_loss(x, y, scale=8.0, margin=0.25, axis_name=axis)
    ),
    "xbm_contrastive": lambda x, y, m, axis: losses.xbm_contrastive_loss(
        x, y, m, margin=1.5, axis_name=axis
    ),
    "xbm_triplet": lambda x, y, m, axis: losses.xbm_triplet_loss(
        x, y, m, margin=0.5, axis_name=axis
    ),
}


def _problem(seed=0):
    """Inputs (N, FEATURES), labels of 6 identities spread over the devices, W, memory."""
    rng = np.random.default_rng(seed)
    n = NUM_DEVICES * PER_DEVICE
    inputs = jnp.asarray(rng.normal(size=(n, FEATURES)))
    labels = jnp.asarray(rng.permutation(np.arange(n) % 6))  # ~5 of each, few per device
    weights = jnp.asarray(rng.normal(size=(FEATURES, DIM)) / np.sqrt(FEATURES))
    return inputs, labels, weights, _memory(rng)


def _dense(case, inputs, labels, weights, memory):
    fn = lambda w: CASES[case](inputs @ w, labels, memory, None)
    return jax.value_and_grad(fn)(weights)


def _mesh():
    return jax.sharding.Mesh(np.asarray(jax.devices()[:NUM_DEVICES]), (AXIS,))


def _shard_map(case, inputs, labels, weights, memory, *, check_vma):
    def per_device(w, x, y):
        if check_vma:  # typed: differentiate the global loss itself
            fn = lambda w: jax.lax.pmean(CASES[case](x @ w, y, memory, AXIS), AXIS)
            return jax.value_and_grad(fn)(w)
        value, grad = jax.value_and_grad(lambda w: CASES[case](x @ w, y, memory, AXIS))(w)
        return jax.lax.pmean(value, AXIS), jax.lax.pmean(grad, AXIS)  # the train step

    mapped = jax.shard_map(
        per_device,
        mesh=_mesh(),
        in_specs=(P(), P(AXIS), P(AXIS)),
        out_specs=(P(), P()),
        check_vma=check_vma,
    )
    return jax.jit(mapped)(weights, inputs, labels)


def _pmap(case, inputs, labels, weights, memory):
    def per_device(w, x, y):
        value, grad = jax.value_and_grad(lambda w: CASES[case](x @ w, y, memory, AXIS))(w)
        return jax.lax.pmean(value, AXIS), jax.lax.pmean(grad, AXIS)

    split = lambda a: a.reshape(NUM_DEVICES, PER_DEVICE, *a.shape[1:])
    value, grad = jax.pmap(per_device, axis_name=AXIS, in_axes=(None, 0, 0))(
        weights, split(inputs), split(labels)
    )
    return value[0], grad[0]


@pytest.mark.parametrize("case", list(CASES))
def test_global_mining_equals_the_single_device_loss_and_gradient(x64, case):
    problem = _problem()
    value, grad = _dense(case, *problem)
    assert float(value) > 0 and np.all(np.isfinite(grad))
    runs = {"shard_map": functools.partial(_shard_map, check_vma=False)}  # the train step's
    if case in ("contrastive", "triplet_semi_hard", "circle_pair"):  # the other layouts
        runs |= {"shard_map typed": functools.partial(_shard_map, check_vma=True), "pmap": _pmap}
    for layout, run in runs.items():
        got_value, got_grad = run(case, *problem)
        # float64: the layouts add the same 32 × 32 pair terms in another order, off by
        # n·u·(1 + γ)·Σ|terms| ≈ 1e3 · 1.1e-16 · 9 ≈ 1e-12 of the largest gradient element
        # (γ = 8, Circle's scale); 1e-9 of it leaves 1000× (an absolute 1e-12 did not, for
        # an element that cancels to ~0).
        np.testing.assert_allclose(got_value, value, rtol=1e-9, err_msg=layout)
        atol = 1e-9 * float(np.abs(grad).max())
        np.testing.assert_allclose(got_grad, grad, rtol=1e-9, atol=atol, err_msg=layout)


def test_local_mining_misses_the_cross_device_positives(x64):
    """The point of the axis: per-device mining sees a different (smaller) problem."""
    inputs, labels, weights, memory = _problem()
    dense = losses.triplet_margin_loss(inputs @ weights, labels, margin=0.5)
    local = jax.vmap(lambda x, y: losses.triplet_margin_loss(x, y, margin=0.5))(
        (inputs @ weights).reshape(NUM_DEVICES, PER_DEVICE, DIM),
        labels.reshape(NUM_DEVICES, PER_DEVICE),
    )
    assert not np.isclose(float(jnp.mean(local)), float(dense))


@pytest.mark.parametrize(
    "fn",
    [
        lambda x, y: losses.contrastive_loss(x, y, axis_name="nope"),
        lambda x, y: losses.triplet_margin_loss(x, y, axis_name="nope"),
        lambda x, y: losses.circle_pair_loss(x, y, axis_name="nope"),
        lambda x, y: losses.xbm_triplet_loss(
            x, y, _memory(np.random.default_rng(0)), axis_name="nope"
        ),
    ],
)
def test_unbound_axis_is_a_clear_error(x64, fn):
    with pytest.raises(ValueError, match="axis name 'nope' is not bound"):
        fn(jnp.zeros((4, DIM)), jnp.arange(4))
