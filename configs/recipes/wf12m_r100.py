r"""WebFace12M, r100, CosFace (s = 64, m = 0.4).

Mirrors arcface_torch's ``configs/wf12m_r100.py``.

8 GPUs × 128 = global batch 1,024; 12,720,066 images // 1,024 = 12,421 steps an
epoch; 20 epochs = 248,420 steps, 0 of warmup. ``:gpus=N`` re-derives them
for N devices (see ``configs/recipes/arcface_torch.py``).

    python -m faceloss_jax.main --config=configs/recipes/wf12m_r100.py \
        --config.dataset.path=/data/wf12m --workdir=/runs/wf12m_r100
"""

import ml_collections

from configs.recipes import arcface_torch

RECIPE = arcface_torch.ArcfaceTorch(
    source="wf12m_r100",
    network="r100",
    margin_list=(1.0, 0.0, 0.4),
    num_classes=617970,
    num_image=12720066,
    num_epoch=20,
    warmup_epoch=0,
    gpus=8,
    val_targets=(),
)


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    """The recipe; ``variant`` as in ``arcface_torch.get_config``."""
    return arcface_torch.get_config(RECIPE, variant)
