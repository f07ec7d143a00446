"""MagFace (Meng, Zhao, Huang, Zhang, CVPR 2021).

A margin that grows with the feature magnitude a = clip(‖x‖, l_a, u_a),
``m(a) = l_m + (u_m − l_m)·(a − l_a)/(u_a − l_a)``, on ArcFace's target logit, plus
λ_g·g(a) with g(a) = 1/a + a/u_a², which pulls confident samples to larger norms so
that ‖x‖ becomes a quality score. Paper: l_a = 10, u_a = 110, l_m = 0.45, u_m = 0.8,
λ_g = 35, s = 64, easy margin. MNIST: s = 16 and margins 0.1–0.3 rad on 3-D features;
the norm bounds stay the paper's (LeNets++ reaches them).

    python -m faceloss_jax.main --config=configs/magface.py --workdir=/tmp/fl_magface
"""

import ml_collections

from configs import default


def get_config(variant: str = "mnist") -> ml_collections.ConfigDict:
    """MagFace; ``variant`` as in ``configs/default.py``."""
    mnist = variant == "mnist"
    config = default.get_config(variant, angular=True)
    config.loss = default.loss_config(
        "magface",
        scale=16.0 if mnist else 64.0,  # s
        lower_norm=10.0,  # l_a
        upper_norm=110.0,  # u_a
        lower_margin=0.1 if mnist else 0.45,  # l_m, radians
        upper_margin=0.3 if mnist else 0.8,  # u_m, radians
        lambda_g=35.0,  # λ_g, weight of the regularizer g(a)
        easy_margin=True,
    )
    return config
