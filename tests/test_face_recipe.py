"""arcface_torch's training knobs: Partial FC from the config, gradient accumulation,
backbone-only clipping, decay of every parameter, the straight-through ArcFace, and the
face recipe that carries them."""

import importlib
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from test_train import (
    NUM_CLASSES,
    make_step,
    mesh_of,
    rounding_tolerance,
    run_steps,
    tiny_batch,
    tiny_config,
)

from faceloss_jax import losses, train
from faceloss_jax.train_lib import objectives, optimizers, train_step


def test_sample_size_follows_arcface_torch():
    """``int(r·C)`` (arcface_torch's PartialFC_V2), no floating-point off-by-one, raised to
    the batch only where a static shape needs room for every positive."""
    assert 0.07 * 10000 > 700  # 700.0000000000001
    assert losses.num_sampled(10000, 0.07, 128) == 700
    assert losses.num_sampled(100, 0.29, 4) == int(0.29 * 100) == 28
    assert losses.num_sampled(1000, 0.1, 512) == 512  # B positives must fit
    assert losses.num_sampled(8, 0.5, 64) == 8


def _partial_fc_config(rate: float, class_sharded: bool):
    config = tiny_config("arcface")
    config.loss.update(scale=8.0, margin=0.2, sample_rate=rate, class_sharded=class_sharded)
    return config


def test_sample_rate_one_is_the_dense_head():
    x = jax.random.normal(jax.random.key(0), (8, 4))
    y = np.arange(8) % NUM_CLASSES
    dense = _partial_fc_config(1.0, False)
    head, state = objectives.init_head(
        dense.loss, jax.random.key(1), embedding_dim=4, num_classes=NUM_CLASSES
    )
    value, _ = objectives.compute_loss(dense.loss, head, state, x, y, step=0)
    expected = losses.arcface(x, head["weights"], y, scale=8.0, margin=0.2).mean()
    # The same float32 operations on the same inputs (rate 1 samples nothing; the config
    # adds the mean): equal to the last bit here. rtol 1e-6 (17·u) allows the mean of 8
    # losses summed in another order (8·u) and is far below a wrong s or m (O(1)).
    np.testing.assert_allclose(value, expected, rtol=1e-6)


def test_partial_fc_scores_the_sampled_columns():
    """Rate < 1 on one device: the loss of the sampled columns with re-indexed labels."""
    x = jax.random.normal(jax.random.key(0), (4, 4))
    y = np.array([0, 1, 2, 3])
    config = _partial_fc_config(0.5, False)
    head, state = objectives.init_head(
        config.loss, jax.random.key(1), embedding_dim=4, num_classes=16
    )
    key = jax.random.key(3)
    value, _ = objectives.compute_loss(config.loss, head, state, x, y, step=0, key=key)
    classes, sampled = losses.sample_classes(jax.random.fold_in(key, 2), y, 16, sample_rate=0.5)
    assert classes.shape == (8,)
    w = head["weights"][:, classes]
    # As above: the same float32 operations on the same 8 columns, equal to the last bit.
    np.testing.assert_allclose(
        value, losses.arcface(x, w, sampled, scale=8.0, margin=0.2).mean(), rtol=1e-6
    )
    with pytest.raises(ValueError, match="pass a PRNG key"):
        objectives.compute_loss(config.loss, head, state, x, y, step=0)


def test_partial_fc_keeps_the_class_ids_of_the_center_term():
    """Partial FC re-indexes the labels for the classifier only: center loss's term and
    its centre update index the centres by class id (a re-indexed label would pull and
    move another class's centre)."""
    x = jax.random.normal(jax.random.key(0), (4, 4))
    y = np.array([0, 5, 9, 14])
    key = jax.random.key(3)
    values, centres = {}, {}
    for rate in (1.0, 0.5):
        config = tiny_config("center")
        config.loss.sample_rate = rate
        head, _ = objectives.init_head(
            config.loss, jax.random.key(1), embedding_dim=4, num_classes=16
        )
        state = {"centers": jax.random.normal(jax.random.key(2), (16, 4))}
        values[rate], new_state = objectives.compute_loss(
            config.loss, head, state, x, y, step=0, key=key
        )
        centres[rate] = new_state["centers"]
    softmax = objectives.get("center").fn
    w, b = head["weights"], head["bias"]
    classes, sampled = losses.sample_classes(jax.random.fold_in(key, 2), y, 16, sample_rate=0.5)
    assert not np.array_equal(sampled, y)  # the fault would show
    center_term = {
        1.0: values[1.0] - softmax(x, w, y, bias=b).mean(),
        0.5: values[0.5] - softmax(x, w[:, classes], sampled, bias=b[classes]).mean(),
    }
    # The same float32 centre update from the same class ids: bit-identical.
    np.testing.assert_array_equal(centres[0.5], centres[1.0])
    # The term (λ/2·mean‖x − c_y‖², ~0.01 here) as a difference of two O(1) float32
    # values: 1e-6 absolute is ~10 u of the O(1) losses and far below a wrong centre's change.
    np.testing.assert_allclose(center_term[0.5], center_term[1.0], atol=1e-6)


@pytest.mark.slow  # 10-20 s of a loaded 2-core run (--durations, 2026-12-05)
def test_partial_fc_trains_class_sharded_on_eight_devices():
    config = _partial_fc_config(0.5, True)
    config.dataset.num_identities = 32  # 4 classes a device, 2 of them sampled
    mesh = mesh_of(8)
    batch = tiny_batch(16)
    batch["label"] = (np.arange(16) * 2) % 32
    model_state, step = make_step(config, mesh, "shard_map")
    state, history = run_steps(model_state, step, batch, mesh, "shard_map", 3)
    losses_seen = [float(h["loss"]) for h in history]
    assert np.all(np.isfinite(losses_seen)) and losses_seen[-1] < losses_seen[0]


def test_sample_rate_is_checked_from_the_record():
    config = tiny_config("arcface")
    config.loss.sample_rate = 0.0
    with pytest.raises(
        objectives.ConfigError,
        match=r"sample_rate = 0.0 is out of range; "
        r"valid: \(0, 1\]",
    ):
        train.check_config(config, num_devices=1)
    circle = tiny_config("circle")
    circle.loss.sample_rate = 0.5
    with pytest.raises(objectives.ConfigError, match="does not support config.loss.sample_rate"):
        train.check_config(circle, num_devices=1)


def test_gradient_accumulation_is_one_big_batch():
    """k micro-batches through optax.MultiSteps: one update with their mean gradient."""
    config = tiny_config().optimizer
    config.update(name="sgd", learning_rate=0.1, momentum=0.9, weight_decay=5e-4)
    params = {"w": jnp.arange(6.0).reshape(2, 3), "b": jnp.ones(3)}
    grads = [jax.tree.map(lambda p, i=i: jnp.cos(p + i), params) for i in range(2)]
    big = optimizers.create_optimizer(config, optax.constant_schedule(0.1))
    updates, _ = big.update(
        jax.tree.map(lambda a, b: (a + b) / 2, *grads), big.init(params), params
    )
    expected = optax.apply_updates(params, updates)
    config.grad_accum_steps = 2
    tx = optimizers.create_optimizer(config, optax.constant_schedule(0.1))
    state, current = tx.init(params), params
    for g in grads:
        updates, state = tx.update(g, state, current)
        current = optax.apply_updates(current, updates)
    # float32: the mean of two gradients (≤ 1) formed in another order is ≤ 2·u off, the
    # update lr = 0.1 times that, and rounding the new parameter adds ≤ u·|p|: ≤ 0.2·u +
    # u·|p|, below rtol·|p| = 17·u·|p| for the smallest |p| here (0.077); equal to the last
    # bit as measured. A second update, or a sum for the mean, is ≥ 1e-2 off.
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), current, expected)
    config.grad_accum_steps = 0
    with pytest.raises(objectives.ConfigError, match="grad_accum_steps = 0"):
        optimizers.create_optimizer(config, optax.constant_schedule(0.1))


def test_backbone_clipping_leaves_the_head_alone():
    grads = {"backbone": {"k": jnp.full((4,), 10.0)}, "head": {"weights": jnp.full((3,), 7.0)}}
    clip = optimizers.clip_by_global_norm(5.0, scope="backbone")
    clipped, _ = clip.update(grads, clip.init(grads))
    # float32: a norm of n ≤ 7 squares (≤ n/2·u after the root), the factor 5/(‖g‖ + 1e-6)
    # and the products, ≤ (7/2 + 3)·u ≈ 4e-7 relative; 1e-6. Unclipped is 4× off.
    np.testing.assert_allclose(jnp.linalg.norm(clipped["backbone"]["k"]), 5.0, rtol=1e-6)
    np.testing.assert_array_equal(clipped["head"]["weights"], grads["head"]["weights"])
    clip = optimizers.clip_by_global_norm(5.0, scope="global")
    clipped, _ = clip.update(grads, clip.init(grads))
    np.testing.assert_allclose(optax.global_norm(clipped), 5.0, rtol=1e-6)
    with pytest.raises(objectives.ConfigError, match="unknown optimizer.clip_scope 'head'"):
        optimizers.clip_by_global_norm(5.0, scope="head")


def test_accumulated_gradient_is_clipped_once_at_the_update():
    """Two micro-batches whose gradients cancel: clipping each (the old order) would
    shrink them unequally; the accumulated gradient is clipped once, and summed with
    ``grad_accum_reduction="sum"`` (arcface_torch), averaged by default."""
    config = tiny_config().optimizer
    config.update(
        name="sgd",
        momentum=0.0,
        weight_decay=0.0,
        grad_clip_norm=5.0,
        clip_scope="backbone",
        grad_accum_steps=2,
    )
    params = {"backbone": {"k": jnp.zeros(2)}, "head": {"w": jnp.zeros(1)}}
    micro = [jnp.array([30.0, 0.0]), jnp.array([-10.0, 4.0])]
    for reduction, total in (("mean", jnp.array([10.0, 2.0])), ("sum", jnp.array([20.0, 4.0]))):
        config.grad_accum_reduction = reduction
        tx = optimizers.create_optimizer(config, optax.constant_schedule(1.0))
        state = tx.init(params)
        for g in micro:
            grads = {"backbone": {"k": g}, "head": {"w": jnp.ones(1)}}
            updates, state = tx.update(grads, state, params)
        expected = total * jnp.minimum(1.0, 5.0 / (jnp.linalg.norm(total) + 1e-6))
        # float32, the same formula on a sum of two exact gradients: a norm of 2 squares,
        # a quotient and a product, ≤ 4·u relative; 1e-6. Clipping each micro-batch is
        # ≥ 10% off. The head's sum or mean of ones is exact.
        np.testing.assert_allclose(-updates["backbone"]["k"], expected, rtol=1e-6)
        np.testing.assert_array_equal(-updates["head"]["w"], 2.0 if reduction == "sum" else 1.0)
    config.grad_accum_reduction = "max"
    with pytest.raises(objectives.ConfigError, match="grad_accum_reduction 'max'"):
        optimizers.create_optimizer(config, optax.constant_schedule(1.0))


def test_decay_all_decays_every_parameter():
    config = tiny_config().optimizer
    config.update(name="sgd", learning_rate=1.0, momentum=0.0, weight_decay=0.1)
    params = {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)}
    zero = jax.tree.map(jnp.zeros_like, params)
    for decay_all, bias_after in ((False, 1.0), (True, 0.9)):
        config.decay_all = decay_all
        tx = optimizers.create_optimizer(config, optax.constant_schedule(1.0))
        updates, _ = tx.update(zero, tx.init(params), params)
        new = optax.apply_updates(params, updates)
        # float32's 1 − 0.1·1 is 0.9 rounded, within u ≈ 6e-8 of it: the default rtol
        # 1e-7; a missing decay is 0.1 off.
        np.testing.assert_allclose(new["bias"], bias_after)
        np.testing.assert_allclose(new["kernel"], 0.9)


def _straight_through_reference(x, w, y, s, m):
    """Current arcface_torch's ArcFace in float64: value with target s·cos(θ_y + m), no
    fallback; gradient with the margin under no_grad (d logit / d cos = s everywhere)."""
    xn = np.linalg.norm(x, axis=1, keepdims=True)
    wn = np.linalg.norm(w, axis=0, keepdims=True)
    cos = (x @ w) / (xn * wn)
    rows = np.arange(len(y))
    logits = s * cos.copy()
    logits[rows, y] = s * np.cos(np.arccos(cos[rows, y]) + m)
    top = logits.max(axis=1, keepdims=True)
    p = np.exp(logits - top) / np.exp(logits - top).sum(axis=1, keepdims=True)
    loss = -np.log(p[rows, y])
    dcos = s * (p - np.eye(w.shape[1])[y])  # dL/dcos_ij, the straight-through chain
    x_hat, w_hat = x / xn, w / wn
    dx = (dcos @ w_hat.T - np.sum(dcos * cos, axis=1, keepdims=True) * x_hat) / xn
    dw = (x_hat.T @ dcos - w_hat * np.sum(dcos * cos, axis=0, keepdims=True)) / wn
    return loss, dx, dw


@pytest.mark.slow
def test_straight_through_arcface_is_current_arcface_torch(x64):
    rng = np.random.default_rng(0)
    x, w = rng.normal(size=(6, 5)), rng.normal(size=(5, 7))
    y = np.array([0, 1, 2, 3, 4, 5])
    w[:, 5] = -x[5]  # θ_y = π: past π − m, where the default falls back
    s, m = 16.0, 0.5
    loss, dx, dw = _straight_through_reference(x, w, y, s, m)

    def total(x, w):
        return losses.arcface(x, w, y, scale=s, margin=m, straight_through=True).sum()

    # float64: the d + C = 12 products and exponentials of a row in other orders, ×(1 + s):
    # 12·u·17 ≈ 2e-14 of a loss and of the largest gradient element (measured 3e-16).
    # Row 5 takes arccos at −1, where δc becomes δθ ≈ √(2·δc): it holds to 1e-9 because
    # both sides round that cosine to exactly −1 (w = −x). A margin under the gradient
    # (not straight through) moves the gradients by O(1).
    np.testing.assert_allclose(
        losses.arcface(x, w, y, scale=s, margin=m, straight_through=True), loss, rtol=1e-9
    )
    gx, gw = jax.grad(total, argnums=(0, 1))(x, w)
    np.testing.assert_allclose(gx, dx, rtol=1e-9, atol=1e-9 * np.abs(dx).max())
    np.testing.assert_allclose(gw, dw, rtol=1e-9, atol=1e-9 * np.abs(dw).max())
    # The default (InsightFace/PML) is unchanged: it falls back past π − m.
    default = losses.arcface(x, w, y, scale=s, margin=m)
    np.testing.assert_allclose(default[:5], loss[:5], rtol=1e-9)
    assert not np.isclose(default[5], loss[5])
    chunked = losses.combined_margin(x, w, y, scale=s, m2=m, straight_through=True, chunk_size=3)
    np.testing.assert_allclose(chunked, loss, rtol=1e-9)


def test_the_face_recipe_carries_arcface_torch_knobs():
    for name in ("softmax", "sphereface", "cosface", "arcface", "combined", "adaface"):
        config = importlib.import_module(f"configs.{name}").get_config("face")
        optimizer = config.optimizer
        assert (optimizer.name, optimizer.learning_rate, optimizer.momentum) == ("sgd", 0.1, 0.9)
        assert (optimizer.grad_clip_norm, optimizer.clip_scope) == (5.0, "backbone")
        assert optimizer.decay_all and optimizer.weight_decay == 5e-4
        assert config.dataset.normalization == "arcface_torch" and config.half_precision
        assert config.model.name == "iresnet50" and config.batch_size == 128
        assert config.loss.get("sample_rate", 1.0) == 1.0
    arcface = importlib.import_module("configs.arcface").get_config("face").loss
    assert (arcface.scale, arcface.margin) == (64.0, 0.5)
    combined = importlib.import_module("configs.combined").get_config("face").loss
    assert (combined.m1, combined.m2, combined.m3) == (1.0, 0.3, 0.2)
    # Exact (127.5² is a float64); isclose's default rel_tol 1e-9.
    assert math.isclose(
        np.asarray(
            importlib.import_module("faceloss_jax.data.config").NORMALIZATIONS["arcface_torch"]
        ).prod(),
        127.5 * 127.5,
    )


# -- The face recipe's step is arcface_torch's step ----------------------------------


def _arcface_torch_learning_rates(base: float, warmup: int, total: int, power: float) -> list:
    """The rate of each of arcface_torch's optimizer steps (``PolynomialLRWarmup``, as
    ``train_v2.py`` builds it), from its definition: the optimizer's own rate at step 0,
    ``base·k/W`` during warmup, then each step multiplies the previous rate by
    ``((1 − (k−W)/(T−W)) / (1 − (k−1−W)/(T−W)))^p``."""
    rates = [base]
    for k in range(1, total):
        if k <= warmup:
            rates.append(base * k / warmup)
        else:
            span = total - warmup
            ratio = (1 - (k - warmup) / span) / (1 - (k - 1 - warmup) / span)
            rates.append(rates[-1] * ratio**power)
    return rates


def _arcface_torch_run(params, batches, *, scale, margin, rates, weight_decay, gradient_acc=1):
    """arcface_torch's training loop in float64 PyTorch: backbone → PartialFC_V2 (rate 1:
    normalized embeddings and W (C, d), cosine clamped to [−1, 1]) → CombinedMarginLoss
    (1, m, 0): the target angle moved by m under ``no_grad``, × s → cross-entropy;
    ``loss.backward()`` every micro-batch (gradients summed, the loss not divided by
    ``gradient_acc``); every ``gradient_acc``-th micro-batch
    ``clip_grad_norm_(backbone.parameters(), 5)``, ``SGD(momentum=0.9,
    weight_decay=wd)`` over backbone and head, ``zero_grad()``; the scheduler stepped
    every micro-batch (``rates[i]`` is micro-batch i's). Returns the losses, the
    backbone's gradient norms before clipping (one per update), the final parameters,
    and each parameter's path length ``Σ_updates |Δ|``."""
    torch = pytest.importorskip("torch")
    as_tensor = lambda a: torch.tensor(np.asarray(a), dtype=torch.float64)  # noqa: E731
    backbone = torch.nn.Sequential(
        torch.nn.Linear(64, 32), torch.nn.BatchNorm1d(32), torch.nn.ReLU(), torch.nn.Linear(32, 4)
    ).double()
    p = params["backbone"]
    with torch.no_grad():
        for layer, name in ((backbone[0], "Dense_0"), (backbone[3], "Dense_1")):
            layer.weight.copy_(as_tensor(p[name]["kernel"]).T)
            layer.bias.copy_(as_tensor(p[name]["bias"]))
        backbone[1].weight.copy_(as_tensor(p["BatchNorm_0"]["scale"]))
        backbone[1].bias.copy_(as_tensor(p["BatchNorm_0"]["bias"]))
    weight = torch.nn.Parameter(as_tensor(params["head"]["weights"]).T.contiguous())
    opt = torch.optim.SGD(
        [{"params": backbone.parameters()}, {"params": [weight]}],
        lr=rates[0],
        momentum=0.9,
        weight_decay=weight_decay,
    )
    history, norms = [], []

    def parameters():
        values = {name: t.detach().numpy().copy() for name, t in backbone.state_dict().items()}
        return {**values, "W": weight.detach().numpy().T.copy()}

    path = {name: np.zeros_like(value) for name, value in parameters().items()}
    for global_step, (rate, batch) in enumerate(zip(rates, batches), start=1):
        for group in opt.param_groups:
            group["lr"] = rate
        images = as_tensor(batch["image"]).reshape(len(batch["label"]), -1)
        labels = torch.tensor(batch["label"], dtype=torch.long)
        embeddings = backbone(images)
        normalize = torch.nn.functional.normalize
        logits = torch.nn.functional.linear(normalize(embeddings), normalize(weight)).clamp(-1, 1)
        rows = torch.arange(len(labels))
        with torch.no_grad():
            angles = logits.arccos()
            angles[rows, labels] += margin
            logits.copy_(angles.cos())
        loss = torch.nn.functional.cross_entropy(logits * scale, labels)
        loss.backward()
        if global_step % gradient_acc == 0:
            norms.append(float(torch.nn.utils.clip_grad_norm_(backbone.parameters(), 5.0)))
            before = parameters()
            opt.step()
            opt.zero_grad()
            for name, value in parameters().items():
                path[name] += np.abs(value - before[name])
        history.append(loss.item())
    return history, norms, parameters(), path


def _face_recipe_config(*, num_train_steps: int, **optimizer):
    """The tiny model with the face recipe's optimizer (``optimizer`` fields changed) and
    ArcFace in arcface_torch's current form (``straight_through=True``)."""
    face = importlib.import_module("configs.arcface").get_config("face")
    config = tiny_config("arcface")
    config.optimizer = face.optimizer
    config.optimizer.update(optimizer)
    config.loss = face.loss
    config.loss.straight_through = True
    config.num_train_steps = num_train_steps
    return config


def _run_face_recipe(config):
    """``config.num_train_steps`` steps on one device from fixed batches: the final state,
    the initial parameters, the batches and each step's metrics."""
    mesh = mesh_of(1)
    state, step = make_step(config, mesh)
    batches = [tiny_batch(16, seed=k) for k in range(config.num_train_steps)]
    initial = jax.device_get(state.params)
    metrics = []
    for batch in batches:
        state, m = step(state, train_step.shard_batch(batch, parallelism="shard_map", mesh=mesh))
        metrics.append(jax.device_get(m))
    return state, initial, batches, metrics


@pytest.mark.slow
def test_ten_face_recipe_steps_are_arcface_torchs():
    """From the same weights and batches, 10 steps of the face recipe's optimizer and
    ArcFace (``straight_through=True``) equal arcface_torch's loop in float64 to float32
    noise: SGD 0.1, momentum 0.9, weight decay 5e-4 on every parameter (BatchNorm and
    biases included), the backbone's gradient clipped to norm 5 (the head unclipped),
    linear warmup then arcface_torch's polynomial decay.

    One documented difference: arcface_torch's scheduler leaves step 0 at the full base
    rate (its ``last_epoch == 0`` branch) and starts the warmup at step 1; the recipe's
    warmup starts from 0 at step 0. The reference takes the recipe's rate there."""
    config = _face_recipe_config(num_train_steps=10, warmup_steps=3)
    state, initial, batches, metrics = _run_face_recipe(config)

    opt = config.optimizer
    # train_v2.py builds PolynomialLRWarmup with its default power, 1.0.
    rates = _arcface_torch_learning_rates(
        opt.learning_rate, opt.warmup_steps, config.num_train_steps, power=1.0
    )
    recipe_rates = [float(m["learning_rate"]) for m in metrics]
    np.testing.assert_allclose(recipe_rates[1:], rates[1:], rtol=RATE_RTOL)
    assert recipe_rates[0] == 0.0 and rates[0] == opt.learning_rate
    rates[0] = 0.0
    expected, norms, final, path = _arcface_torch_run(
        initial,
        batches,
        scale=config.loss.scale,
        margin=config.loss.margin,
        rates=rates,
        weight_decay=opt.weight_decay,
    )
    assert max(norms) > 5.0  # the clipping was active
    np.testing.assert_allclose([float(m["loss"]) for m in metrics], expected, rtol=LOSS_RTOL)
    _assert_same_parameters(jax.device_get(state.params), final, path, config, updates=10)


# The recipe's float32 rates against Python's float64: a warmup k/W·base or a decay
# base·(1 − (k − W)/(T − W))^p is a few roundings, the subtraction's cancellation (down to
# 1/7 here) magnifying the quotient's by ≤ 6: ≲ 10·u ≈ 6e-7 relative. A step off by one
# moves a rate by ≥ 1/7 of it.
RATE_RTOL = 1e-6


def _step_rounding(config) -> float:
    """The relative float32 error of one step's gradient of the tiny ArcFace model.

    A cosine of unit vectors in d = 4 dimensions is within ~√(d + 2)·u of exact, and
    ArcFace multiplies it by s = 64 in the logits, so in the softmax weights and the
    gradient; backpropagation through the backbone's sums (64 pixels, 32 hidden units,
    BatchNorm's 16 rows) adds Σ√n·u. √n, not the worst case n: Higham & Mary's
    probabilistic bound ("A new approach to probabilistic rounding error analysis",
    2019), since the worst case 2·n·(1 + s)·u of ``test_train.rounding_tolerance``
    (8320·u here) is above the faults these comparisons catch (a missing weight decay
    moves a parameter by ≥ 600·u of its leaf's largest, below).
    """
    d, s = config.model.embedding_dim, config.loss.scale
    return (s * np.sqrt(d + 2) + np.sqrt(64) + np.sqrt(32) + np.sqrt(16)) * 2.0**-24


# A loss is the log-sum-exp of s·cos minus the target's: the parameters, within
# ``_step_rounding`` (≈ 1e-5) of the reference's, move a cosine by about as much and the
# logits by s = 64 times that, ≲ 7e-4, which is ≤ 2e-5 of the losses (≥ 37); measured
# 1.5e-7. (A missing weight decay moves the losses by 1.7e-5–1.2e-4: the parameters
# below are the check that sees it.)
LOSS_RTOL = 2e-5


def _assert_same_parameters(params, final, path, config, *, updates):
    """The recipe's parameters equal the PyTorch loop's ``final`` to float32 noise.

    Both start from the same (float32) values, so they differ only through the updates:
    each update's float32 rounding, ``_step_rounding`` of its size, adds up to that of
    the parameter's path length ``Σ|Δ|`` (``path``), and each update rounds the
    parameter to float32 (u·|p|). Measured: ≤ 20·u of a leaf's largest parameter, a
    tenth to a quarter of this bound; a missing weight decay (5e-4) is 600–45000·u off,
    ≥ 3.4× the bound.
    """
    backbone = params["backbone"]
    pairs = [
        (backbone["Dense_0"]["kernel"], final["0.weight"].T, path["0.weight"].T),
        (backbone["Dense_1"]["kernel"], final["3.weight"].T, path["3.weight"].T),
        (backbone["BatchNorm_0"]["scale"], final["1.weight"], path["1.weight"]),
        (backbone["BatchNorm_0"]["bias"], final["1.bias"], path["1.bias"]),
        (params["head"]["weights"], final["W"], path["W"]),
    ]
    for actual, reference, length in pairs:
        atol = _step_rounding(config) * np.abs(length).max()
        atol += updates * 2.0**-24 * np.abs(reference).max()
        np.testing.assert_allclose(actual, reference, rtol=0, atol=atol)


def test_accumulated_face_recipe_updates_are_arcface_torchs():
    """3 updates × 2 micro-batches with ``grad_accum_steps=2`` and
    ``grad_accum_reduction="sum"`` equal arcface_torch's loop with ``gradient_acc=2`` in
    float64: the micro-batches' gradients summed, the backbone's sum clipped to norm 5
    once at the update, the scheduler stepped every micro-batch (so the warmup and decay
    count micro-batches, and update u takes micro-batch (u+1)·2 − 1's rate; step 0's
    quirk never reaches an update)."""
    config = _face_recipe_config(
        num_train_steps=6, warmup_steps=3, grad_accum_steps=2, grad_accum_reduction="sum"
    )
    state, initial, batches, metrics = _run_face_recipe(config)

    opt = config.optimizer
    rates = _arcface_torch_learning_rates(
        opt.learning_rate, opt.warmup_steps, config.num_train_steps, power=1.0
    )
    # Each micro-batch logs the rate of the update it goes into.
    np.testing.assert_allclose(
        [float(m["learning_rate"]) for m in metrics], np.repeat(rates[1::2], 2), rtol=RATE_RTOL
    )
    expected, norms, final, path = _arcface_torch_run(
        initial,
        batches,
        scale=config.loss.scale,
        margin=config.loss.margin,
        rates=rates,
        weight_decay=opt.weight_decay,
        gradient_acc=2,
    )
    assert len(norms) == 3 and min(norms) > 5.0  # each update clipped
    np.testing.assert_allclose([float(m["loss"]) for m in metrics], expected, rtol=LOSS_RTOL)
    _assert_same_parameters(jax.device_get(state.params), final, path, config, updates=3)


def test_clipping_inside_accumulation_sums_sharded_columns():
    """Global-scope clipping of the accumulated gradient with the classifier's columns
    split over 8 devices (the norm sums every device's squares, inside MultiSteps)
    updates as the dense head on one device."""
    finals = []
    for class_sharded, devices in ((False, 1), (True, 8)):
        config = _partial_fc_config(1.0, class_sharded)
        # SGD: AdamW would magnify the float32 noise of the bias before BatchNorm (zero).
        config.optimizer.update(
            name="sgd", grad_clip_norm=0.1, clip_scope="global", grad_accum_steps=2
        )
        mesh = mesh_of(devices)
        state, step = make_step(config, mesh)
        batch = tiny_batch(16)
        params = jax.device_get(state.params)
        path = jax.tree.map(np.zeros_like, params)  # Σ over the updates of |Δ|
        for _ in range(4):
            state, _ = run_steps(state, step, batch, mesh, "shard_map", 1)
            new = jax.device_get(state.params)
            path = jax.tree.map(lambda s, a, b: s + np.abs(a - b), path, new, params)
            params = new
        finals.append(params)
    # The runs start equal, so they differ through their 2 updates only: each is off by
    # ``test_train.rounding_tolerance`` (8 devices vs 1, float32, s = 8) of its largest
    # element, which adds up to that of the largest path length Σ|Δ|, and each rounds
    # the parameters to float32 (u·|p|): ≈ 3e-7; measured 1.5e-8. The parameters are
    # not the scale: the clipped updates are 1e-3 of them, and a norm that misses the
    # other devices' columns moves them by 1e-6–5e-6 (in Dense_0, Dense_1, BatchNorm).
    atol = rounding_tolerance(config) * max(float(np.max(leaf)) for leaf in jax.tree.leaves(path))
    atol += 2 * 2.0**-24 * max(float(np.abs(leaf).max()) for leaf in jax.tree.leaves(finals[0]))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=0, atol=atol), *finals)
