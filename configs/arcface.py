"""ArcFace, the additive angular margin (Deng, Guo, Xue, Zafeiriou, CVPR 2019).

Target logit ``s·cos(θ_y + m)``, computed as ``cos θ cos m − sin θ sin m``; past
``θ_y + m > π`` it falls back to ``cos θ − m·sin m`` (InsightFace), or with
``easy_margin`` to ``cos θ`` where ``cos θ < 0``. Paper: s = 64, m = 0.5; ResNet-100
on MS1MV2, batch 512, SGD momentum 0.9, weight decay 5e-4, lr 0.1 divided by 10 at
100k and 160k iterations, 180k in all. MNIST: s = 16 and m = 0.2 rad on 3-D features
(LeNets++, see ``configs/default.py``), which train in a few minutes of CPU.

    python -m faceloss_jax.main --config=configs/arcface.py --workdir=/tmp/fl_arcface
    python -m faceloss_jax.main --config=configs/arcface.py:face --workdir=/tmp/fl_face
"""

import ml_collections

from configs import default


def get_config(variant: str = "mnist") -> ml_collections.ConfigDict:
    """ArcFace; ``variant`` as in ``configs/default.py``."""
    config = default.get_config(variant, angular=True)
    config.loss = default.loss_config(
        "arcface",
        scale=16.0 if default.recipe(variant) == "mnist" else 64.0,  # s: 16 on 3-D MNIST features
        margin=0.2 if default.recipe(variant) == "mnist" else 0.5,  # m: 0.2 rad on MNIST
    )
    return config
