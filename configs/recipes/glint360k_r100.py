r"""Glint360K, r100, CosFace (s = 64, m = 0.4).

Mirrors arcface_torch's ``configs/glint360k_r100.py``.

8 GPUs × 128 = global batch 1,024; 17,091,657 images // 1,024 = 16,691 steps an
epoch; 20 epochs = 333,820 steps, 0 of warmup. ``:gpus=N`` re-derives them
for N devices (see ``configs/recipes/arcface_torch.py``).

    python -m faceloss_jax.main --config=configs/recipes/glint360k_r100.py \
        --config.dataset.path=/data/glint360k --workdir=/runs/glint360k_r100
"""

import ml_collections

from configs.recipes import arcface_torch

RECIPE = arcface_torch.ArcfaceTorch(
    source="glint360k_r100",
    network="r100",
    margin_list=(1.0, 0.0, 0.4),
    num_classes=360232,
    num_image=17091657,
    num_epoch=20,
    warmup_epoch=0,
    gpus=8,
    weight_decay=0.0001,
)


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    """The recipe; ``variant`` as in ``arcface_torch.get_config``."""
    return arcface_torch.get_config(RECIPE, variant)
