"""The loss-ranking runner's plan: a run directory names everything that changes the run,
so a finished run is never read back for another config (the runner reuses result.json)."""

import json
import pathlib

import numpy as np
import pytest

from experiments import loss_ranking

TINY = ("num_identities=16", "held_out_identities=8", "num_pairs=32", "n_folds=2")


def _workdirs(tmp_path: pathlib.Path, *flags: str) -> dict[str, str]:
    argv = [*(f"--benchmark={b}" for b in TINY), f"--runs={tmp_path}", "--seeds=0", *flags]
    _, _, planned = loss_ranking.plan(argv)
    return {setting.name: workdir for setting, _, _, workdir, _ in planned}


def test_run_directories_name_the_config_changes(tmp_path):
    ranking = _workdirs(tmp_path, "--losses=cosface,arcface")
    # Without changes, the directory the study already holds (its runs resume).
    assert ranking["cosface"].endswith("/cosface/seed_0")
    margins = _workdirs(tmp_path, "--table=margins")
    assert set(margins) == set(loss_ranking.MARGIN_SWEEP)
    chosen = _workdirs(tmp_path, "--table=margins", "--variants=arcface s=16,cosface s=16")
    assert chosen == {name: margins[name] for name in ("arcface s=16", "cosface s=16")}
    with pytest.raises(SystemExit):  # argparse's one-line error, no silent empty table
        _workdirs(tmp_path, "--table=margins", "--variants=arcface s=99")
    changed = [margins["cosface s=16"], margins["cosface m=0.1"], ranking["cosface"]]
    assert len(set(changed)) == 3
    assert pathlib.Path(margins["arcface s=16"]).parent.name.startswith("arcface+")
    # A --set change is a run of its own too, the same run as the row of the same values.
    scale_16 = _workdirs(tmp_path, "--losses=cosface", "--set=loss.scale=16.0")["cosface"]
    assert scale_16 == margins["cosface s=16"]
    # And the row's own changes reach its config.
    _, _, planned = loss_ranking.plan(
        [*(f"--benchmark={b}" for b in TINY), f"--runs={tmp_path}", "--seeds=0", "--table=margins"]
    )
    configs = {setting.name: config for setting, _, config, _, _ in planned}
    assert configs["cosface s=16"].loss.scale == 16.0
    assert configs["cosface m=0.1"].loss.margin == 0.1
    assert configs["cosface m=0.1"].loss.scale == 64.0


def test_curves_leave_out_a_run_without_its_training_log(tmp_path):
    """A run whose ``result.json`` came without its ``metrics.jsonl`` (copied from another
    machine) has no curve, and the report is still written (it raised before)."""
    setting = loss_ranking.Setting("softmax", "softmax", loss_ranking.BENCHMARK)
    logged = pathlib.Path(loss_ranking.run_directory(str(tmp_path), setting, 1))
    logged.mkdir(parents=True)
    lines = [{"step": s, "split": "train", "loss": 7.0 - s} for s in (1, 2, 3)]
    (logged / "metrics.jsonl").write_text(
        "".join(f"{json.dumps(line)}\n" for line in lines), encoding="utf-8"
    )
    runs = [(setting, 0, {}), (setting, 1, {})]
    path = loss_ranking.plot_curves(runs, str(tmp_path), str(tmp_path / "curves.png"))
    assert pathlib.Path(path).stat().st_size > 0
    steps, losses = loss_ranking.training_loss(str(logged))
    np.testing.assert_array_equal(steps, [1, 2, 3])
    np.testing.assert_array_equal(losses, [6.0, 5.0, 4.0])
