"""The successor losses in training: each trains, its state moves as the loss
function's own update says, stateful heads on 8 devices equal 1 device, and the
sub-centre classifier is evaluated by its best / dominant sub-centres."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import needs_devices
from test_train import (
    _assert_trees_close,
    make_step,
    mesh_of,
    rounding_tolerance,
    run_steps,
    tiny_batch,
    tiny_config,
)

from faceloss_jax import evaluation, losses, train
from faceloss_jax.train_lib import objectives


def successor_config(loss: str):
    config = tiny_config(loss)
    if loss == "xbm":
        config.loss.update(memory_size=64, warmup_steps=0)
    return config


@pytest.mark.parametrize("loss", objectives.loss_names("successor"))
@pytest.mark.slow
def test_every_successor_trains(loss):
    config = successor_config(loss)
    state, step = make_step(config, mesh_of(1))
    initial_state = jax.device_get(state.loss_state)
    state, history = run_steps(state, step, tiny_batch(), mesh_of(1), "shard_map", num_steps=8)
    first, last = history[0]["loss"], history[-1]["loss"]
    assert np.isfinite(last) and last < 0.8 * first, [m["loss"] for m in history]
    # Every stateful loss moved its state.
    old, new = jax.tree.leaves(initial_state), jax.tree.leaves(state.loss_state)
    assert all(not np.array_equal(a, np.asarray(b)) for a, b in zip(old, new) if a.ndim), loss


def _inputs(num_classes=8, dim=4, batch=16, seed=0):
    rng = np.random.default_rng(seed)
    embeddings = jnp.asarray(3.0 * rng.normal(size=(batch, dim)), jnp.float32)
    labels = jnp.arange(batch) % num_classes
    weights = jnp.asarray(rng.normal(size=(dim, num_classes)), jnp.float32)
    return embeddings, labels, {"weights": weights}


def _head_state(config):
    _, state = objectives.init_head(config, jax.random.PRNGKey(0), embedding_dim=4, num_classes=8)
    return state


@pytest.mark.parametrize("loss", ["curricularface", "adaface", "adacos"])
def test_state_is_updated_first_then_used(loss):
    """The official code moves t / (μ, σ) / s̃ by the batch and uses the new value."""
    config = tiny_config(loss).loss
    x, y, head = _inputs()
    state = _head_state(config)
    value, new_state = objectives.compute_loss(config, head, state, x, y, step=0)
    w = head["weights"]
    if loss == "curricularface":
        t = losses.curricularface_update_t(state["t"], x, w, y, alpha=config.alpha)
        expected_state = {"t": t}
        expected = losses.curricularface(x, w, y, t, scale=config.scale, margin=config.margin)
    elif loss == "adaface":
        stats = losses.adaface_update_stats(losses.AdaFaceStats(**state), x, alpha=config.alpha)
        expected_state = stats._asdict()
        expected = losses.adaface(
            x, w, y, stats, scale=config.scale, margin=config.margin, h=config.h
        )
    else:
        # √2·log(C − 1) in float32 against float64: ≤ 3 roundings, 3·u ≈ 2e-7; 1e-6.
        np.testing.assert_allclose(state["scale"], losses.adacos_fixed_scale(8), rtol=1e-6)
        scale = losses.adacos_dynamic_scale(state["scale"], x, w, y)
        expected_state = {"scale": scale}
        expected = losses.adacos(x, w, y, scale=scale)
    # The same float32 functions of the same inputs, which XLA may fuse differently:
    # a few ulp (u = 6e-8) of O(1) values; 1e-6 = 16·u.
    _assert_trees_close(new_state, expected_state, 1e-6)
    np.testing.assert_allclose(value, expected.mean(), rtol=1e-6)


def test_elasticface_draws_margins_from_the_key():
    config = tiny_config("elasticface").loss
    x, y, head = _inputs()
    key = jax.random.PRNGKey(3)
    value, _ = objectives.compute_loss(config, head, {}, x, y, step=0, key=key)
    expected = losses.elasticface_arc(
        x, head["weights"], y, key, scale=config.scale, margin=config.margin, sigma=config.sigma
    )
    # The same float32 function of the same inputs and key (the objective adds the mean of
    # 16): a few ulp of the O(1) loss, ≤ 16·u = 1e-6; another key's margins are O(1e-2) off.
    np.testing.assert_allclose(value, expected.mean(), rtol=1e-6)
    other, _ = objectives.compute_loss(config, head, {}, x, y, step=0, key=jax.random.PRNGKey(4))
    assert other != value
    config.variant = "cos"
    value, _ = objectives.compute_loss(config, head, {}, x, y, step=0, key=key)
    expected = losses.elasticface_cos(
        x, head["weights"], y, key, scale=config.scale, margin=config.margin, sigma=config.sigma
    )
    np.testing.assert_allclose(value, expected.mean(), rtol=1e-6)
    with pytest.raises(ValueError, match="pass a PRNG key"):
        objectives.compute_loss(config, head, {}, x, y, step=0)


def test_xbm_adds_the_memory_term_then_enqueues():
    config = tiny_config("xbm").loss
    config.update(memory_size=32, warmup_steps=1)
    x, y, _ = _inputs()
    unit = x / jnp.linalg.norm(x, axis=-1, keepdims=True)
    # Below, the objective calls the same float32 functions on the same inputs: a few ulp
    # of O(1) values, ≤ 16·u = 1e-6 (rtol); the memory term, when it counts, is O(0.1).
    in_batch = losses.triplet_margin_loss(unit, y, margin=config.margin, mining=config.mining)
    state = _head_state(config)
    value, state = objectives.compute_loss(config, {}, state, x, y, step=0)
    np.testing.assert_allclose(value, in_batch, rtol=1e-6)  # empty memory; warm-up step
    assert not np.any(state["filled"])
    value, state = objectives.compute_loss(config, {}, state, x, y, step=1)
    np.testing.assert_allclose(value, in_batch, rtol=1e-6)  # enqueued after the loss
    np.testing.assert_allclose(state["embeddings"][:16], unit, rtol=1e-6)
    value, _ = objectives.compute_loss(config, {}, state, x, y, step=2)
    cross = losses.xbm_triplet_loss(unit, y, losses.CrossBatchMemory(**state), margin=0.2)
    assert cross > 0
    np.testing.assert_allclose(value, in_batch + config.weight * cross, rtol=1e-6)


@needs_devices(8)
def test_xbm_memory_holds_the_global_batch_on_eight_devices():
    config = successor_config("xbm")
    batch = tiny_batch()
    states = []
    for devices, parallelism in ((1, "shard_map"), (8, "pmap")):
        state, step = make_step(config, mesh_of(devices), parallelism)
        state, _ = run_steps(state, step, batch, mesh_of(devices), parallelism, 1)
        states.append(jax.device_get(state.loss_state))
    for field in ("labels", "filled", "pointer"):
        np.testing.assert_array_equal(states[0][field], states[1][field])
    # Unit vectors from the backbone, whose BatchNorm sums in another order on 8 devices.
    tol = rounding_tolerance(config)
    np.testing.assert_allclose(states[0]["embeddings"], states[1]["embeddings"], atol=tol)
    assert states[0]["filled"].sum() == 32


@pytest.mark.parametrize(
    "loss,overrides,message",
    [
        ("circle", {"chunk_size": 4}, "'circle' does not support config.loss.chunk_size"),
        ("curricularface", {"class_sharded": True}, "dense only"),
        (
            "elasticface",
            {"variant": "sin"},
            "config.loss.variant = 'sin' is out of range; valid: one of 'arc', 'cos'",
        ),
        (
            "elasticface",
            {"plus": True, "class_sharded": True},
            "plus=True \\(ElasticFace\\+\\) ranks",
        ),
        ("xbm", {"base": "npair"}, "config.loss.base = 'npair' is out of range"),
    ],
)
def test_check_config_names_the_successor_problem(loss, overrides, message):
    config = tiny_config(loss)
    config.loss.update(overrides)
    with pytest.raises(ValueError, match=message):
        train.check_config(config, num_devices=1)


def test_subcenter_head_is_d_c_k_and_scored_by_its_best_subcenter():
    config = tiny_config("subcenter_arcface").loss
    head, _ = objectives.init_head(config, jax.random.PRNGKey(0), embedding_dim=4, num_classes=8)
    assert head["weights"].shape == (4, 8, 3)
    x, y, _ = _inputs()
    metrics = objectives.batch_metrics(config, head, x, y)
    unit_w = np.asarray(head["weights"]) / np.linalg.norm(head["weights"], axis=0)
    per_subcenter = np.einsum("bd,dck->bck", np.asarray(x), unit_w)
    # A fraction of counted decisions: exact up to rounding (the default rtol 1e-7).
    np.testing.assert_allclose(
        metrics["accuracy"], np.mean(per_subcenter.max(-1).argmax(-1) == np.asarray(y))
    )
    unit_x = np.asarray(x) / np.linalg.norm(x, axis=-1, keepdims=True)
    own = per_subcenter[np.arange(16), np.asarray(y)].max(-1) / np.linalg.norm(x, axis=-1)
    # float32 cosines of 4-d vectors (≲ 8·u absolute either side) through arccos, whose
    # condition 1/sin θ is ≤ 4.6 for these features: ≲ 2·8·4.6·u ≈ 4e-6 of the mean
    # angle (0.3·π); measured equal.
    np.testing.assert_allclose(metrics["intra_angle"], np.mean(np.arccos(own)) / np.pi, rtol=1e-5)
    accuracy = evaluation.closed_set_accuracy(unit_x, np.asarray(y), weights=unit_w)
    np.testing.assert_allclose(accuracy, metrics["accuracy"])


def test_dominant_subcenters_is_the_subcenter_most_samples_join():
    rng = np.random.default_rng(0)
    weights = rng.normal(size=(3, 4, 2))
    # Class c's samples sit at sub-centre k = c % 2 (three of them) and at the other
    # one (one sample), so the dominant sub-centre is c % 2.
    labels = np.repeat(np.arange(4), 4)
    chosen = np.array([c % 2 if i < 3 else 1 - c % 2 for c in range(4) for i in range(4)])
    embeddings = weights[:, labels, chosen].T + 1e-3 * rng.normal(size=(16, 3))
    dominant = evaluation.dominant_subcenters(embeddings, weights, labels)
    np.testing.assert_array_equal(dominant, weights[:, np.arange(4), np.arange(4) % 2])
    with pytest.raises(ValueError, match="weights \\(d, C, K\\)"):
        evaluation.dominant_subcenters(embeddings, weights[..., 0], labels)
