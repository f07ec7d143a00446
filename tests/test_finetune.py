"""The README's fine-tuning command: a run starts from a converted backbone
(``config.init_from``), with a fresh head. One iResNet-18 training step on 32×32
synthetic faces (its compilation is most of this file's time)."""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from test_convert import SIZE, _env, _random_iresnet18

from faceloss_jax import weights

pytestmark = pytest.mark.slow


def test_fine_tune_command_starts_from_the_converted_backbone(tmp_path):
    """``main --config=configs/default.py:face --config.init_from=DIR`` (the README's
    fine-tuning command, shrunk to 32×32 synthetic faces and one step at learning rate 0):
    the run's backbone parameters are the converted ones."""
    source = _random_iresnet18(tmp_path / "converted", grid=SIZE // 16)
    run = tmp_path / "run"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "faceloss_jax.main",
            "--config=configs/default.py:face",
            f"--workdir={run}",
            f"--config.init_from={tmp_path / 'converted'}",
            "--config.model.name=iresnet18",
            f"--config.dataset.image_size={SIZE}",
            "--config.dataset.num_identities=4",
            "--config.dataset.held_out_identities=2",
            "--config.dataset.images_per_identity=2",
            "--config.dataset.test_images_per_identity=2",
            "--config.half_precision=False",
            "--config.batch_size=4",
            "--config.num_train_steps=1",
            "--config.optimizer.learning_rate=0.0",
            "--config.optimizer.warmup_steps=0",
            "--config.optimizer.weight_decay=0.0",
            "--config.log_every_steps=1",
            "--config.eval.num_pairs=4",
            "--config.eval.n_folds=2",
            "--config.eval.plot=False",
            "--config.eval.batch_size=4",
        ],
        env=_env(),
        capture_output=True,
        text=True,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    trained = weights.load_backbone(run)
    for path, value in jax.tree_util.tree_leaves_with_path(source["params"]):
        got = trained.variables["params"]
        for key in path:
            got = got[key.key]
        np.testing.assert_array_equal(got, value, err_msg=str(path))
