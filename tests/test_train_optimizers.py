"""Optimizers and schedules: decay on weights only, warmup + decay shapes, SGD as PyTorch."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from faceloss_jax.train_lib import optimizers


def optimizer_config(**overrides) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict(
        dict(
            name="sgd",
            learning_rate=0.1,
            momentum=0.9,
            nesterov=False,
            b1=0.9,
            b2=0.999,
            eps=1e-8,
            weight_decay=5e-4,
            grad_clip_norm=None,
            schedule="cosine",
            warmup_steps=10,
            end_learning_rate_factor=0.0,
            power=1.0,
            boundaries=(50, 80),
            decay_factor=0.1,
        )
    )
    config.update(overrides)
    return config


PARAMS = {
    "backbone": {
        "Conv_0": {"kernel": jnp.ones((3, 3, 1, 4))},
        "BatchNorm_0": {"scale": jnp.ones((4,)), "bias": jnp.zeros((4,))},
        "PReLU_0": {"negative_slope": jnp.full((4,), 0.25)},
        "Dense_0": {"kernel": jnp.ones((4, 2)), "bias": jnp.zeros((2,))},
    },
    "head": {"weights": jnp.ones((2, 5)), "bias": jnp.zeros((5,))},
}


def test_decay_mask_is_kernels_and_class_weights_only():
    mask = optimizers.decay_mask(PARAMS)
    decayed = {jax.tree_util.keystr(k) for k, v in jax.tree_util.tree_leaves_with_path(mask) if v}
    assert decayed == {
        "['backbone']['Conv_0']['kernel']",
        "['backbone']['Dense_0']['kernel']",
        "['head']['weights']",
    }


@pytest.mark.parametrize(
    "schedule,expected",
    [
        # (step, learning rate) after a 10-step linear warmup to 0.1 over 100 steps.
        ("constant", [(0, 0.0), (5, 0.05), (10, 0.1), (99, 0.1)]),
        ("cosine", [(5, 0.05), (10, 0.1), (55, 0.05), (100, 0.0)]),
        ("step", [(10, 0.1), (49, 0.1), (50, 0.01), (79, 0.01), (80, 0.001)]),
        ("polynomial", [(10, 0.1), (55, 0.05), (100, 0.0)]),
    ],
)
def test_schedules(schedule, expected):
    fn = optimizers.create_learning_rate_schedule(
        optimizer_config(schedule=schedule), num_train_steps=100
    )
    # float32 schedules: a handful of operations (a product, a cosine, a power) on rates
    # ≤ 0.1, each rounding by ≤ u·0.1 ≈ 6e-9; atol 1e-7 allows 16 of them and is 1e5×
    # below a warmup or a boundary one step off (≥ 0.01).
    for step, value in expected:
        np.testing.assert_allclose(fn(step), value, atol=1e-7, err_msg=f"step {step}")


def test_bad_schedule_settings_are_named():
    with pytest.raises(ValueError, match="unknown optimizer.schedule 'linear'"):
        optimizers.create_learning_rate_schedule(
            optimizer_config(schedule="linear"), num_train_steps=100
        )
    with pytest.raises(ValueError, match="warmup_steps must be in"):
        optimizers.create_learning_rate_schedule(
            optimizer_config(warmup_steps=100), num_train_steps=100
        )
    with pytest.raises(ValueError, match=r"boundaries must be increasing.*\(80, 50\)"):
        optimizers.create_learning_rate_schedule(
            optimizer_config(schedule="step", boundaries=(80, 50)), num_train_steps=100
        )
    with pytest.raises(ValueError, match="unknown optimizer.name 'lamb'"):
        optimizers.create_optimizer(optimizer_config(name="lamb"), 0.1)


def test_sgd_matches_pytorch_with_decay_on_weights_only():
    # torch.optim.SGD(lr, momentum, weight_decay): v ← μv + (g + λw), w ← w − lr·v.
    config = optimizer_config(weight_decay=0.1)
    tx = optimizers.create_optimizer(config, 0.5)
    params = {"kernel": jnp.array([[1.0, -2.0]]), "bias": jnp.array([3.0])}
    grads = {"kernel": jnp.array([[0.5, 0.5]]), "bias": jnp.array([1.0])}
    state = tx.init(params)
    w, b, vw, vb = np.array([[1.0, -2.0]]), np.array([3.0]), 0.0, 0.0
    for _ in range(3):
        updates, state = tx.update(grads, state, params)
        params = optax.apply_updates(params, updates)
        vw = 0.9 * vw + (0.5 + 0.1 * w)
        vb = 0.9 * vb + 1.0  # no decay on the bias
        w, b = w - 0.5 * vw, b - 0.5 * vb
    # float32 against float64: 3 steps × 4 roundings (μv, + g, + λw, w − lr·v) of values
    # ≤ 3, and 0.9 and 0.1 rounded to float32 (≤ u relative): ≤ 12·u·3 ≈ 2e-6 absolute
    # (the bias cancels from 3 to 0.195, so relative to it that is 1e-5); measured 7e-8.
    # A decay applied to the bias, or missed on the kernel, moves them by ≥ 0.05.
    atol = 12 * 2.0**-24 * 3.0
    np.testing.assert_allclose(params["kernel"], w, rtol=0, atol=atol)
    np.testing.assert_allclose(params["bias"], b, rtol=0, atol=atol)


def test_adamw_decays_weights_only():
    tx = optimizers.create_optimizer(optimizer_config(name="adamw", weight_decay=0.5), 0.1)
    params = {"kernel": jnp.ones((1, 2)), "bias": jnp.ones((2,))}
    zero = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(zero, tx.init(params), params)
    # −lr·λ·w in float32: two products and 0.1 rounded to float32, ≤ 3·u relative.
    np.testing.assert_allclose(updates["kernel"], -0.1 * 0.5 * np.ones((1, 2)), rtol=3 * 2.0**-24)
    np.testing.assert_array_equal(updates["bias"], 0.0)  # no decay, zero gradient: exact
