"""AdaCos (Zhang, Zhao, Yan, Yi, Li, Wang, CVPR 2019).

NormFace logits ``s̃·cos θ_j`` with no margin and no hand-set scale: the fixed AdaCos
uses ``s̃ = √2·ln(C − 1)``; the dynamic one (``dynamic=True``, the paper's best)
moves s̃ every step to ``ln B_avg / cos(min(π/4, θ_med))`` of the global batch,
carried in the train state (initialized at the fixed scale).

    python -m faceloss_jax.main --config=configs/adacos.py --workdir=/tmp/fl_adacos
"""

import ml_collections

from configs import default


def get_config(variant: str = "mnist") -> ml_collections.ConfigDict:
    """Dynamic AdaCos; ``variant`` as in ``configs/default.py``."""
    config = default.get_config(variant, angular=True)
    config.loss = default.loss_config("adacos")
    return config
