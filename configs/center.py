"""Center loss (Wen, Zhang, Li, Qiao, ECCV 2016), joint with the softmax.

``softmax(Wᵀx + b) + λ·½‖x − c_y‖²``, the centres moved by their own rule
``c_j ← c_j − α·Σ_i(c_j − x_i)/(1 + n_j)``, summed over the global batch. Paper: λ =
0.003 and α = 0.5 on faces; its MNIST figure (Fig. 3) varies λ from 0.0001 to 0.1 with
α = 0.5, the 2-D features collapsing onto their centres as λ grows.
"""

import ml_collections

from configs import default


def get_config(variant: str = "mnist") -> ml_collections.ConfigDict:
    """Softmax + center loss; ``variant`` as in ``configs/default.py``."""
    config = default.get_config(variant)
    config.loss = default.loss_config(
        "center",
    )
    return config
