"""AdaFace (Kim, Jain, Liu, CVPR 2022).

A margin set by image quality through the feature norm: with ``ẑ = clip(h·(‖x‖ −
μ)/σ, −1, 1)``, μ and σ EMAs (α = 0.01) of the batch's feature norms carried in the
train state, the target logit is ``s·(cos(θ_y − m·ẑ) − m·ẑ − m)``: ArcFace's margin
for low-norm (hard, low-quality) samples, CosFace's for average, a larger cosine
margin for high-quality ones. Paper: m = 0.4, h = 0.333, s = 64, IR-101 on
WebFace4M. MNIST: s = 16, m = 0.2 on 3-D features.

    python -m faceloss_jax.main --config=configs/adaface.py --workdir=/tmp/fl_adaface
"""

import ml_collections

from configs import default


def get_config(variant: str = "mnist") -> ml_collections.ConfigDict:
    """AdaFace; ``variant`` as in ``configs/default.py``."""
    config = default.get_config(variant, angular=True)
    config.loss = default.loss_config(
        "adaface",
        scale=16.0 if default.recipe(variant) == "mnist" else 64.0,  # s: 16 on 3-D MNIST features
        margin=0.2 if default.recipe(variant) == "mnist" else 0.4,  # m: 0.2 rad on MNIST
    )
    return config
