r"""WebFace4M, r100, CosFace (s = 64, m = 0.4).

Mirrors arcface_torch's ``configs/wf4m_r100.py``.

8 GPUs × 128 = global batch 1,024; 4,235,242 images // 1,024 = 4,135 steps an
epoch; 20 epochs = 82,700 steps, 0 of warmup. ``:gpus=N`` re-derives them
for N devices (see ``configs/recipes/arcface_torch.py``).

    python -m faceloss_jax.main --config=configs/recipes/wf4m_r100.py \
        --config.dataset.path=/data/wf4m --workdir=/runs/wf4m_r100
"""

import ml_collections

from configs.recipes import arcface_torch

RECIPE = arcface_torch.ArcfaceTorch(
    source="wf4m_r100",
    network="r100",
    margin_list=(1.0, 0.0, 0.4),
    num_classes=205990,
    num_image=4235242,
    num_epoch=20,
    warmup_epoch=0,
    gpus=8,
)


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    """The recipe; ``variant`` as in ``arcface_torch.get_config``."""
    return arcface_torch.get_config(RECIPE, variant)
