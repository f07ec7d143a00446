"""Applies each fault that the arcface_torch step test of issue 14 guards against to a copy
of the tree and reports CAUGHT / NOT CAUGHT (tests/MUTATION.md).

    .venv/bin/python tests/mutation/issue14_faults.py [--control] [FAULT_PREFIX ...]

See ``apply_faults.py`` for how.
"""

import sys

from apply_faults import apply_faults

STEP = "tests/test_face_recipe.py::test_ten_face_recipe_steps_are_arcface_torchs"
RECIPE = "configs/default.py"
FAULTS = [
    (
        "1 clipping of everything, not the backbone",
        RECIPE,
        'config.optimizer.clip_scope = "backbone"',
        'config.optimizer.clip_scope = "global"',
        [STEP],
    ),
    (
        "2 no clipping",
        RECIPE,
        "config.optimizer.grad_clip_norm = 5.0",
        "config.optimizer.grad_clip_norm = None",
        [STEP],
    ),
    (
        "3 clipping at 6",
        RECIPE,
        "config.optimizer.grad_clip_norm = 5.0",
        "config.optimizer.grad_clip_norm = 6.0",
        [STEP],
    ),
    (
        "4 decay of kernels only",
        RECIPE,
        "config.optimizer.decay_all = True",
        "config.optimizer.decay_all = False",
        [STEP],
    ),
    (
        "5 momentum 0.95",
        RECIPE,
        "config.optimizer.momentum = 0.9\n    config.optimizer.weight_decay = 5e-4",
        "config.optimizer.momentum = 0.95\n    config.optimizer.weight_decay = 5e-4",
        [STEP],
    ),
    (
        "6 polynomial power 2 (the 2021 PolyScheduler)",
        RECIPE,
        "config.optimizer.power = 1.0\n    config.optimizer.warmup_steps = 200",
        "config.optimizer.power = 2.0\n    config.optimizer.warmup_steps = 200",
        [STEP],
    ),
    (
        "7 backbone clipped by the norm of the whole gradient",
        "faceloss_jax/train_lib/optimizers.py",
        "factor = jnp.minimum(1.0, max_norm / (global_norm(clipped) + 1e-6))",
        "factor = jnp.minimum(1.0, max_norm / (global_norm(updates) + 1e-6))",
        [STEP],
    ),
    (
        "8 decayed weights added after momentum",
        "faceloss_jax/train_lib/optimizers.py",
        """            optax.add_decayed_weights(config.weight_decay, mask=mask),
            optax.sgd(learning_rate, momentum=config.momentum, nesterov=config.nesterov),""",
        """            optax.trace(decay=config.momentum, nesterov=config.nesterov),
            optax.add_decayed_weights(config.weight_decay, mask=mask),
            optax.scale_by_learning_rate(learning_rate),""",
        [STEP],
    ),
]

if __name__ == "__main__":
    apply_faults(FAULTS, sys.argv[1:])
