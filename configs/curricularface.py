"""CurricularFace (Huang, Wang, Tai, Liu, Shen, Li, Li, Huang, CVPR 2020).

ArcFace's target ``s·cos(θ_y + m)``; a negative with ``cos θ_j > cos(θ_y + m)`` is
hard and its logit becomes ``s·cos θ_j·(t + cos θ_j)``, t the running mean of the
target cosine (``t ← α·mean cos θ_y + (1 − α)·t``, α = 0.01, t₀ = 0, over the global
batch; carried in the train state): easy samples first, hard ones later. Paper: s =
64, m = 0.5, ResNet-100 on MS1MV2. MNIST: s = 16, m = 0.2 on 3-D features.

    python -m faceloss_jax.main --config=configs/curricularface.py --workdir=/tmp/fl_curr
"""

import ml_collections

from configs import default


def get_config(variant: str = "mnist") -> ml_collections.ConfigDict:
    """CurricularFace; ``variant`` as in ``configs/default.py``."""
    config = default.get_config(variant, angular=True)
    config.loss = default.loss_config(
        "curricularface",
        scale=16.0 if default.recipe(variant) == "mnist" else 64.0,  # s: 16 on 3-D MNIST features
        margin=0.2 if default.recipe(variant) == "mnist" else 0.5,  # m: 0.2 rad on MNIST
    )
    return config
