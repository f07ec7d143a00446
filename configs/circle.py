"""Circle loss, class-level form (Sun, Cheng, Zhang, Zhang, Zheng, Wang, Wei, CVPR 2020).

A softmax over the class proxies W in which every similarity has its own weight,
``γ·α_p·(s_p − Δ_p)`` for the target and ``γ·α_n·(s_n − Δ_n)`` for the others
(α_p = [1 + m − s_p]₊, α_n = [s_n + m]₊, Δ_p = 1 − m, Δ_n = m): a similarity far from
its optimum is pushed harder. Paper (face recognition): γ = 256, m = 0.25. MNIST:
γ = 32 on 3-D features. ``configs/circle_pair.py`` is the pair-level form.

    python -m faceloss_jax.main --config=configs/circle.py --workdir=/tmp/fl_circle
"""

import ml_collections

from configs import default


def get_config(variant: str = "mnist") -> ml_collections.ConfigDict:
    """Class-level Circle loss; ``variant`` as in ``configs/default.py``."""
    config = default.get_config(variant, angular=True)
    config.loss = default.loss_config(
        "circle",
        scale=32.0 if default.recipe(variant) == "mnist" else 256.0,  # γ: 32 for 7 MNIST classes
    )
    return config
