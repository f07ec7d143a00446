"""Circle loss, pair-level form (Sun et al., CVPR 2020, Eq. 1).

Each sample against the other samples of its device's batch: positives the same
identity, negatives the others, weighted as in ``configs/circle.py``. No classifier:
closed-set accuracy is by nearest class centre. Paper (re-identification, pair
form): γ = 256 (faces) / 128, m = 0.25. MNIST: γ = 32 on 3-D features.

    python -m faceloss_jax.main --config=configs/circle_pair.py --workdir=/tmp/fl_circle_pair
"""

import ml_collections

from configs import default


def get_config(variant: str = "mnist") -> ml_collections.ConfigDict:
    """Pair-level Circle loss; ``variant`` as in ``configs/default.py``."""
    config = default.get_config(variant, angular=True)
    config.loss = default.loss_config(
        "circle_pair",
        scale=32.0 if default.recipe(variant) == "mnist" else 256.0,  # γ: 32 for 7 MNIST classes
    )
    if default.recipe(variant) == "face":
        # Identity-balanced batches (FaceNet; data.sampling): 4 images of each of
        # batch_size / 4 identities (32 of the 128), so every anchor has positives
        # among thousands of identities.
        config.dataset.samples_per_identity = 4
    return config
