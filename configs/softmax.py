"""Softmax cross-entropy on a linear classifier, ``−log softmax(Wᵀx + b)_y``: the baseline.

The reference recipe for LeNets++ on MNIST is that of the center-loss paper (Wen et
al., ECCV 2016), whose Fig. 2 shows the 2-D softmax features: separable but spread
radially, with large intra-class distances. Face variant (``:face``): iResNet-50.
"""

import ml_collections

from configs import default


def get_config(variant: str = "mnist") -> ml_collections.ConfigDict:
    """Softmax loss; ``variant`` as in ``configs/default.py``."""
    config = default.get_config(variant)
    config.loss = default.loss_config("softmax")
    return config
