"""Applies each fault of issue 18 to a copy of the tree, runs the test meant to catch it,
restores the file byte for byte, and reports CAUGHT / NOT CAUGHT (tests/MUTATION.md).

    .venv/bin/python tests/mutation/issue18_faults.py [--control] [FAULT_PREFIX ...]

See ``apply_faults.py`` for how.
"""

import sys

from apply_faults import apply_faults

G, T, BV = (
    "tests/test_faults_gradients.py",
    "tests/test_faults_training.py",
    "tests/test_backbone_values.py",
)
FAULTS = [
    (
        "1a sqrt floor 1e-12 -> 1e-2",
        "faceloss_jax/losses/engine.py",
        "_SQRT_FLOOR = 1e-12",
        "_SQRT_FLOOR = 1e-2",
        [G + "::test_gradient_of_well_classified_and_near_pi_samples[arcface]"],
    ),
    (
        "1b safe_arccos eps 1e-6 -> 1e-2",
        "faceloss_jax/losses/engine.py",
        "eps: float = 1e-6",
        "eps: float = 1e-2",
        [G + "::test_gradient_of_well_classified_and_near_pi_samples[combined]"],
    ),
    (
        "2a labels offset owner*C/N",
        "faceloss_jax/losses/partial_fc.py",
        "sampled = owner * k +",
        "sampled = owner * num_classes +",
        [G + "::test_class_sharded_sampling_below_rate_one_equals_dense_on_sampled_columns"],
    ),
    (
        "2b same key on every shard",
        "faceloss_jax/losses/partial_fc.py",
        "key = jax.random.fold_in(key, shard)",
        "key = jax.random.fold_in(key, 0)",
        [G + "::test_class_sharded_shards_draw_different_classes"],
    ),
    (
        "3 chunked bwd doubles p for 16-bit W",
        "faceloss_jax/losses/engine.py",
        "p = jnp.where(mask, 0.0, jnp.exp(z - lse[:, None]))",
        "p = jnp.where(mask, 0.0, jnp.exp(z - lse[:, None]))"
        " * (2.0 if w.dtype.itemsize == 2 else 1.0)",
        [G + "::test_bfloat16_gradients_match_float32"],
    ),
    (
        "4a circle alpha_p with gradient",
        "faceloss_jax/losses/circle.py",
        "alpha_p = lax.stop_gradient(jax.nn.relu(1.0 + margin - sim))",
        "alpha_p = (jax.nn.relu(1.0 + margin - sim))",
        [G + "::test_circle_gradients_hold_alpha_fixed"],
    ),
    (
        "4b circle alpha_n with gradient",
        "faceloss_jax/losses/circle.py",
        "alpha_n = lax.stop_gradient(jax.nn.relu(sim + margin))",
        "alpha_n = (jax.nn.relu(sim + margin))",
        [G + "::test_circle_gradients_hold_alpha_fixed"],
    ),
    (
        "4c adaface norm with gradient",
        "faceloss_jax/losses/adaptive_margins.py",
        "return lax.stop_gradient(\n        jnp.clip(",
        "return (\n        jnp.clip(",
        [G + "::test_adaface_gradient_holds_the_norm_fixed"],
    ),
    (
        "5a DeepID2 term zeroed",
        "faceloss_jax/losses/euclidean.py",
        "return config.weight * contrastive_loss(",
        "return 0.0 * config.weight * contrastive_loss(",
        [T + "::test_config_objective_equals_the_library_called_by_hand[contrastive]"],
    ),
    (
        "5b center term zeroed",
        "faceloss_jax/losses/euclidean.py",
        "return config.weight * jnp.mean(center_loss(",
        "return 0.0 * config.weight * jnp.mean(center_loss(",
        [T + "::test_config_objective_equals_the_library_called_by_hand[center]"],
    ),
    (
        "5c m3 dropped",
        "faceloss_jax/losses/angular.py",
        '            "m3": hp.real("additive cosine margin", low=0.0, high=2.0),\n',
        "",
        [T + "::test_config_objective_equals_the_library_called_by_hand[combined]"],
    ),
    (
        "5d lambda_g dropped",
        "faceloss_jax/losses/adaptive_margins.py",
        '            "lambda_g": hp.real("λ_g, weight of the regularizer g(a)", low=0.0),\n',
        "",
        [T + "::test_config_objective_equals_the_library_called_by_hand[magface]"],
    ),
    (
        "6 same device index in keys",
        "faceloss_jax/train_lib/train_step.py",
        "jax.random.fold_in(state.rng, state.step), jax.lax.axis_index(DATA_AXIS)",
        "jax.random.fold_in(state.rng, state.step), 0",
        [T + "::test_each_device_draws_its_own_dropout_and_margins"],
    ),
    (
        "7 loss state not saved",
        "faceloss_jax/train_lib/train_step.py",
        "        loss_state=loss_state,\n    )\n\n    # The rate",
        "        loss_state=state.loss_state,\n    )\n\n    # The rate",
        [T + "::test_scalar_loss_state_is_saved_by_the_train_step"],
    ),
    (
        "8 fallback without data iterator",
        "faceloss_jax/train_lib/checkpointing.py",
        "        destination = _quarantine(manager, step) if quarantine else None\n",
        "        destination = _quarantine(manager, step) if quarantine else None\n"
        "        data_iterator = None\n",
        [T + "::test_corrupt_checkpoint_fallback_ends_like_an_uninterrupted_run"],
    ),
    (
        "9a BN/PReLU swapped in IBasicBlock",
        "faceloss_jax/models/iresnet.py",
        "        y = self.norm()(y)\n        y = PReLU()(y)\n",
        "        y = PReLU()(y)\n        y = self.norm()(y)\n",
        [BV + "::test_backbone_forward_matches_stored_reference[iresnet18]"],
    ),
    (
        "9b skip connection dropped",
        "faceloss_jax/models/iresnet.py",
        "        return x + y\n",
        "        return y\n",
        [BV + "::test_backbone_forward_matches_stored_reference[iresnet18]"],
    ),
    (
        "5e m3 not passed to the loss",
        "faceloss_jax/losses/angular.py",
        '"m3": hp.real("additive cosine margin", low=0.0, high=2.0)',
        '"m3": hp.real("additive cosine margin", low=0.0, high=2.0, default=0.0)',
        [T + "::test_config_objective_equals_the_library_called_by_hand[combined]"],
    ),
    (
        "5f lambda_g not passed to the loss",
        "faceloss_jax/losses/adaptive_margins.py",
        '"lambda_g": hp.real("λ_g, weight of the regularizer g(a)", low=0.0)',
        '"lambda_g": hp.real("λ_g, weight of the regularizer g(a)", low=0.0, default=35.0)',
        [T + "::test_config_objective_equals_the_library_called_by_hand[magface]"],
    ),
    (
        "5g xbm contrastive margin dropped",
        "faceloss_jax/losses/xbm.py",
        "loss = euclidean.contrastive_loss(embeddings, labels, **pairs)",
        "loss = euclidean.contrastive_loss(embeddings, labels, axis_name=axis_name)",
        [T + "::test_config_objective_equals_the_library_called_by_hand[xbm_contrastive]"],
    ),
    (
        "5h xbm contrastive memory margin dropped",
        "faceloss_jax/losses/xbm.py",
        "cross = xbm_contrastive_loss(embeddings, labels, memory, **pairs)",
        "cross = xbm_contrastive_loss(embeddings, labels, memory, axis_name=axis_name)",
        [T + "::test_config_objective_equals_the_library_called_by_hand[xbm_contrastive]"],
    ),
]

if __name__ == "__main__":
    apply_faults(FAULTS, sys.argv[1:])
