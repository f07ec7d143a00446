"""The loss-ranking runner's plan: a run directory names everything that changes the run,
so a finished run is never read back for another config (the runner reuses result.json)."""

import pathlib

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
