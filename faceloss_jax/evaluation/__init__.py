"""Evaluation of face embeddings: extraction, verification (LFW 10-fold, ROC, IJB
TAR@FAR), identification with distractors (MegaFace), geometry (ArcFace's angles)
and the papers' figures. Everything after extraction is NumPy on (N, d) arrays.
"""

# Extraction (extract.py)
from faceloss_jax.evaluation.extract import extract_embeddings
from faceloss_jax.evaluation.extract import flip_horizontal
from faceloss_jax.evaluation.extract import l2_normalize

# Verification (verification.py)
from faceloss_jax.evaluation.verification import auc
from faceloss_jax.evaluation.verification import best_threshold
from faceloss_jax.evaluation.verification import equal_error_rate
from faceloss_jax.evaluation.verification import far_key
from faceloss_jax.evaluation.verification import fold_indices
from faceloss_jax.evaluation.verification import kfold_accuracy
from faceloss_jax.evaluation.verification import kfold_accuracy_insightface
from faceloss_jax.evaluation.verification import kfold_val_at_far
from faceloss_jax.evaluation.verification import kfold_val_at_far_insightface
from faceloss_jax.evaluation.verification import make_pairs
from faceloss_jax.evaluation.verification import pair_distances
from faceloss_jax.evaluation.verification import pair_scores
from faceloss_jax.evaluation.verification import roc_curve
from faceloss_jax.evaluation.verification import tar_at_far
from faceloss_jax.evaluation.verification import threshold_at_far
from faceloss_jax.evaluation.verification import threshold_at_far_insightface
from faceloss_jax.evaluation.verification import THRESHOLD_MODES
from faceloss_jax.evaluation.verification import verification_report

# Verification targets: .bin pair sets as arcface_torch evaluates them (pair_sets.py)
from faceloss_jax.evaluation.pair_sets import evaluate_pair_set

# Identification (identification.py)
from faceloss_jax.evaluation.identification import identification_rates
from faceloss_jax.evaluation.identification import probe_ranks

# IJB-B/C from the release layout (ijb.py)
from faceloss_jax.evaluation import ijb
from faceloss_jax.evaluation.ijb import evaluate_ijb
from faceloss_jax.evaluation.ijb import read_ijb

# Geometry (geometry.py)
from faceloss_jax.evaluation.geometry import class_centers
from faceloss_jax.evaluation.geometry import class_mean_norms
from faceloss_jax.evaluation.geometry import class_means
from faceloss_jax.evaluation.geometry import dominant_subcenters
from faceloss_jax.evaluation.geometry import inter_angle
from faceloss_jax.evaluation.geometry import intra_angle
from faceloss_jax.evaluation.geometry import pair_angles

# Figures (plots.py)
from faceloss_jax.evaluation.plots import plot_angle_histograms
from faceloss_jax.evaluation.plots import plot_features_2d
from faceloss_jax.evaluation.plots import plot_features_3d
from faceloss_jax.evaluation.plots import plot_roc

# A whole run (run.py)
from faceloss_jax.evaluation.run import closed_set_accuracy
from faceloss_jax.evaluation.run import evaluate_run
from faceloss_jax.evaluation.run import write_figures
