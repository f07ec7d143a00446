"""An InsightFace dataset folder end to end (issue 14): ``train.rec``/``train.idx`` +
``property`` of synthetic identities and ``lfw.bin``, ``cfp_fp.bin``, ``agedb_30.bin`` of
held-out ones, written with the project's writers; ``configs/arcface.py:face,source=recordio``
trains on it through the command-line path, logs the three targets at each evaluation,
resumes after SIGKILL, and ``python -m faceloss_jax.evaluate --bins`` gives the numbers
the run logged; missing or broken files are clear errors naming the file.
"""

import json
import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from faceloss_jax import data, train
from faceloss_jax.data import images, recordio, synthetic
from faceloss_jax.train_lib import cli, periodic_eval

REPO = pathlib.Path(__file__).resolve().parents[1]
TARGETS = ("lfw", "cfp_fp", "agedb_30")
SIZE = 16
NUM_TRAIN, NUM_HELD_OUT, PER_IDENTITY, NUM_PAIRS = 8, 6, 4, 40
TARGET_KEYS = ("accuracy", "accuracy_std", "xnorm", "best", "val", "far")


def write_folder(directory: pathlib.Path) -> pathlib.Path:
    """A tiny InsightFace folder: 8 training identities × 4 JPEGs, and three pair sets
    of 40 pairs (alternating same/different) drawn from 6 held-out identities."""
    return data.write_insightface_folder(
        directory,
        num_identities=NUM_TRAIN,
        images_per_identity=PER_IDENTITY,
        held_out_identities=NUM_HELD_OUT,
        num_pairs=NUM_PAIRS,
        image_size=SIZE,
        seed=7,
        targets=TARGETS,
    )


def test_the_folder_writer_holds_what_it_says(tmp_path):
    """Identity-major train records; each target's pairs alternate same/different and
    come from the held-out identities (their faces are none of the training records)."""
    folder = write_folder(tmp_path)
    train_set = recordio.RecordIOSource(folder, image_size=SIZE)
    labels = [train_set[i]["label"] for i in range(len(train_set))]
    assert labels == list(np.repeat(np.arange(NUM_TRAIN), PER_IDENTITY))
    np.testing.assert_array_equal(
        train_set[5]["image"],
        images.decode_image(
            images.encode_image(synthetic.render_sample(7, 1, 1, image_size=SIZE)), name="face"
        ),
    )
    train_faces = {train_set[i]["image"].tobytes() for i in range(len(train_set))}
    for name in TARGETS:
        pairs = data.read_verification_bin(folder / f"{name}.bin")
        assert list(pairs.issame) == [True, False] * (NUM_PAIRS // 2)
        assert not train_faces & {face.tobytes() for face in pairs.images}


def run_args(folder: pathlib.Path) -> list[str]:
    return [
        "--config=configs/arcface.py:face,source=recordio",
        f"--config.dataset.path={folder}",
        "--config.model.name=iresnet18",
        "--config.model.embedding_dim=16",
        f"--config.dataset.image_size={SIZE}",
        "--config.batch_size=8",
        "--config.num_train_steps=4",
        "--config.optimizer.warmup_steps=0",
        "--config.log_every_steps=1",
        "--config.checkpoint_every_steps=2",
        "--config.eval_every_steps=2",
        "--config.eval.batch_size=40",
        "--config.half_precision=False",  # bfloat16 is emulated on CPU: slower to compile
    ]


# The first run, from the command-line path (cli.config_from_command_line, then
# train.train_and_evaluate), stops at its third batch (after step 2's checkpoint and
# evaluation) until the test kills it; it resumes with ``python -m faceloss_jax.main``.
_KILLED_RUN = textwrap.dedent("""
    import json, sys, time
    sys.path.insert(0, {repo!r})
    from faceloss_jax import train
    from faceloss_jax.train_lib import cli, periodic_eval, run_state, train_step
    shard_batch, calls = train_step.shard_batch, []
    def gated(batch, **kwargs):
        calls.append(1)
        if len(calls) > 2:
            time.sleep(600)
        return shard_batch(batch, **kwargs)
    train_step.shard_batch = gated
    config = cli.config_from_command_line(json.loads(sys.argv[1]))
    train.train_and_evaluate(config, sys.argv[2])
""")


def _records(workdir: pathlib.Path) -> list[dict]:
    path = workdir / "metrics.jsonl"
    if not path.exists():
        return []
    return [
        json.loads(line)
        for line in path.read_text(encoding="utf-8").splitlines()
        if line.endswith("}")
    ]


def _env(tmp_path: pathlib.Path) -> dict[str, str]:
    """The runs' environment: one CPU device and a compilation cache shared by the three
    processes (the killed run compiles; the resumed run and the CLI load)."""
    return {
        **os.environ,
        "XLA_FLAGS": "--xla_force_host_platform_device_count=1",
        "JAX_PLATFORMS": "cpu",
        "JAX_COMPILATION_CACHE_DIR": str(tmp_path / "jax_cache"),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
    }


@pytest.mark.slow
def test_recordio_folder_trains_logs_targets_resumes_and_evaluate_bins_agrees(tmp_path):
    folder = write_folder(tmp_path / "ms1m")
    assert (folder / "property").read_text(encoding="utf-8").strip() == f"{NUM_TRAIN},{SIZE},{SIZE}"
    workdir = tmp_path / "run"
    args = run_args(folder)
    config = cli.config_from_command_line(args)
    assert config.eval.val_targets == TARGETS and config.eval.threshold == "insightface"
    env = _env(tmp_path)
    killed = subprocess.Popen(
        [sys.executable, "-c", _KILLED_RUN.format(repo=str(REPO)), json.dumps(args), str(workdir)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.time() + 300
    while not any(r["split"] == "eval" for r in _records(workdir)):
        assert killed.poll() is None and time.time() < deadline, killed.communicate()[0]
        time.sleep(0.05)
    time.sleep(0.2)  # the progress line follows the metrics.jsonl record
    killed.send_signal(signal.SIGKILL)
    output = killed.communicate()[0]
    assert "[lfw][2]XNorm" in output and "Accuracy-Flip" in output, output  # progress output

    resumed = subprocess.run(
        [sys.executable, "-m", "faceloss_jax.main", f"--workdir={workdir}", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "lfw: accuracy" in resumed.stdout and "best" in resumed.stdout, resumed.stdout

    records = _records(workdir)
    assert [r["step"] for r in records if r["split"] == "train"] == [1, 2, 3, 4]  # resumed
    evals = [r for r in records if r["split"] == "eval"]
    assert [r["step"] for r in evals] == [2, 4]
    for record in evals:
        assert "closed_set_accuracy" not in record  # a recordio folder has no test split
        for name in TARGETS:
            for key in TARGET_KEYS:
                assert np.isfinite(record[f"{name}_{key}"]), (name, key)
            assert 0.0 <= record[f"{name}_accuracy"] <= 1.0 and record[f"{name}_xnorm"] > 0
    for name in TARGETS:
        accuracies = [r[f"{name}_accuracy"] for r in evals]
        assert evals[-1][f"{name}_best"] == max(accuracies)  # best so far, across the kill
    assert list((workdir / "tensorboard").iterdir())

    bins = ",".join(str(folder / f"{name}.bin") for name in TARGETS)
    cli_run = subprocess.run(
        [sys.executable, "-m", "faceloss_jax.evaluate", f"--workdir={workdir}", f"--bins={bins}"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert cli_run.returncode == 0, cli_run.stderr[-3000:]
    assert "insightface thresholds" in cli_run.stdout, cli_run.stdout
    reports = json.loads((workdir / "eval" / "verification_bins.json").read_text(encoding="utf-8"))
    for name in TARGETS:
        for key in ("accuracy", "accuracy_std", "xnorm", "val", "far"):
            assert reports[name][key] == evals[-1][f"{name}_{key}"], (name, key)
        assert reports[name]["protocol"] == "insightface"
    print(json.dumps({n: {k: evals[-1][f"{n}_{k}"] for k in TARGET_KEYS} for n in TARGETS}))


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_folder(tmp_path_factory.mktemp("insightface"))


def _copy(folder: pathlib.Path, destination: pathlib.Path) -> pathlib.Path:
    destination.mkdir()
    for path in folder.iterdir():
        (destination / path.name).write_bytes(path.read_bytes())
    return destination


def test_a_missing_target_fails_at_start_naming_the_file(folder, tmp_path):
    copy = _copy(folder, tmp_path / "copy")
    (copy / "cfp_fp.bin").unlink()
    config = cli.config_from_command_line(run_args(copy))
    with pytest.raises(FileNotFoundError, match=r"cfp_fp\.bin.*val_targets"):
        train.train_and_evaluate(config, str(tmp_path / "run"))
    assert not (tmp_path / "run" / "checkpoints").exists()  # before any training
    # Another folder for the .bin files, or fewer targets.
    config = cli.config_from_command_line(
        [*run_args(copy), f"--config.eval.val_dir={folder}", "--config.eval.val_targets=cfp_fp"]
    )
    assert list(periodic_eval.load_eval_data(config)["targets"]) == ["cfp_fp"]


def test_missing_idx_truncated_rec_and_bad_property_name_the_file(folder, tmp_path):
    config = lambda d: cli.config_from_command_line(run_args(d)).dataset  # noqa: E731
    copy = _copy(folder, tmp_path / "no_idx")
    (copy / "train.idx").unlink()
    with pytest.raises(FileNotFoundError, match=r"no_idx/train\.idx not found"):
        data.create_source(config(copy), "train")

    copy = _copy(folder, tmp_path / "cut")
    rec = copy / "train.rec"
    rec.write_bytes(rec.read_bytes()[:-9])
    with pytest.raises(recordio.RecordIOError, match=r"cut/train\.rec is truncated"):
        data.create_source(config(copy), "train")

    copy = _copy(folder, tmp_path / "bad_property")
    (copy / "property").write_text("9,16,16\n", encoding="utf-8")
    with pytest.raises(recordio.RecordIOError, match=r"bad_property/property says 9 classes"):
        data.num_classes(config(copy))
    (copy / "property").write_text("eight\n", encoding="utf-8")
    with pytest.raises(recordio.RecordIOError, match=r"bad_property/property: expected"):
        data.num_classes(config(copy))
    (copy / "property").unlink()  # optional with the header: the header gives C
    assert data.num_classes(config(copy)) == NUM_TRAIN


def test_a_set_without_header_needs_its_property(tmp_path):
    """Plain im2rec output (no identity header in record 0): ``property`` gives the
    class count; without it the error names the missing file."""
    face = images.encode_image(synthetic.render_sample(0, 0, 0, image_size=SIZE))
    with recordio.IndexedRecordIOWriter(tmp_path / "train.idx", tmp_path / "train.rec") as w:
        for key, label in enumerate([0, 1, 2, 1]):
            w.write_idx(key, recordio.pack(recordio.IRHeader(0, float(label), key, 0), face))
    with pytest.raises(recordio.RecordIOError, match=r"property not found.*no identity header"):
        data.RecordIOSource(tmp_path, image_size=SIZE)
    (tmp_path / "property").write_text("3,16,16\n", encoding="utf-8")
    source = data.RecordIOSource(tmp_path, image_size=SIZE)
    assert (len(source), source.num_classes, source[3]["label"]) == (4, 3, 1)
    assert source.property == recordio.Property(3, 16, 16)


def test_evaluate_bins_names_a_missing_file(tmp_path):
    from faceloss_jax import evaluate  # noqa: PLC0415

    with pytest.raises(FileNotFoundError, match=r"nowhere/lfw\.bin"):
        evaluate.evaluate_bins(tmp_path, [str(tmp_path / "nowhere" / "lfw.bin")])


def test_synthetic_and_mnist_runs_have_no_targets_unless_set():
    for spec in ("configs/arcface.py:face", "configs/arcface.py"):
        assert cli.config_from_command_line([f"--config={spec}"]).eval.val_targets == ()
