r"""MS1MV3 (ms1m-retinaface-t1), r50, ArcFace (s = 64, m = 0.5).

Mirrors arcface_torch's ``configs/ms1mv3_r50_onegpu.py``.

1 GPU × 128 = global batch 128; 5,179,510 images // 128 = 40,464 steps an
epoch; 20 epochs = 809,280 steps, 0 of warmup. ``:gpus=N`` re-derives them
for N devices (see ``configs/recipes/arcface_torch.py``).

    python -m faceloss_jax.main --config=configs/recipes/ms1mv3_r50_onegpu.py \
        --config.dataset.path=/data/ms1mv3 --workdir=/runs/ms1mv3_r50_onegpu
"""

import ml_collections

from configs.recipes import arcface_torch

RECIPE = arcface_torch.ArcfaceTorch(
    source="ms1mv3_r50_onegpu",
    network="r50",
    margin_list=(1.0, 0.5, 0.0),
    num_classes=93431,
    num_image=5179510,
    num_epoch=20,
    warmup_epoch=0,
    gpus=1,
    lr=0.02,
)


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    """The recipe; ``variant`` as in ``arcface_torch.get_config``."""
    return arcface_torch.get_config(RECIPE, variant)
