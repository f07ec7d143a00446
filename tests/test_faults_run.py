"""Faults of a training run, injected through the real CLI: what the user sees and what
survives (every checkpoint byte), not only the exit code (issue 22, items 1–3, 6, 7).

One tiny ArcFace run on the embedded MNIST (LeNets++, batch 8, checkpoints at steps 2
and 4) is trained once per module; each test works on a copy of it.
"""

import hashlib
import json
import pathlib
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
import test_faults_training
from test_train import tiny_batch

from faceloss_jax import errors, evaluate, train
from faceloss_jax.train_lib import checkpointing, cli, train_step

pytestmark = pytest.mark.slow

REPO = pathlib.Path(__file__).resolve().parents[1]
TINY = (
    "--config.batch_size=8",
    "--config.optimizer.warmup_steps=0",
    "--config.log_every_steps=2",
    "--config.checkpoint_every_steps=2",
    "--config.eval_every_steps=1000",
    "--config.eval.max_examples=32",
    "--config.eval.num_pairs=40",
    "--config.eval.plot=False",
)


def _main(workdir: pathlib.Path, *flags: str, config: str = "configs/arcface.py", steps=4):
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "faceloss_jax.main",
            f"--config={config}",
            f"--workdir={workdir}",
            f"--config.num_train_steps={steps}",
            *TINY,
            *flags,
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _digest(root: pathlib.Path) -> dict[str, str]:
    """sha256 of every file under ``root``, by relative path."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _assert_one_fatal_line(result: subprocess.CompletedProcess, *fragments: str) -> str:
    assert result.returncode != 0, result.stdout[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("FATAL "), result.stderr[-3000:]
    for fragment in fragments:
        assert fragment in line, line
    return line


def _train_steps(workdir: pathlib.Path) -> list[int]:
    lines = (workdir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [r["step"] for r in map(json.loads, lines) if r["split"] == "train"]


@pytest.fixture(scope="module")
def base_run(tmp_path_factory) -> pathlib.Path:
    workdir = tmp_path_factory.mktemp("faults") / "run"
    result = _main(workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir


@pytest.fixture
def run(base_run, tmp_path) -> pathlib.Path:
    workdir = tmp_path / "run"
    shutil.copytree(base_run, workdir)
    return workdir


@pytest.mark.parametrize(
    "flags, config, fragments",
    [
        # A changed config is refused before any checkpoint is read.
        (
            ("--config.model.embedding_dim=4",),
            "configs/arcface.py",
            ("config error", "model.embedding_dim: 3 → 4", "allow_config_change"),
        ),
        ((), "configs/softmax.py", ("config error", "loss.name")),
        # Allowed to change, the checkpoint still does not fit: the arrays are named.
        (
            ("--config.model.embedding_dim=4", "--config.allow_config_change=True"),
            "configs/arcface.py",
            ("params/head/weights (3, 7) in the checkpoint vs (4, 7) in the config",),
        ),
    ],
    ids=["embedding_dim", "another_loss", "allowed_change_shapes"],
)
def test_a_config_that_does_not_fit_the_run_is_refused_and_nothing_changes(
    run, flags, config, fragments
):
    before = _digest(run)
    result = _main(run, *flags, config=config, steps=6)
    _assert_one_fatal_line(result, *fragments)
    assert _digest(run) == before  # every checkpoint byte, config.json, metrics
    assert not (run.parent / "run_corrupt").exists()
    assert not (run / "checkpoints_corrupt").exists()


def test_evaluate_with_another_losss_config_moves_nothing(run):
    before = _digest(run)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "faceloss_jax.evaluate",
            f"--workdir={run}",
            "--config=configs/softmax.py",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    _assert_one_fatal_line(result, "does not fit the config", "checkpoints/4")
    assert _digest(run) == before
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["2", "4"]


def _flip(path: pathlib.Path, nbytes: int = 4096) -> None:
    data = bytearray(path.read_bytes())
    start = max(0, len(data) // 2 - nbytes // 2)
    for i in range(start, min(len(data), start + nbytes)):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def test_flipped_bytes_in_the_newest_checkpoint_fall_back_to_the_previous(run):
    state_files = [p for p in (run / "checkpoints" / "4" / "state").rglob("*") if p.is_file()]
    largest = max(state_files, key=lambda p: p.stat().st_size)
    _flip(largest)
    corrupt = _digest(run / "checkpoints" / "4")
    kept = _digest(run / "checkpoints" / "2")

    result = _main(run, steps=6)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"{run}/checkpoints/4 cannot be used" in result.stderr
    assert f"moved to {run}/checkpoints_corrupt/4," in result.stderr
    assert "Resumed from the checkpoint of step 2" in result.stdout
    # The corrupt checkpoint is kept byte for byte, set aside; the run redid steps 3–4.
    assert _digest(run / "checkpoints_corrupt" / "4") == corrupt
    assert _digest(run / "checkpoints" / "2") == kept
    assert _train_steps(run) == [2, 4, 4, 6]


def test_evaluation_falls_back_past_a_damaged_checkpoint_and_moves_nothing(run):
    _flip(max((run / "checkpoints" / "4").rglob("*"), key=lambda p: p.stat().st_size))
    before = _digest(run / "checkpoints")
    metrics = evaluate.evaluate_checkpoint(run)
    assert metrics["step"] == 2  # step 4 failed its checksum or did not read
    assert _digest(run / "checkpoints") == before
    assert not (run / "checkpoints_corrupt").exists()


def test_skip_policy_never_saves_a_broken_state(run):
    """At a rate of 1e38 the first update (step 5) is huge but finite; from step 6 on,
    each updated state overflows while the step's loss may still be finite: the step is
    skipped all the same, the state saved at step 6 is finite, and the run stops after
    3 skips in a row, the good checkpoints untouched."""
    kept = {step: _digest(run / "checkpoints" / step) for step in ("2", "4")}
    result = _main(
        run,
        "--config.optimizer.learning_rate=1e38",
        "--config.allow_config_change=True",
        "--config.nan_policy=skip",
        "--config.max_consecutive_skips=3",
        "--config.max_checkpoints_to_keep=5",
        steps=12,
    )
    _assert_one_fatal_line(
        result, "training stopped", "3 steps in a row up to step 8", "(step 6) is intact"
    )
    for step, digest in kept.items():
        assert _digest(run / "checkpoints" / step) == digest
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["2", "4", "6"]
    restored, step = checkpointing.restore_latest_tree(run / "checkpoints")
    assert step == 6
    assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(restored["params"]))
    lines = (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    skipped = {
        r["step"]: r["skipped_steps"] for r in map(json.loads, lines) if r["split"] == "train"
    }
    assert skipped == {2: 0, 4: 0, 6: 1}  # step 8 ends the run before it is logged


def test_skip_policy_skips_a_step_whose_update_alone_is_not_finite():
    """The step's loss and gradient are finite, its update (a rate of +inf) is not: with
    ``nan_policy="skip"`` the state stays as it was."""
    config = test_faults_training.tiny_config("softmax")
    config.nan_policy = "skip"
    config.optimizer.update(name="sgd", learning_rate=float("inf"), momentum=0.0)
    state, step, mesh = test_faults_training.make_step(config, test_faults_training.TinyNet(), 8)
    before = jax.device_get(state.params)
    batch = train_step.shard_batch(tiny_batch(), parallelism="shard_map", mesh=mesh)
    state, metrics = step(state, batch)
    assert np.isfinite(metrics["loss"]) and np.isfinite(metrics["grad_norm"])
    assert metrics["finite"] == 0
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.params), before)
    assert int(state.step) == 1


def test_a_negative_learning_rate_is_refused_and_leaves_no_files(tmp_path):
    workdir = tmp_path / "new"
    result = _main(workdir, "--config.optimizer.learning_rate=-1")
    _assert_one_fatal_line(result, "config error", "optimizer.learning_rate must be finite and ≥ 0")
    assert not workdir.exists()


def test_pk_batches_without_a_positive_pair_are_refused(tmp_path):
    config = cli.config_from_command_line(
        ["--config=configs/triplet.py", "--config.dataset.samples_per_identity=1"]
    )
    with pytest.raises(errors.ConfigError, match="K = 1 sample.*identically 0"):
        train.train_and_evaluate(config, str(tmp_path / "new"))
    assert not (tmp_path / "new").exists()


# ------------------------------------------------------------------------------------
# In-process: the checkpoint layer's guarantees.
# ------------------------------------------------------------------------------------


class _Iterator:
    """The part of a grain iterator that the checkpoint handler uses."""

    def __init__(self):
        self.position = 0

    def get_state(self):
        return {"position": self.position}

    def set_state(self, state):
        self.position = state["position"]


def _save(directory: pathlib.Path, step: int, state) -> ocp.CheckpointManager:
    manager = checkpointing.create_checkpoint_manager(directory, max_to_keep=5)
    manager.save(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            checksum=ocp.args.JsonSave(checkpointing.state_checksums(state)[0]),
        ),
    )
    manager.wait_until_finished()
    return manager


def test_checksums_catch_arrays_that_changed_after_the_save(tmp_path, caplog):
    good = {"w": jnp.arange(12.0).reshape(3, 4), "step": jnp.int32(2)}
    bad = {"w": good["w"].at[1, 2].set(7.5), "step": jnp.int32(2)}
    _save(tmp_path, 2, good).close()
    _save(tmp_path, 4, bad).close()
    # Step 4's arrays no longer match its checksums: as if its data file had changed.
    shutil.rmtree(tmp_path / "4" / "checksum")
    shutil.copytree(tmp_path / "2" / "checksum", tmp_path / "4" / "checksum")
    before = _digest(tmp_path)
    manager = checkpointing.create_checkpoint_manager(tmp_path, max_to_keep=5, read_only=True)
    restored = checkpointing.restore_latest(manager, good, quarantine=False)
    manager.close()
    np.testing.assert_array_equal(restored["w"], good["w"])
    assert f"{tmp_path}/4 cannot be used" in caplog.text and "fails its checksum" in caplog.text
    assert "(1 array(s), the first w)" in caplog.text and "left in place" in caplog.text
    assert _digest(tmp_path) == before  # evaluation moves nothing


def test_checksums_see_every_element_and_its_position():
    x = jnp.arange(16, dtype=jnp.float32)
    base = checkpointing.state_checksums({"x": x})[0]["x"]
    assert checkpointing.state_checksums({"x": x.at[3].set(3.0000002)})[0]["x"] != base
    assert checkpointing.state_checksums({"x": x[::-1]})[0]["x"] != base
    halves = jnp.asarray([1.0, 2.0], jnp.bfloat16)
    assert checkpointing.state_checksums({"x": halves})[1]
    assert not checkpointing.state_checksums({"x": halves.at[0].set(jnp.nan)})[1]


def test_a_non_finite_state_is_never_saved(tmp_path):
    manager = _save(tmp_path, 2, {"w": jnp.ones(3)})
    with pytest.raises(errors.CheckpointError, match="step 4 holds NaN.*newest is step 2"):
        checkpointing.save_checkpoint(manager, 4, {"w": jnp.array([1.0, jnp.inf, 0.0])}, None)
    manager.wait_until_finished()
    assert manager.all_steps() == [2]
    manager.close()


def test_set_aside_checkpoints_are_never_overwritten(tmp_path):
    directory = tmp_path / "checkpoints"
    for content in (b"first", b"second"):
        manager = _save(directory, 3, {"w": jnp.ones(2)})
        (directory / "3" / "marker").write_bytes(content)
        checkpointing._quarantine(manager, 3)
        manager.close()
    corrupt = tmp_path / "checkpoints_corrupt"
    assert (corrupt / "3" / "marker").read_bytes() == b"first"
    assert (corrupt / "3.1" / "marker").read_bytes() == b"second"


def test_config_changes_ignore_the_resume_safe_fields():
    stored = {"num_train_steps": 4, "eval": {"num_pairs": 40}, "loss": {"margin": 0.5}}
    longer = {"num_train_steps": 8, "eval": {"num_pairs": 6000}, "loss": {"margin": 0.5}}
    assert checkpointing.config_changes(stored, longer) == []
    other = {**stored, "loss": {"margin": 0.4}, "seed": 1}
    assert checkpointing.config_changes(stored, other) == [
        "loss.margin: 0.5 → 0.4",
        "seed: <absent> → 1",
    ]
