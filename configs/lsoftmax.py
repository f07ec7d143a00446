"""L-Softmax, the large-margin softmax (Liu, Wen, Yu, Yang, ICML 2016).

Target logit ``‖W_y‖‖x‖ψ(θ_y)``, ``ψ(θ) = (−1)^k cos(mθ) − 2k`` on
``θ ∈ [kπ/m, (k+1)π/m]``, blended as ``(λ‖W_y‖‖x‖cos θ_y + ‖W_y‖‖x‖ψ(θ_y)) / (1 + λ)``
with λ annealed ``max(λ_min, base·(1 + γ·step)^−power)``. The authors' MNIST setting:
m = 4 and the λ schedule base 1000, γ 2.5e-5, power 35, λ_min 0 (see
``losses.lambda_schedule``), which spans tens of thousands of steps. Here: SphereFace's
schedule for faces (base 1000, γ 0.12, power 1, λ_min 5), and for the few-minute
MNIST run one that reaches λ_min = 5 at step 100 (γ = 2).
"""

import ml_collections

from configs import default


def get_config(variant: str = "mnist") -> ml_collections.ConfigDict:
    """L-Softmax; ``variant`` as in ``configs/default.py``."""
    config = default.get_config(variant, angular=True)
    mnist = default.recipe(variant) == "mnist"
    config.loss = default.loss_config(
        "lsoftmax",
        lambda_gamma=2.0 if mnist else 0.12,  # MNIST: λ_min at step 100
    )
    return config
