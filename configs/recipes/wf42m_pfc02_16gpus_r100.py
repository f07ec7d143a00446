r"""WebFace42M, r100, CosFace (s = 64, m = 0.4), Partial FC 0.2.

Mirrors arcface_torch's ``configs/wf42m_pfc02_16gpus_r100.py``.

16 GPUs × 256 = global batch 4,096; 42,474,557 images // 4,096 = 10,369 steps an
epoch; 20 epochs = 207,380 steps, 10,369 of warmup. ``:gpus=N`` re-derives them
for N devices (see ``configs/recipes/arcface_torch.py``).

    python -m faceloss_jax.main --config=configs/recipes/wf42m_pfc02_16gpus_r100.py \
        --config.dataset.path=/data/wf42m --workdir=/runs/wf42m_pfc02_16gpus_r100
"""

import ml_collections

from configs.recipes import arcface_torch

RECIPE = arcface_torch.ArcfaceTorch(
    source="wf42m_pfc02_16gpus_r100",
    network="r100",
    margin_list=(1.0, 0.0, 0.4),
    num_classes=2059906,
    num_image=42474557,
    num_epoch=20,
    warmup_epoch=1,
    gpus=16,
    sample_rate=0.2,
    batch_size=256,
    lr=0.3,
)


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    """The recipe; ``variant`` as in ``arcface_torch.get_config``."""
    return arcface_torch.get_config(RECIPE, variant)
