"""SphereFace, the angular softmax A-Softmax (Liu et al., CVPR 2017).

L-Softmax's ``ψ(θ)`` with unit class weights and no bias, logits ``‖x‖ψ(θ_y)`` and
``‖x‖cos θ_j``. Paper: m = 4, λ annealed from base 1000 with γ 0.12, power 1 to λ_min
5 (the defaults of ``losses.lambda_schedule``); 64-layer CNN on CASIA-WebFace, batch
128, SGD lr 0.1 divided by 10 at 16k and 24k iterations, 28k in all. Its MNIST figure
shows 2-D and 3-D features for m = 1…4 (m = 1 is the "modified softmax"). The
few-minute MNIST run anneals λ faster (γ = 2: λ_min is reached at step 100).
"""

import ml_collections

from configs import default


def get_config(variant: str = "mnist") -> ml_collections.ConfigDict:
    """SphereFace (A-Softmax); ``variant`` as in ``configs/default.py``."""
    config = default.get_config(variant, angular=True)
    mnist = default.recipe(variant) == "mnist"
    config.loss = default.loss_config(
        "sphereface",
        lambda_gamma=2.0 if mnist else 0.12,  # MNIST: λ_min at step 100
    )
    if default.recipe(variant) != "mnist":
        config.optimizer.schedule = "step"
        config.optimizer.warmup_steps = 0
        config.optimizer.boundaries = (16_000, 24_000)
        config.num_train_steps = 28_000
    return config
