"""CosFace / AM-Softmax / LMCL, the additive cosine margin (Wang et al., CVPR 2018).

Target logit ``s·(cos θ_y − m)``. CosFace (LMCL): s = 64, m = 0.35; AM-Softmax (Wang,
Cheng, Liu, Liu, 2018): s = 30, m = 0.35. MNIST: s = 16 and m = 0.2 on 3-D features
(LeNets++, see ``configs/default.py``).
"""

import ml_collections

from configs import default


def get_config(variant: str = "mnist") -> ml_collections.ConfigDict:
    """CosFace; ``variant`` as in ``configs/default.py``."""
    config = default.get_config(variant, angular=True)
    config.loss = default.loss_config(
        "cosface",
        scale=16.0 if default.recipe(variant) == "mnist" else 64.0,  # s: 16 on 3-D MNIST features
        margin=0.2
        if default.recipe(variant) == "mnist"
        else 0.35,  # m (cosine units): 0.2 on MNIST
    )
    return config
