"""The combined margin of ArcFace's paper, ``s·(cos(m1·θ_y + m2) − m3)``.

It contains SphereFace (m1), ArcFace (m2) and CosFace (m3). Deng et al. (CVPR 2019,
Table 1) report the combinations (m1, m2, m3) = (1, 0.3, 0.2) and (0.9, 0.4, 0.15)
with s = 64; InsightFace's combined-margin setting is (1, 0.3, 0.2), used for faces
here. MNIST: s = 16 and (1, 0.1, 0.1).
"""

import ml_collections

from configs import default


def get_config(variant: str = "mnist") -> ml_collections.ConfigDict:
    """Combined margin; ``variant`` as in ``configs/default.py``."""
    config = default.get_config(variant, angular=True)
    config.loss = default.loss_config(
        "combined",
        scale=16.0 if default.recipe(variant) == "mnist" else 64.0,  # s: 16 on 3-D MNIST features
        # InsightFace's combined setting (m2, m3) = (0.3, 0.2); MNIST: smaller margins.
        m2=0.1 if default.recipe(variant) == "mnist" else 0.3,  # additive angular (ArcFace)
        m3=0.1 if default.recipe(variant) == "mnist" else 0.2,  # additive cosine (CosFace)
    )
    return config
