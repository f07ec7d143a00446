"""MagFace (Meng, Zhao, Huang, Zhang, CVPR 2021).

A margin that grows with the feature magnitude a = clip(‖x‖, l_a, u_a),
``m(a) = l_m + (u_m − l_m)·(a − l_a)/(u_a − l_a)``, on ArcFace's target logit, plus
λ_g·g(a) with g(a) = 1/a + a/u_a², which pulls confident samples to larger norms so
that ‖x‖ becomes a quality score. Paper: l_a = 10, u_a = 110, l_m = 0.45, u_m = 0.8,
λ_g = 35, s = 64, easy margin. MNIST: s = 16 and margins 0.1–0.3 rad on 3-D features,
whose norms (~2) are a tenth of a face network's: the norm bounds are divided by 10
(l_a = 1, u_a = 11) and λ_g too (3.5), which leaves λ_g·g(a) the paper's function of
the scaled norm, since g(a/10) = 10·g(a) at u_a/10.

    python -m faceloss_jax.main --config=configs/magface.py --workdir=/tmp/fl_magface
"""

import ml_collections

from configs import default


def get_config(variant: str = "mnist") -> ml_collections.ConfigDict:
    """MagFace; ``variant`` as in ``configs/default.py``."""
    mnist = default.recipe(variant) == "mnist"
    config = default.get_config(variant, angular=True)
    config.loss = default.loss_config(
        "magface",
        # MNIST: norms (~2) a tenth of a face network's, so the norm bounds and λ_g are
        # divided by 10 (see above), margins 0.1–0.3 rad, s = 16; faces: the paper's.
        scale=16.0 if mnist else 64.0,  # s
        lower_norm=1.0 if mnist else 10.0,  # l_a
        upper_norm=11.0 if mnist else 110.0,  # u_a
        lower_margin=0.1 if mnist else 0.45,  # l_m, radians
        upper_margin=0.3 if mnist else 0.8,  # u_m, radians
        lambda_g=3.5 if mnist else 35.0,  # λ_g, weight of the regularizer g(a)
    )
    return config
