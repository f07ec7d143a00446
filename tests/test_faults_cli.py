"""Fault safety of the evaluation and conversion CLIs (issue 22): every error a user can
cause is one ``FATAL <kind>: <message>`` line, exit status 1, no traceback (unless
``--verbose``), and leaves the workdir as it was; what cannot be meant is refused
before any work (an IJB pair list that is empty or of one class, ``convert`` into a
training run's workdir, a workdir holding both a run and a backbone).

The real commands run as subprocesses (one per fault: each start costs seconds); the
rest goes through the modules' functions in-process. The "run" here is a training
run's files as ``faceloss_jax.main`` leaves them (``config.json`` and an orbax
checkpoint of step 7) for a LeNet++, which builds and runs in a second.
"""

import hashlib
import json
import logging
import os
import pathlib
import shutil
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from absl import flags
from absl.testing import flagsaver
from PIL import Image

from faceloss_jax import data, errors, evaluate, models, weights
from faceloss_jax.evaluation import ijb
from faceloss_jax.train_lib import cli

REPO = pathlib.Path(__file__).resolve().parents[1]
STEP = 7
LENET = {"name": "lenet_pp", "embedding_dim": 4}
# The tiny IJB release: face i has colour i, template i + 1 (media i + 1); templates 1, 2
# are subject A and 3, 4 subject B.
COLOURS = [(250, 130, 128), (240, 140, 120), (128, 250, 128), (130, 240, 135)]
PAIRS = "1 2 1\n1 3 0\n1 4 0\n2 3 0\n2 4 0\n3 4 1\n"


def _run(module: str, *args: str) -> subprocess.CompletedProcess:
    """``python -m module args`` on one CPU device."""
    env = {**os.environ, "XLA_FLAGS": "", "JAX_PLATFORMS": "cpu"}
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _assert_fatal(result: subprocess.CompletedProcess, kind: str, *names: str) -> None:
    """Exit status 1, the last line of stderr ``FATAL <kind>: …`` naming ``names``, and
    no traceback anywhere."""
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"FATAL {kind}: "), output
    for name in names:
        assert name in last, (name, last)
    assert "Traceback" not in output, output


def _snapshot(directory: pathlib.Path) -> dict[str, str]:
    """Every path under ``directory`` with the SHA-256 of each file's bytes."""
    return {
        str(path.relative_to(directory)): (
            hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
        )
        for path in sorted(directory.rglob("*"))
    }


def lenet_variables() -> dict:
    """Random variables of a LeNet++ with 4-d embeddings (shapes from ``eval_shape``:
    no initialization to compile)."""
    model = models.create_model(LENET)
    images = jax.ShapeDtypeStruct((1, 28, 28, 1), np.float32)
    shapes = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), images)
    rng = np.random.default_rng(0)
    return jax.tree.map(lambda leaf: rng.normal(0, 0.1, leaf.shape).astype(np.float32), shapes)


def write_run(workdir: pathlib.Path) -> None:
    """A LeNet++ training run's ``config.json`` and its checkpoint of step ``STEP``."""
    variables = lenet_variables()
    config = {
        "model": LENET,
        "dataset": {"normalization": "unit", "image_size": 28, "channels": 1},
        "eval": {"batch_size": 8, "n_folds": 2, "threshold": "exact"},
    }
    workdir.mkdir(parents=True)
    (workdir / "config.json").write_text(json.dumps(config), encoding="utf-8")
    state = {
        "params": {"backbone": variables["params"], "head": {"w": np.zeros((4, 3))}},
        "batch_stats": {},
        "step": STEP,
    }
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save((workdir / "checkpoints" / str(STEP) / "state").absolute(), state)


def write_bin(path: pathlib.Path) -> None:
    """Eight 28×28 grey pairs, alternately same and different."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (16, 28, 28, 3), dtype=np.uint8)
    data.write_verification_bin(path, images, [True, False] * 4, image_format="PNG")


def write_release(root: pathlib.Path, *, pairs: str = PAIRS, score: float = 0.9) -> None:
    """The tiny IJB-C release (aligned 112×112 crops, every detector score ``score``)."""
    (root / "meta").mkdir(parents=True)
    (root / "loose_crop").mkdir()
    coords = " ".join(f"{v:.4f}" for v in data.ARCFACE_REFERENCE.ravel())
    faces, tids = [], []
    for i, colour in enumerate(COLOURS):
        image = np.ascontiguousarray(np.broadcast_to(np.array(colour, np.uint8), (112, 112, 3)))
        Image.fromarray(image).save(root / "loose_crop" / f"{i + 1}.jpg", format="PNG")
        faces.append(f"{i + 1}.jpg {coords} {score}\n")
        tids.append(f"{i + 1}.jpg {i + 1} {i + 1}\n")
    (root / "meta" / "ijbc_name_5pts_score.txt").write_text("".join(faces), encoding="utf-8")
    (root / "meta" / "ijbc_face_tid_mid.txt").write_text("".join(tids), encoding="utf-8")
    (root / "meta" / "ijbc_template_pair_label.txt").write_text(pairs, encoding="utf-8")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> pathlib.Path:
    workdir = tmp_path_factory.mktemp("faults") / "run"
    write_run(workdir)
    return workdir


# ------------------------------------------------------------------------------------
# The commands, as subprocesses.
# ------------------------------------------------------------------------------------


@pytest.mark.slow  # 4–6 s of an idle 2-core run (--durations, 2026-12-05)
def test_evaluate_without_a_run_is_one_line_and_writes_nothing(tmp_path):
    result = _run("faceloss_jax.evaluate", f"--workdir={tmp_path}")
    _assert_fatal(result, "checkpoint error", str(tmp_path / "config.json"), "training run")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_verbose_shows_the_traceback(tmp_path):
    result = _run("faceloss_jax.evaluate", f"--workdir={tmp_path}", "--verbose")
    assert result.returncode != 0 and "Traceback" in result.stderr, result.stderr
    assert "CheckpointError" in result.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_evaluate_bins_with_a_missing_bin_leaves_the_run_unchanged(run_dir, tmp_path):
    before = _snapshot(run_dir)
    missing = tmp_path / "lfw.bin"
    result = _run("faceloss_jax.evaluate", f"--workdir={run_dir}", f"--bins={missing}")
    _assert_fatal(result, "missing file", str(missing))
    assert _snapshot(run_dir) == before  # no eval/


@pytest.mark.slow
def test_convert_with_a_missing_pth_creates_no_directory(tmp_path):
    missing, workdir = tmp_path / "backbone.pth", tmp_path / "r18"
    result = _run(
        "faceloss_jax.convert",
        f"--from_torch={missing}",
        "--model=iresnet18",
        f"--workdir={workdir}",
    )
    _assert_fatal(result, "missing file", str(missing))
    assert sorted(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_convert_into_a_training_run_is_refused_and_changes_no_byte(run_dir, tmp_path):
    source = tmp_path / "backbone.pth"
    source.write_bytes(b"not read: the workdir is refused first")
    before = _snapshot(run_dir)
    result = _run(
        "faceloss_jax.convert",
        f"--from_torch={source}",
        "--model=iresnet18",
        f"--workdir={run_dir}",
    )
    _assert_fatal(result, "checkpoint error", str(run_dir), "config.json", "checkpoints/")
    assert _snapshot(run_dir) == before
    assert not (run_dir / weights.store.BACKBONE_JSON).exists()
    assert sorted(p.name for p in run_dir.parent.iterdir()) == ["run"]  # no staging folder


@pytest.mark.slow
def test_evaluate_ijb_with_an_empty_pair_list_is_one_line(run_dir, tmp_path):
    write_release(tmp_path / "IJBC", pairs="")
    before = _snapshot(run_dir)
    result = _run("faceloss_jax.evaluate", f"--workdir={run_dir}", f"--ijb={tmp_path / 'IJBC'}")
    _assert_fatal(result, "data error", "ijbc_template_pair_label.txt", "lists no pairs")
    assert "embedded" not in result.stdout  # face_features logs each chunk it embeds
    assert _snapshot(run_dir) == before


@pytest.mark.slow
def test_embed_with_a_missing_image_is_one_line(run_dir, tmp_path):
    before = _snapshot(run_dir)
    missing = tmp_path / "a.jpg"
    result = _run("faceloss_jax.embed", f"--workdir={run_dir}", str(missing), str(missing))
    _assert_fatal(result, "data error", str(missing))
    assert _snapshot(run_dir) == before


# ------------------------------------------------------------------------------------
# The same guarantees, in-process.
# ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_ijb_pair_lists_are_refused_before_any_face_is_embedded(run_dir, tmp_path, monkeypatch):
    """``evaluate``'s main reads (and refuses) the release before loading the backbone
    or embedding a face."""

    def must_not_run(*args, **kwargs):
        raise AssertionError("called before the pair list was checked")

    monkeypatch.setattr(ijb, "face_features", must_not_run)
    monkeypatch.setattr(weights, "load_backbone", must_not_run)
    cases = {
        "empty": ("", "lists no pairs"),
        "all mated": ("1 2 1\n3 4 1\n", "all 2 pairs are mated"),
        "all non-mated": ("1 3 0\n2 4 0\n1 4 0\n", "all 3 pairs are non-mated"),
    }
    for name, (pairs, message) in cases.items():
        root = tmp_path / name
        write_release(root, pairs=pairs)
        with flagsaver.flagsaver():
            flags.FLAGS(["evaluate", f"--workdir={run_dir}", f"--ijb={root}"])
            with pytest.raises(ijb.IJBFormatError, match=message) as error:
                evaluate.main(["evaluate"])
        assert isinstance(error.value, errors.DataError)
        assert "ijbc_template_pair_label.txt" in str(error.value)


@pytest.mark.slow
def test_all_zero_detector_scores_warn_naming_the_file_and_are_not_used(tmp_path, caplog):
    write_release(tmp_path, score=0.0)
    with caplog.at_level(logging.WARNING):
        release = ijb.read_ijb(tmp_path)
    warning = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert "ijbc_name_5pts_score.txt" in warning and "is 0" in warning, warning
    features = 2 * (np.array(COLOURS, np.float32) - 127.5) / 127.5  # mean-colour embedding
    metrics = ijb.evaluate_ijb(release, features)
    assert metrics["use_detector_score"] is False
    # Scored as without weights (not TAR 0 everywhere, as zero-weighted templates gave).
    assert metrics["tar_at_far_1e-1"] == 1.0 and metrics["auc"] == 1.0

    caplog.clear()
    write_release(tmp_path / "scored")
    metrics = ijb.evaluate_ijb(ijb.read_ijb(tmp_path / "scored"), features)
    assert metrics["use_detector_score"] is True and not caplog.records


@pytest.mark.slow
def test_a_workdir_with_both_a_run_and_a_backbone_is_refused(run_dir, tmp_path):
    workdir = tmp_path / "both"
    workdir.mkdir()
    for name in ("config.json", "checkpoints"):
        os.symlink(run_dir / name, workdir / name)
    (workdir / weights.store.BACKBONE_JSON).write_text("{}", encoding="utf-8")
    with pytest.raises(errors.CheckpointError, match="both a converted backbone") as error:
        weights.load_backbone(workdir)
    assert "backbone.json" in str(error.value) and "config.json, checkpoints/" in str(error.value)
    # save_backbone refuses a run's workdir as convert does.
    with pytest.raises(errors.CheckpointError, match="holds a training run"):
        weights.save_backbone(run_dir, {"params": {}, "batch_stats": {}}, {"name": "lenet_pp"})


@pytest.mark.slow
def test_evaluate_with_config_but_no_checkpoint_creates_nothing(tmp_path):
    config = cli.config_from_command_line(["--config=configs/arcface.py"])
    (tmp_path / "config.json").write_text(config.to_json(), encoding="utf-8")
    with pytest.raises(errors.CheckpointError, match="no checkpoint"):
        evaluate.evaluate_checkpoint(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["config.json"]  # no checkpoints/


@pytest.mark.slow
def test_a_failed_save_leaves_no_backbone_directory(tmp_path, monkeypatch):
    """A save that fails half-way (a full disk) leaves neither the directory nor the
    staging folder; an existing backbone is left whole."""

    def fail_half_way(self, directory, *args, **kwargs):
        pathlib.Path(directory).mkdir(parents=True)
        (pathlib.Path(directory) / "half").write_bytes(b"x")
        raise OSError("No space left on device")

    variables = {"params": lenet_variables()["params"], "batch_stats": {}}
    weights.save_backbone(tmp_path / "old", variables, LENET)
    before = _snapshot(tmp_path / "old")
    monkeypatch.setattr(ocp.StandardCheckpointer, "save", fail_half_way)
    for name in ("new", "old"):
        with pytest.raises(OSError, match="No space left"):
            weights.save_backbone(tmp_path / name, variables, LENET)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old"]
    assert _snapshot(tmp_path / "old") == before


@pytest.mark.slow
def test_evaluate_bins_prints_the_step_as_training_logs_targets(run_dir, tmp_path):
    path, run = tmp_path / "lfw.bin", tmp_path / "run"
    write_bin(path)
    shutil.copytree(run_dir, run)
    results = evaluate.evaluate_bins(run, [str(path)])
    report = results["lfw"]
    assert report["step"] == STEP and report["n_folds"] == 2 and report["protocol"] == "exact"
    lines = evaluate.format_bins(results).splitlines()
    assert lines[0] == f"step {STEP}"
    assert lines[1] == (
        f"[lfw][{STEP}]XNorm: {report['xnorm']:.6f}  Accuracy-Flip: "
        f"{report['accuracy']:.5f}+-{report['accuracy_std']:.5f}  Accuracy-Highest: "
        f"{report['accuracy']:.5f}  (2-fold, exact thresholds)"
    )
    assert lines[2].startswith(f"[lfw]cosine threshold: {report['threshold']:.5f}")
    saved = json.loads((run / "eval" / "verification_bins.json").read_text(encoding="utf-8"))
    assert saved["lfw"]["step"] == STEP


@pytest.mark.slow
def test_unknown_model_names_and_missing_torch_are_user_errors(monkeypatch, tmp_path):
    with pytest.raises(errors.ConfigError, match="unknown model name 'resnet9'"):
        models.create_model({"name": "resnet9"})
    from faceloss_jax import convert  # noqa: PLC0415

    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` raises ImportError
    source = tmp_path / "backbone.pth"
    source.write_bytes(b"")
    with pytest.raises(errors.UserError, match=r"needs PyTorch: pip install -e '\.\[torch\]'"):
        convert.import_torch_checkpoint(source, "iresnet18", tmp_path / "out")
    assert [p.name for p in tmp_path.iterdir()] == ["backbone.pth"]
