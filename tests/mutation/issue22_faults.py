"""Applies each fault that the training fault tests of issue 22 guard against to a copy of
the tree and reports CAUGHT / NOT CAUGHT (tests/MUTATION.md).

    .venv/bin/python tests/mutation/issue22_faults.py [--control] [FAULT_PREFIX ...]

See ``apply_faults.py`` for how.
"""

import sys

from apply_faults import apply_faults

RUN = "tests/test_faults_run.py"
CKPT = "faceloss_jax/train_lib/checkpointing.py"
TRAIN = "faceloss_jax/train.py"
RUN_STATE = "faceloss_jax/train_lib/run_state.py"
STEP = "faceloss_jax/train_lib/train_step.py"
FAULTS = [
    (
        "1 a checkpoint that does not fit is read as corrupt (moved aside)",
        CKPT,
        "    if differences:\n        more",
        "    if False:\n        more",
        [f"{RUN}::test_a_config_that_does_not_fit_the_run_is_refused_and_nothing_changes"],
    ),
    (
        "2 a changed config resumes silently",
        TRAIN,
        "        if changes:\n",
        "        if False:\n",
        [f"{RUN}::test_a_config_that_does_not_fit_the_run_is_refused_and_nothing_changes"],
    ),
    (
        "3 config.json written before the restore",
        TRAIN,
        "    # Nothing is written before this point, so a failed start leaves the workdir",
        "    workdir.mkdir(parents=True, exist_ok=True)\n"
        '    (workdir / "config.json").write_text(config.to_json_best_effort())\n'
        "    # Nothing is written before this point, so a failed start leaves the workdir",
        [f"{RUN}::test_a_config_that_does_not_fit_the_run_is_refused_and_nothing_changes"],
    ),
    (
        "4 a set-aside checkpoint is overwritten",
        CKPT,
        "    while target.exists():",
        "    while False:",
        [f"{RUN}::test_set_aside_checkpoints_are_never_overwritten"],
    ),
    (
        "5 checksums not verified",
        CKPT,
        "    if saved is None:\n        return",
        "    if True:\n        return",
        [f"{RUN}::test_checksums_catch_arrays_that_changed_after_the_save"],
    ),
    (
        "6 checksum blind to positions",
        CKPT,
        "jnp.arange(bits.size, dtype=jnp.uint32) * jnp.uint32(2654435761) + 1",
        "jnp.ones(bits.size, dtype=jnp.uint32)",
        [f"{RUN}::test_checksums_see_every_element_and_its_position"],
    ),
    (
        "7 evaluation moves a damaged checkpoint",
        RUN_STATE,
        "checkpointing.restore_latest(manager, template, quarantine=False)",
        "checkpointing.restore_latest(manager, template, quarantine=True)",
        [f"{RUN}::test_evaluation_falls_back_past_a_damaged_checkpoint_and_moves_nothing"],
    ),
    (
        "8 a non-finite state is saved",
        CKPT,
        "    if not finite:\n        raise errors.CheckpointError(",
        "    if False:\n        raise errors.CheckpointError(",
        [f"{RUN}::test_a_non_finite_state_is_never_saved"],
    ),
    (
        "9 skip checks the loss and gradient only",
        STEP,
        "        & _is_finite(new_state.params, new_state.opt_state, new_state.batch_stats)\n",
        "",
        [f"{RUN}::test_skip_policy_skips_a_step_whose_update_alone_is_not_finite"],
    ),
    (
        "10 skipping never stops",
        TRAIN,
        "        if max_skips is not None and skips < max_skips:",
        "        if max_skips is not None:",
        [f"{RUN}::test_skip_policy_never_saves_a_broken_state"],
    ),
    (
        "11 a negative learning rate trains",
        TRAIN,
        "    if not 0 <= config.optimizer.learning_rate",
        "    if not -1e9 <= config.optimizer.learning_rate",
        [f"{RUN}::test_a_negative_learning_rate_is_refused_and_leaves_no_files"],
    ),
    (
        "12 P×K with K = 1 for a triplet loss trains",
        TRAIN,
        "    if pk is not None and pk[1] < 2 and",
        "    if pk is not None and pk[1] < 1 and",
        [f"{RUN}::test_pk_batches_without_a_positive_pair_are_refused"],
    ),
    (
        "13 a resume-safe field refused",
        CKPT,
        '    "eval.",\n',
        "",
        [f"{RUN}::test_config_changes_ignore_the_resume_safe_fields"],
    ),
]

if __name__ == "__main__":
    apply_faults(FAULTS, sys.argv[1:])
