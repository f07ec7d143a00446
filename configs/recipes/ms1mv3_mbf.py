r"""MS1MV3 (ms1m-retinaface-t1), mbf, ArcFace (s = 64, m = 0.5).

Mirrors arcface_torch's ``configs/ms1mv3_mbf.py``.

8 GPUs × 128 = global batch 1,024; 5,179,510 images // 1,024 = 5,058 steps an
epoch; 40 epochs = 202,320 steps, 0 of warmup. ``:gpus=N`` re-derives them
for N devices (see ``configs/recipes/arcface_torch.py``).

    python -m faceloss_jax.main --config=configs/recipes/ms1mv3_mbf.py \
        --config.dataset.path=/data/ms1mv3 --workdir=/runs/ms1mv3_mbf
"""

import ml_collections

from configs.recipes import arcface_torch

RECIPE = arcface_torch.ArcfaceTorch(
    source="ms1mv3_mbf",
    network="mbf",
    margin_list=(1.0, 0.5, 0.0),
    num_classes=93431,
    num_image=5179510,
    num_epoch=40,
    warmup_epoch=0,
    gpus=8,
    weight_decay=0.0001,
)


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    """The recipe; ``variant`` as in ``arcface_torch.get_config``."""
    return arcface_torch.get_config(RECIPE, variant)
