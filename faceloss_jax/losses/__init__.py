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
    sq_distances,
    triplet_loss,
    triplet_margin_loss,
    update_centers,
)

# The engine a new margin loss is written on (engine.py)
from faceloss_jax.losses.engine import Logits
from faceloss_jax.losses.engine import cosine
from faceloss_jax.losses.engine import l2_normalize
from faceloss_jax.losses.engine import margin_softmax
from faceloss_jax.losses.engine import raw_margin_softmax

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

# Scale: Partial FC sampling and class sharding (partial_fc.py)
from faceloss_jax.losses.partial_fc import class_block_size
from faceloss_jax.losses.partial_fc import num_sampled
from faceloss_jax.losses.partial_fc import sample_classes

# Offline mining and the triplet loss as training runs it (mining.py)
from faceloss_jax.losses.mining import facenet_triplet_loss

# Geometry, schedules (geometry.py, schedules.py)
from faceloss_jax.losses.geometry import inter_angle
from faceloss_jax.losses.geometry import intra_angle
from faceloss_jax.losses.schedules import lambda_schedule
from faceloss_jax.losses.schedules import weight_at

# Successors of ArcFace: sub-centres, curricula, adaptive margins and scales, Circle, XBM
from faceloss_jax.losses.adaptive_scale import adacos
from faceloss_jax.losses.adaptive_scale import adacos_dynamic_scale
from faceloss_jax.losses.adaptive_scale import adacos_fixed_scale
from faceloss_jax.losses.adaptive_margins import AdaFaceStats
from faceloss_jax.losses.adaptive_margins import adaface
from faceloss_jax.losses.adaptive_margins import adaface_init_stats
from faceloss_jax.losses.adaptive_margins import adaface_update_stats
from faceloss_jax.losses.adaptive_margins import elasticface
from faceloss_jax.losses.adaptive_margins import elasticface_arc
from faceloss_jax.losses.adaptive_margins import elasticface_cos
from faceloss_jax.losses.adaptive_margins import magface
from faceloss_jax.losses.circle import circle_loss
from faceloss_jax.losses.circle import circle_pair_loss
from faceloss_jax.losses.curriculum import curricularface
from faceloss_jax.losses.curriculum import curricularface_update_t
from faceloss_jax.losses.subcenter import SubcenterCleanup
from faceloss_jax.losses.subcenter import subcenter_arcface
from faceloss_jax.losses.subcenter import subcenter_cleanup
from faceloss_jax.losses.xbm import CrossBatchMemory
from faceloss_jax.losses.xbm import xbm_contrastive_loss
from faceloss_jax.losses.xbm import xbm_enqueue
from faceloss_jax.losses.xbm import xbm_init
from faceloss_jax.losses.xbm import xbm_loss
from faceloss_jax.losses.xbm import xbm_triplet_loss
