"""Multi-host training with real processes: 2 processes × 4 devices run as 1 × 8.

Each 2 × 4 job is two ``python`` processes on localhost joined by
``jax.distributed.initialize`` with gloo CPU collectives (``tests/multiprocess.py``);
the 1 × 8 references run in the test process (8 host devices, ``conftest.py``).

Tolerance of 2 × 4 against 1 × 8 (``state_tolerance``): with one global batch layout
device i sees the same rows in both runs, so every per-device value is computed by the
same program on the same inputs; what differs is the order in which the cross-device
sums (gradient ``pmean``, BatchNorm statistics, the softmax normalizer of
class-sharded W, centre updates) add the 8 partial results: gloo between processes,
XLA's in-process all-reduce within one. One step is then off by at most
``test_train.rounding_tolerance`` (the float32 bound n·u·Σ|terms|, amplified by the
loss's scale) of the state's largest element, and SGD at learning rate 0.1 adds the
steps' errors without amplifying them: NUM_STEPS times that, ≈ 1e-4–8e-4 (measured:
max|Δ|/max|leaf| ≤ 1.1e-6 per parameter leaf; printed by
``test_two_by_four_equals_one_by_eight``). The strided per-process layout this
replaced was 0.1–0.5 off (different flips of the same examples; 0.5 for the triplet
loss even without augmentation, per-device mining seeing other examples), so the
bound is well below a layout error. Resuming on the same topology is exact
(``assert_array_equal``).
"""

import contextlib
import fcntl
import json
import os
import pathlib
import re
import shutil
import time

import jax
import multiprocess
import numpy as np
import pytest
import test_train
from conftest import needs_devices

from faceloss_jax import data, train
from faceloss_jax.train_lib import checkpointing, optimizers, run_state, train_step

pytestmark = [needs_devices(8), pytest.mark.slow]  # the 1 × 8 references
# What the survivor of a killed peer says: the coordination service's verdict, or gloo's.
PEER_LOST = re.compile(r"another task died|Connection closed by peer|Connection reset by peer")
NUM_STEPS = 6
# The losses of the 2 × 4 == 1 × 8 check: config.loss fields over the tiny config.
CASES = {
    "softmax": {},  # synchronized BatchNorm statistics over the data axis
    "center": {},  # centres updated from the global batch
    "arcface": {"class_sharded": True, "chunk_size": 1},  # 2 classes per device, chunked
    "triplet": {},  # a pair loss: in-batch mining
}
JOB_TIMEOUT_S = 240
METRICS_LINE = "final metrics: "
WORKER = """
import os, sys
import multiprocess
if int(os.environ[multiprocess.ENV_NUM_PROCESSES]) > 1:
    multiprocess.initialize()
import test_multihost
test_multihost.worker(*sys.argv[1:])
"""


def multihost_config(loss: str, *, num_steps: int = NUM_STEPS):
    """The tiny config of ``loss`` (``test_train.tiny_config``) with SGD (linear in the
    gradient, so float reordering is not amplified as Adam's first steps ~sign(g)
    would), 4 examples per device, a checkpoint at step 3 and 6, an evaluation at 6."""
    config = test_train.tiny_config(loss)
    config.optimizer.update(name="sgd", learning_rate=0.1)
    config.update(
        batch_size=32,
        num_train_steps=num_steps,
        checkpoint_every_steps=3,
        log_every_steps=3,
        eval_every_steps=NUM_STEPS,
    )
    if CASES.get(loss, {}).get("class_sharded"):
        config.dataset.num_identities = 16  # 2 columns of W per device
    config.loss.update(CASES.get(loss, {}))
    return config


def use_tiny_model():
    run_state.training_model = lambda config: test_train.TinyNet(config.model.embedding_dim)


def worker(root: str, losses: str, steps: str = str(NUM_STEPS), delay: str = "0") -> None:
    """A launched process: for each of ``losses`` (comma-separated), trains in
    ``root/<loss>`` up to each number of ``steps`` in turn (comma-separated; a number
    already reached only evaluates the restored state), sleeping ``delay`` seconds
    before each step (so that a test can kill it mid-run); prints the metrics."""
    use_tiny_model()
    if float(delay):
        shard_batch = train_step.shard_batch

        def slow_shard_batch(batch, **kwargs):
            time.sleep(float(delay))
            return shard_batch(batch, **kwargs)

        train_step.shard_batch = slow_shard_batch
    for loss in losses.split(","):
        for num_steps in map(int, steps.split(",")):
            config = multihost_config(loss, num_steps=num_steps)
            metrics = train.train_and_evaluate(config, os.path.join(root, loss))
            print(f"{METRICS_LINE}{loss} {num_steps} {json.dumps(metrics)}", flush=True)


def printed_metrics(log: str) -> dict[tuple[str, int], dict]:
    """The metrics a worker printed, by (loss, steps)."""
    found = {}
    for line in log.splitlines():
        if line.startswith(METRICS_LINE):
            loss, steps, metrics = line[len(METRICS_LINE) :].split(" ", 2)
            found[loss, int(steps)] = json.loads(metrics)
    return found


# -- Helpers ---------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _kill_launched_processes():
    yield
    multiprocess.kill_all()


def restore_state(loss: str, workdir: pathlib.Path, *, mesh=None):
    """The latest train state of ``workdir`` restored onto ``mesh`` (1 × 8 by default),
    as host NumPy arrays; the class-sharded W is resharded by orbax."""
    mesh = mesh or train_step.data_mesh()
    config = multihost_config(loss)
    lr_fn = optimizers.create_learning_rate_schedule(config.optimizer, num_train_steps=NUM_STEPS)
    target = run_state.create_train_state(
        config,
        test_train.TinyNet(config.model.embedding_dim),
        jax.random.PRNGKey(1),  # other values than the run's: nothing comes from the target
        num_classes=data.num_classes(config.dataset),
        image_shape=test_train.IMAGE_SHAPE,
        learning_rate_fn=lr_fn,
    )
    specs = run_state.state_partition_specs(
        target, class_sharded=run_state.is_class_sharded(config)
    )
    target = jax.device_put(
        target, jax.tree.map(lambda s: jax.sharding.NamedSharding(mesh, s), specs)
    )
    manager = checkpointing.create_checkpoint_manager(workdir / "checkpoints", max_to_keep=3)
    try:
        state = checkpointing.restore_latest(manager, target)
    finally:
        manager.close()
    assert state is not None, f"no checkpoint in {workdir}"
    return state


def state_arrays(state) -> dict[str, np.ndarray]:
    """The state's leaves by path, on the host (``apply_fn``/``tx`` are static)."""
    leaves = jax.tree_util.tree_flatten_with_path(jax.device_get(state))[0]
    return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in leaves}


def state_tolerance(loss: str, num_steps: int) -> float:
    """How far two topologies' states may be apart after ``num_steps`` SGD steps,
    relative to the state's largest element (module docstring)."""
    return num_steps * test_train.rounding_tolerance(multihost_config(loss))


def assert_states_close(actual: dict, expected: dict, tol: float, what: str = "") -> None:
    """Each leaf within ``tol`` of the element and of the state's largest float element
    (a sum that cancels to ~0 still carries its terms' rounding); integers exactly."""
    assert sorted(actual) == sorted(expected)
    scale = max(float(np.abs(v).max()) for v in expected.values() if v.dtype.kind == "f" and v.size)
    for name in expected:
        if expected[name].dtype.kind != "f":
            np.testing.assert_array_equal(actual[name], expected[name], err_msg=f"{what} {name}")
        else:
            np.testing.assert_allclose(
                actual[name], expected[name], rtol=tol, atol=tol * scale, err_msg=f"{what} {name}"
            )


def differences(a: dict, b: dict) -> tuple[float, float, float]:
    """How far parameters ``a`` are from ``b``: the median and max over the parameter
    leaves of ``max|a − b| / max|b|``, and the largest ``|a − b|``. Leaves with
    ``max|b| < 1e-4`` are left out of the ratios (the Dense bias before BatchNorm gets
    no gradient and stays at rounding noise)."""
    assert sorted(a) == sorted(b)
    ratios, largest = [], 0.0
    for name in b:
        if not name.startswith(".params"):
            continue
        delta = float(np.max(np.abs(a[name] - b[name])))
        largest = max(largest, delta)
        if np.max(np.abs(b[name])) >= 1e-4:
            ratios.append(delta / float(np.max(np.abs(b[name]))))
    return float(np.median(ratios)), float(np.max(ratios)), largest


def records(workdir: pathlib.Path) -> list[dict]:
    return [
        json.loads(line)
        for line in (workdir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    ]


def steps_of(workdir: pathlib.Path, split: str) -> list[int]:
    return [r["step"] for r in records(workdir) if r["split"] == split]


def run_in_process(loss: str, workdir: pathlib.Path, *, num_steps: int = NUM_STEPS) -> dict:
    """``train_and_evaluate`` of ``loss`` on the 8 devices of this process."""
    create_model = run_state.training_model
    use_tiny_model()
    try:
        return train.train_and_evaluate(multihost_config(loss, num_steps=num_steps), str(workdir))
    finally:
        run_state.training_model = create_model


@contextlib.contextmanager
def _exclusive(lock_file: pathlib.Path):
    """Holds an exclusive lock on ``lock_file`` (``fcntl.flock``; released on exit)."""
    with open(lock_file, "w", encoding="utf-8") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Every case trained for 6 steps on 2 processes × 4 devices (one job, in the
    background) and on 1 process × 8 devices (here); ``{"2x4": root, "1x8": root}``.

    Made once per test session even when pytest-xdist spreads this module's tests
    over several workers: the first worker makes them under a file lock in the
    directory the workers share, the others wait and reuse them.
    """
    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent  # the workers' common base
    root = shared / "multihost_runs"
    roots = {name: root / name for name in ("2x4", "1x8")}
    with _exclusive(shared / "multihost_runs.lock"):
        if (root / "done").exists():
            return roots
        shutil.rmtree(root, ignore_errors=True)  # a worker that failed half-way
        for path in roots.values():
            path.mkdir(parents=True)
        job = multiprocess.launch(
            WORKER, num_processes=2, args=[roots["2x4"], ",".join(CASES)], log_dir=roots["2x4"]
        )
        try:
            for loss in CASES:
                run_in_process(loss, roots["1x8"] / loss)
            job.wait(timeout=JOB_TIMEOUT_S)
        finally:
            multiprocess.kill_all()
        (root / "done").write_text("", encoding="utf-8")
    return roots


# -- 2 × 4 == 1 × 8 --------------------------------------------------------------------


@pytest.mark.parametrize("loss", list(CASES))
def test_two_by_four_equals_one_by_eight(runs, loss):
    multi, single = runs["2x4"] / loss, runs["1x8"] / loss
    # The 2 × 4 checkpoint, class-sharded W included, restores on 1 × 8.
    actual, expected = (state_arrays(restore_state(loss, d)) for d in (multi, single))
    median, worst, largest = differences(actual, expected)
    print(
        f"\n{loss}: 2x4 vs 1x8 params, max|Δ|/max|leaf| median {median:.1e} max {worst:.1e};"
        f" max|Δ| {largest:.1e}"
    )
    tol = state_tolerance(loss, NUM_STEPS)
    assert_states_close(actual, expected, tol)
    assert int(actual[".step"]) == NUM_STEPS
    # Written once: process 0 logs each step once; one checkpoint per step, with the
    # data position of each process; no temporary directories left behind.
    assert steps_of(multi, "train") == steps_of(single, "train") == [3, 6]
    assert steps_of(multi, "eval") == [NUM_STEPS]
    assert sorted(os.listdir(multi / "checkpoints")) == ["3", "6"]
    for step in ("3", "6"):
        written = os.listdir(multi / "checkpoints" / step / "data")
        assert sorted(f for f in written if f.startswith("process_")) == [
            "process_0-of-2.json",
            "process_1-of-2.json",
        ]
    # The evaluation of process 0 equals the single-process one: the same decisions
    # (accuracies), the continuous metrics to the parameters' tolerance.
    evaluated = json.loads((multi / "eval" / f"step_{NUM_STEPS}.json").read_text(encoding="utf-8"))
    reference = json.loads((single / "eval" / f"step_{NUM_STEPS}.json").read_text(encoding="utf-8"))
    # Angles, norms and rates of O(1) computed from those parameters: to the same bound.
    assert evaluated == pytest.approx(reference, rel=tol, abs=tol)
    for name in ("closed_set_accuracy", "verification_accuracy", "auc", "eer"):
        assert evaluated[name] == reference[name], name


# -- Evaluation and cross-topology restore ---------------------------------------------


def test_two_by_four_checkpoint_evaluates_and_trains_on_one_device_and_on_eight(runs, tmp_path):
    """ArcFace's class-sharded, chunked W saved by 2 × 4 restores on 1 × 1 (a fresh
    process) and on 1 × 8 (here): the evaluation of the restored state equals the one
    the 2 × 4 job wrote, and 2 more steps continue from the saved data position as the
    1 × 8 run continued from its own checkpoint does."""
    loss, more = "arcface", NUM_STEPS + 2
    workdirs = {name: tmp_path / name / loss for name in ("1x1", "1x8", "reference")}
    for name, source in (("1x1", "2x4"), ("1x8", "2x4"), ("reference", "1x8")):
        shutil.copytree(runs[source] / loss, workdirs[name])
    job = multiprocess.launch(
        WORKER,
        num_processes=1,
        devices_per_process=1,
        args=[tmp_path / "1x1", loss, f"{NUM_STEPS},{more}"],
        log_dir=tmp_path / "logs",
    )
    evaluated = {"1x8": run_in_process(loss, workdirs["1x8"])}  # evaluation only
    run_in_process(loss, workdirs["1x8"], num_steps=more)
    run_in_process(loss, workdirs["reference"], num_steps=more)
    evaluated["1x1"] = printed_metrics(job.wait(timeout=JOB_TIMEOUT_S)[0])[loss, NUM_STEPS]

    written = json.loads(
        (runs["2x4"] / loss / "eval" / f"step_{NUM_STEPS}.json").read_text(encoding="utf-8")
    )
    # The same parameters: on 8 devices bit for bit what 2 × 4 computed; on 1 device the
    # float32 embeddings of a differently batched extraction, to their rounding.
    assert evaluated["1x8"] == written
    # One float32 forward pass per embedding: ≤ 2·n·u of it (n = test_train.LONGEST_SUM
    # inputs of a sum), ≈ 8e-6, and of the O(1) metrics averaged from the embeddings.
    forward = 2 * test_train.LONGEST_SUM * 2.0**-24
    assert evaluated["1x1"] == pytest.approx(written, rel=forward, abs=forward)
    expected = state_arrays(restore_state(loss, workdirs["reference"]))
    for name in ("1x1", "1x8"):
        assert steps_of(workdirs[name], "train") == [3, 6, more], name  # resumed, not restarted
        actual = state_arrays(restore_state(loss, workdirs[name]))
        assert int(actual[".step"]) == more
        assert_states_close(actual, expected, state_tolerance(loss, more), what=name)


# -- Failure and resumption ------------------------------------------------------------


def test_sigkill_of_one_process_stops_the_other_and_a_relaunch_resumes_exactly(runs, tmp_path):
    workdir = tmp_path / "softmax"
    job = multiprocess.launch(
        WORKER,
        num_processes=2,
        args=[tmp_path, "softmax", NUM_STEPS, 1.0],  # 1 s per step: killed before step 6
        log_dir=tmp_path / "killed",
    )
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while not (workdir / "checkpoints" / "3").exists():
        if time.monotonic() > deadline or None not in job.returncodes:
            job.kill()
            pytest.fail(
                "no checkpoint at step 3:\n" + "\n".join(job.wait(timeout=30, expect_success=False))
            )
        time.sleep(0.1)
    job.kill(1)
    killed_at = time.monotonic()
    logs = job.wait(timeout=multiprocess.HEARTBEAT_TIMEOUT_S + 50, expect_success=False)
    print(f"\nprocess 0 exited {time.monotonic() - killed_at:.1f} s after the kill; its log ends:")
    print("\n".join(logs[0].splitlines()[-15:]))
    assert job.returncodes[0] != 0
    assert PEER_LOST.search(logs[0]), logs[0][-3000:]
    assert time.monotonic() - killed_at < multiprocess.HEARTBEAT_TIMEOUT_S + 50  # no hang
    assert not (workdir / "checkpoints" / "6").exists()

    relaunch = multiprocess.launch(
        WORKER, num_processes=2, args=[tmp_path, "softmax"], log_dir=tmp_path / "relaunched"
    )
    relaunch.wait(timeout=JOB_TIMEOUT_S)
    assert steps_of(workdir, "train") == [3, 6]  # resumed at 3, not restarted
    expected = state_arrays(restore_state("softmax", runs["2x4"] / "softmax"))
    actual = state_arrays(restore_state("softmax", workdir))
    for name in expected:
        np.testing.assert_array_equal(actual[name], expected[name], err_msg=name)


def test_harness_shows_the_failing_logs_and_kills_on_timeout(tmp_path):
    failing = multiprocess.launch(
        "import os, sys; print('hello from', os.environ['FL_TEST_PROCESS_ID']); "
        "sys.exit(3 if os.environ['FL_TEST_PROCESS_ID'] == '1' else 0)",
        num_processes=2,
        log_dir=tmp_path / "failing",
    )
    with pytest.raises(multiprocess.JobError, match=r"(?s)processes \[1\] failed.*hello from 1"):
        failing.wait(timeout=60)
    hanging = multiprocess.launch(
        "import time; print('waiting', flush=True); time.sleep(600)",
        num_processes=2,
        log_dir=tmp_path / "hanging",
    )
    started = time.monotonic()
    with pytest.raises(multiprocess.JobError, match=r"(?s)past its timeout of 8 s.*waiting"):
        hanging.wait(timeout=8)
    assert time.monotonic() - started < 30 and None not in hanging.returncodes
