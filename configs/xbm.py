"""Cross-batch memory (Wang, Zhang, Huang, Scott, CVPR 2020) on the triplet loss.

The in-batch pair loss plus the same loss between the batch and a ring buffer of the
last ``memory_size`` embeddings (no gradient), filled after ``warmup_steps`` steps,
when the embeddings have stopped drifting fast; the buffer is carried in the train
state and takes the global batch. ``base="triplet"``: batch-hard triplets
(``margin`` α) in the batch and across the memory; ``"contrastive"``: Hadsell's
contrastive loss (``margin`` m). Paper: memory of 55k (SOP) with a 1k-iteration
warm-up, contrastive loss. No classifier: closed-set accuracy is by nearest class
centre. MNIST: memory of 1,024 embeddings (16 batches), warm-up 50 steps.

    python -m faceloss_jax.main --config=configs/xbm.py --workdir=/tmp/fl_xbm
"""

import ml_collections

from configs import default


def get_config(variant: str = "mnist") -> ml_collections.ConfigDict:
    """XBM on the batch-hard triplet loss; ``variant`` as in ``configs/default.py``."""
    config = default.get_config(variant, angular=True)
    mnist = default.recipe(variant) == "mnist"
    config.loss = default.loss_config(
        "xbm",
        memory_size=1024 if mnist else 16384,  # M slots: faces, many identities
        warmup_steps=50 if mnist else 1000,  # MNIST: a 300-step run
    )
    if default.recipe(variant) == "face":
        # Identity-balanced batches (FaceNet; data.sampling): 4 images of each of
        # batch_size / 4 identities (32 of the 128), so every anchor has positives
        # among thousands of identities.
        config.dataset.samples_per_identity = 4
    return config
