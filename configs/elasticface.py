"""ElasticFace (Boutros, Damer, Kirchbuchner, Kuijper, CVPRW 2022).

ArcFace's or CosFace's margin drawn per sample from N(m, σ) at every step
(``variant="arc"``: ``s·cos(θ_y + m_i)``; ``"cos"``: ``s·(cos θ_y − m_i)``), with the
PRNG key of the train state, folded per step and device. ElasticFace+ (``plus``)
gives the largest margins to the samples with the smallest target cosines. Paper:
s = 64; arc m = 0.5, σ = 0.05; cos m = 0.35, σ = 0.05. MNIST: arc with s = 16,
m = 0.2 and σ = 0.02 (the paper's σ/m) on 3-D features.

    python -m faceloss_jax.main --config=configs/elasticface.py --workdir=/tmp/fl_elastic
    python -m faceloss_jax.main --config=configs/elasticface.py --workdir=/tmp/fl_elastic_cos \\
        --config.loss.variant=cos --config.loss.margin=0.1
"""

import ml_collections

from configs import default


def get_config(variant: str = "mnist") -> ml_collections.ConfigDict:
    """ElasticFace-Arc; ``variant`` as in ``configs/default.py``."""
    config = default.get_config(variant, angular=True)
    config.loss = default.loss_config(
        "elasticface",
        scale=16.0 if default.recipe(variant) == "mnist" else 64.0,  # s: 16 on 3-D MNIST features
        margin=0.2
        if default.recipe(variant) == "mnist"
        else 0.5,  # mean margin m: 0.2 rad on MNIST
        sigma=0.02
        if default.recipe(variant) == "mnist"
        else 0.05,  # σ: 0.02 on MNIST, a tenth of its margin
    )
    return config
