"""NormFace, the normalized softmax (Wang, Xiang, Cheng, Yuille, ACM MM 2017).

Both x and W_j L2-normalized, logits ``s·cos θ_j``. Without the scale s the softmax
cannot approach one-hot; NormFace bounds it from below, ``s ≥ ((C−1)/C)·log((C−1)P/(1−P))``
for a target probability P (C = 7 classes, P = 0.999: s ≥ 7.5), or learns it. Here a
fixed s = 16 on MNIST; s = 64 for faces, the value of the later margin losses.
"""

import ml_collections

from configs import default


def get_config(variant: str = "mnist") -> ml_collections.ConfigDict:
    """NormFace; ``variant`` as in ``configs/default.py``."""
    config = default.get_config(variant, angular=True)
    config.loss = default.loss_config(
        "normface",
        scale=16.0
        if default.recipe(variant) == "mnist"
        else 64.0,  # s: 64 for faces, the later margin losses' value
    )
    return config
