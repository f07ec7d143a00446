"""The losses of deep face recognition, as pure JAX functions.

Angular family (per-example losses of shape (B,)), Euclidean family, geometry
metrics, the λ schedule of L-Softmax/SphereFace and the successors of ArcFace.
"""

# Euclidean family (euclidean.py)
from faceloss_jax.losses.euclidean import (
    MININGS,
    batch_all_triplets,
    batch_hard_triplets,
    center_loss,
    contrastive_loss,
    contrastive_pair_loss,
    pairwise_sq_distances,
    semi_hard_triplets,
    triplet_loss,
    triplet_margin_loss,
    update_centers,
)

# Angular family (angular.py)
from faceloss_jax.losses.angular import additive_angular_margin
from faceloss_jax.losses.angular import arcface
from faceloss_jax.losses.angular import combined_angular_margin
from faceloss_jax.losses.angular import combined_margin
from faceloss_jax.losses.angular import cosface
from faceloss_jax.losses.angular import large_margin_softmax
from faceloss_jax.losses.angular import multiple_angle_psi
from faceloss_jax.losses.angular import normface
from faceloss_jax.losses.angular import softmax_cross_entropy
from faceloss_jax.losses.angular import sphereface

# Geometry, schedules (geometry.py, schedules.py)
from faceloss_jax.losses.geometry import inter_angle
from faceloss_jax.losses.geometry import intra_angle
from faceloss_jax.losses.schedules import lambda_schedule
from faceloss_jax.losses.schedules import weight_at
