"""DeepID2's joint identification-verification loss (Sun et al., NeurIPS 2014).

``softmax(Wᵀx + b) + λ·contrastive``, the verification term the contrastive loss of
Hadsell, Chopra and LeCun (CVPR 2006) over all in-batch pairs: ``½D²`` for a same
pair, ``½max(0, m − D)²`` for a different one. DeepID2 reports λ = 0.05 as the best
trade-off (λ = 0 is identification only, large λ verification only). The margin m
depends on the scale of the features; here m = 10 for LeNets++'s unnormalized 2-D
features. In-batch pairs are formed within each device's part of the batch.
"""

import ml_collections

from configs import default


def get_config(variant: str = "mnist") -> ml_collections.ConfigDict:
    """DeepID2 joint loss; ``variant`` as in ``configs/default.py``."""
    config = default.get_config(variant)
    config.loss = default.loss_config(
        "contrastive",
        margin=10.0,  # m: the hinge in feature units of unnormalized LeNets++ features
    )
    if default.recipe(variant) == "face":
        # Identity-balanced batches (FaceNet; data.sampling): 4 images of each of
        # batch_size / 4 identities (32 of the 128), so every anchor has positives
        # among thousands of identities.
        config.dataset.samples_per_identity = 4
    return config
