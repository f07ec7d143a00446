# %% [markdown]
# # Train and inspect: ArcFace on MNIST, features on the sphere
#
# A short run of `faceloss_jax.train.train_and_evaluate(config, workdir)` with
# `configs/arcface.py`: LeNets++ on the MNIST digits embedded in the package, digits 7, 8, 9
# held out as unseen identities, ArcFace with s = 16 and m = 0.2 rad, the setting of the
# center-loss and SphereFace papers' feature figures. The angular configs use 3-D features
# (on a circle, LeNets++ trained from scratch with a normalized loss stalls; see
# `configs/default.py`), so the features are drawn on the sphere as in SphereFace's figure;
# the softmax and center-loss configs keep 2-D features. Then the run is restored from its
# checkpoint and inspected with `faceloss_jax.evaluation`: the learned features, the open-set
# verification ROC and the angle histograms of positive and negative pairs.
#
# With `FACELOSS_NB_FAST=1` (the tests) it trains a handful of steps on a subset, enough to
# exercise every piece but not to learn; unset, it runs the config's steps (a few minutes on
# a laptop CPU).

# %%
import json
import os
import pathlib
import sys
import tempfile

import jax
import matplotlib.pyplot as plt
import numpy as np
from IPython.display import Image, display

import faceloss_jax

FAST = os.environ.get("FACELOSS_NB_FAST") == "1"  # set by the tests: a few steps
# `configs/` lives at the repository root, above this notebook.
REPO = next(
    p for p in (pathlib.Path.cwd(), *pathlib.Path.cwd().parents) if (p / "configs").is_dir()
)
sys.path.insert(0, str(REPO))

from configs import arcface  # noqa: E402
from faceloss_jax import evaluation, train  # noqa: E402
from faceloss_jax.train_lib import objectives, periodic_eval, run_state  # noqa: E402

print(
    "faceloss_jax from",
    os.path.relpath(os.path.dirname(faceloss_jax.__file__)),
    "| devices:",
    jax.device_count(),
)

# %%
config = arcface.get_config()
if FAST:
    config.num_train_steps = 3
    config.batch_size = 32
    config.optimizer.warmup_steps = 0
    config.eval.max_examples = 160
    config.eval.num_pairs = 200
config.log_every_steps = max(1, config.num_train_steps // 10)
WORKDIR = tempfile.mkdtemp(prefix="fl_arcface_")
print(config.loss)
print("workdir:", WORKDIR)

# %%
metrics = train.train_and_evaluate(config, WORKDIR)
for name in ("closed_set_accuracy", "verification_accuracy", "auc", "l_intra", "l_inter"):
    print(f"{name:22s} {metrics[name]:.4f}")

# %% [markdown]
# ## What the run wrote
#
# `metrics.jsonl` (one line per logging step and evaluation), `checkpoints/`, `tensorboard/`,
# `config.json`, and `eval/` with `step_<N>.json` and the figures.

# %%
workdir = pathlib.Path(WORKDIR)
print(sorted(p.name for p in workdir.iterdir()))
print(sorted(p.name for p in (workdir / "eval").iterdir()))
records = [
    json.loads(line)
    for line in (workdir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
]
train_records = [r for r in records if r["split"] == "train"]
fig, axes = plt.subplots(1, 2, figsize=(11, 3.5))
steps = [r["step"] for r in train_records]
axes[0].plot(steps, [r["loss"] for r in train_records], "o-")
axes[0].set(xlabel="step", ylabel="ArcFace loss")
axes[1].plot(steps, [np.degrees(r["intra_angle"]) for r in train_records], "o-")
axes[1].set(xlabel="step", ylabel="mean angle to own class centre (degrees)")
plt.show()

# %% [markdown]
# ## Restore and inspect
#
# The checkpoint is restored as `python -m faceloss_jax.evaluate` does (`run_state.restore_run`: a
# template train state gives the structure, `checkpointing.restore_latest` fills it).

# %%
eval_data = periodic_eval.load_eval_data(config)
model, state = run_state.restore_run(config, workdir)
assert int(state.step) == config.num_train_steps

variables = {"params": state.params["backbone"], "batch_stats": state.batch_stats}
embed = lambda images: model.apply(variables, images, train=False)
weights = np.asarray(objectives.classifier_weights(config.loss, state.params["head"]))  # (d, C)
(test_images, test_labels), (open_images, open_labels) = eval_data["test"], eval_data["open"]
extract = dict(batch_size=config.eval.batch_size, flip=config.eval.flip, normalize=False)
test_features = evaluation.extract_embeddings(embed, test_images, **extract)
open_features = evaluation.extract_embeddings(embed, open_images, **extract)
print("test features", test_features.shape, "| open-set features", open_features.shape)

# %% [markdown]
# ### Features
#
# The test features, coloured by class: on the unit sphere for 3-D features
# (`evaluation.plot_features_3d`, SphereFace's figure) or in the plane for 2-D ones
# (`evaluation.plot_features_2d`, the center-loss paper's). Then where ArcFace's margin
# acts: each sample's angle $\theta_y$ to its own class centre $W_y$ against its angle to the
# nearest other centre. ArcFace's target is satisfied above the line
# $\theta_{\text{other}} = \theta_y + m$, the boundary of the loss-geometry notebook; a trained
# model puts the samples there (in fast mode, after a few steps, they are not yet).

# %%
figures = pathlib.Path(WORKDIR) / "inspect"
dims = test_features.shape[1]
plot_features = {2: evaluation.plot_features_2d, 3: evaluation.plot_features_3d}[dims]
display(Image(plot_features(test_features, test_labels, str(figures / f"features_{dims}d.png"))))

cos = evaluation.l2_normalize(test_features) @ weights  # (N, C), W's columns are unit
own = np.take_along_axis(cos, test_labels[:, None], axis=1)[:, 0]
other = np.where(np.arange(cos.shape[1]) == test_labels[:, None], -np.inf, cos).max(axis=1)
theta_own, theta_other = (np.degrees(np.arccos(np.clip(c, -1, 1))) for c in (own, other))
margin = np.degrees(config.loss.margin)
fig, ax = plt.subplots(figsize=(5, 5))
for c in np.unique(test_labels):
    ax.scatter(theta_own[test_labels == c], theta_other[test_labels == c], s=3, label=str(c))
ax.plot([0, 180 - margin], [margin, 180], "k-", lw=1, label="θ_other = θ_y + m")
ax.set(
    xlim=(0, 180),
    ylim=(0, 180),
    aspect="equal",
    xlabel="θ_y to own centre (degrees)",
    ylabel="θ to nearest other centre (degrees)",
)
ax.legend(markerscale=4, fontsize="small")
plt.show()
print(f"samples beyond ArcFace's margin: {np.mean(theta_other > theta_own + margin):.1%}")

# %% [markdown]
# ### Open-set verification
#
# Balanced pairs of held-out digits (`evaluation.make_pairs`), cosine similarity, the LFW
# 10-fold protocol (`evaluation.verification_report`), its ROC (`evaluation.plot_roc`) and the
# angle histograms of positive and negative pairs (`evaluation.plot_angle_histograms`, the
# ArcFace paper's figure). Same pairs and seed as the run's own evaluation, so the accuracy
# must equal the one `train_and_evaluate` returned.

# %%
open_unit = evaluation.l2_normalize(open_features)
idx_a, idx_b, issame = evaluation.make_pairs(
    open_labels, num_pairs=config.eval.num_pairs, seed=config.seed
)
report = evaluation.verification_report(
    open_unit[idx_a], open_unit[idx_b], issame, n_folds=config.eval.n_folds
)
print(
    f"verification accuracy {report['accuracy']:.4f} ± {report['accuracy_std']:.4f}, "
    f"AUC {report['auc']:.4f}, EER {report['eer']:.4f}"
)
assert abs(report["accuracy"] - metrics["verification_accuracy"]) < 1e-9

roc_path = evaluation.plot_roc(
    {f"ArcFace, step {int(state.step)}": (report["fpr"], report["tpr"])}, str(figures / "roc.png")
)
angles = evaluation.pair_angles(open_unit[idx_a], open_unit[idx_b])
hist_path = evaluation.plot_angle_histograms(
    angles[issame], angles[~issame], str(figures / "angles.png")
)
display(Image(roc_path), Image(hist_path))
