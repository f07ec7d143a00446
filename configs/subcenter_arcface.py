"""Sub-center ArcFace (Deng, Guo, Liu, Zafeiriou, ECCV 2020).

K sub-centres per class, W shaped (d, C, K); a class's cosine is that of its closest
sub-centre, and ArcFace's margin applies to the target: ``s·cos(θ̂_y + m)``. Paper:
K = 3, s = 64, m = 0.5 on noisy web faces (MS1MV0, Celeb500K). Its cleanup step —
keep each class's dominant sub-centre, drop the samples farther than 75° from it,
retrain with K = 1 — is ``losses.subcenter_cleanup`` on the trained W and the
training features. MNIST: s = 16, m = 0.2 on 3-D features, as ``configs/arcface.py``.

    python -m faceloss_jax.main --config=configs/subcenter_arcface.py --workdir=/tmp/fl_subc
"""

import ml_collections

from configs import default


def get_config(variant: str = "mnist") -> ml_collections.ConfigDict:
    """Sub-center ArcFace; ``variant`` as in ``configs/default.py``."""
    config = default.get_config(variant, angular=True)
    config.loss = default.loss_config(
        "subcenter_arcface",
        scale=16.0 if default.recipe(variant) == "mnist" else 64.0,  # s: 16 on 3-D MNIST features
        margin=0.2 if default.recipe(variant) == "mnist" else 0.5,  # m: 0.2 rad on MNIST
    )
    return config
