"""Triplet loss (FaceNet, Schroff, Kalenichenko, Philbin, CVPR 2015).

``[‖a − p‖² − ‖a − n‖² + α]₊`` on L2-normalized embeddings with α = 0.2 and online
semi-hard negatives (FaceNet: 128-d embeddings, ~40 faces per identity in batches of
~1,800). Here, in-batch mining within each device's batch; MNIST uses "batch_all"
(every valid triplet, averaged over the active ones), which learns faster on small
batches. There is no classifier: closed-set accuracy is by nearest class centre.
"""

import ml_collections

from configs import default


def get_config(variant: str = "mnist") -> ml_collections.ConfigDict:
    """Triplet loss; ``variant`` as in ``configs/default.py``."""
    # The loss sees unit embeddings: the MNIST recipe of the angular losses (3-D).
    config = default.get_config(variant, angular=True)
    config.loss = default.loss_config(
        "triplet",
        mining="batch_all"
        if default.recipe(variant) == "mnist"
        else "semi_hard",  # faces: FaceNet's semi-hard
    )
    if default.recipe(variant) == "face":
        # Identity-balanced batches (FaceNet; data.sampling): 4 images of each of
        # batch_size / 4 identities (32 of the 128), so every anchor has positives
        # among thousands of identities.
        config.dataset.samples_per_identity = 4
    return config
