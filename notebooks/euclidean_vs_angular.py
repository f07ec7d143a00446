# %% [markdown]
# # Euclidean vs angular: what normalization does to the loss
#
# The survey of deep face recognition (Wang & Deng, "Deep Face Recognition: A Survey",
# Neurocomputing 2021) splits the losses into a **Euclidean-distance** family (contrastive,
# triplet, center loss) and an **angular/cosine-margin** family, and traces the second to
# two normalizations:
#
# * **weight normalization** ($\|W_j\| = 1$, SphereFace): the logit $W_j^\top x$ no longer
#   favours classes whose weight vectors grew large (frequent identities);
# * **feature normalization** ($\|x\| = s$, L2-softmax / NormFace): the softmax can no longer
#   lower its loss by inflating $\|x\|$ for easy samples; but the loss then has a floor that
#   depends on the scale $s$ and the number of classes.
#
# Every number below comes from the library's losses.

# %%
import os

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

import faceloss_jax
from faceloss_jax import losses

print("faceloss_jax from", os.path.relpath(os.path.dirname(faceloss_jax.__file__)))

# %% [markdown]
# ## The same embeddings at different feature norms
#
# 64 embeddings of 10 classes in 16-D, each near its unit-norm class centre, are scaled to
# norms $r$ from 0.5 to 32 without changing a single angle.

# %%
C, D, B = 10, 16, 64
k_w, k_x = jax.random.split(jax.random.PRNGKey(0))
W = jax.random.normal(k_w, (D, C))
W = W / jnp.linalg.norm(W, axis=0)  # unit class centres
labels = jnp.arange(B) % C
directions = W[:, labels].T + 0.35 * jax.random.normal(k_x, (B, D))
directions = directions / jnp.linalg.norm(directions, axis=1, keepdims=True)
correct = np.asarray(jnp.argmax(directions @ W, axis=1) == labels)
print(f"{correct.sum()} of {B} embeddings are closest to their own centre")

LOSSES = {
    "softmax (no bias)": lambda x: losses.softmax_cross_entropy(x, W, labels),
    "SphereFace m=4": lambda x: losses.sphereface(x, W, labels, margin=4),
    "NormFace s=16": lambda x: losses.normface(x, W, labels, scale=16.0),
    "ArcFace s=16 m=0.5": lambda x: losses.arcface(x, W, labels, scale=16.0, margin=0.5),
}
norms = np.array([0.5, 1, 2, 4, 8, 16, 32])
scaled = jnp.asarray(norms, jnp.float32)[:, None, None] * directions  # (7, B, D)
table = {name: np.asarray(jax.jit(jax.vmap(fn))(scaled)) for name, fn in LOSSES.items()}  # (7, B)

for subset, title in ((correct, "correctly classified"), (~correct, "misclassified")):
    print(f"mean loss, {title:21s}" + "".join(f"{f'‖x‖={r:g}':>9s}" for r in norms))
    for name, values in table.items():
        print(f"  {name:30s}" + "".join(f"{v:9.3f}" for v in values[:, subset].mean(axis=1)))

fig, axes = plt.subplots(1, 2, figsize=(12, 4), sharey=True)
for ax, subset, title in (
    (axes[0], correct, "correctly classified"),
    (axes[1], ~correct, "misclassified"),
):
    for name, values in table.items():
        ax.plot(norms, values[:, subset].mean(axis=1), "o-", label=name)
    ax.set(xscale="log", yscale="log", xlabel="feature norm ‖x‖", title=title)
axes[0].set_ylabel("mean loss")
axes[1].legend()
plt.show()

# %% [markdown]
# Without feature normalization the norm acts as a per-sample inverse temperature. The
# softmax loss of the correctly classified samples goes to zero as $\|x\|$ grows: a network
# can lower its loss by inflating the norms of easy samples without changing any angle (the
# NormFace paper's observation that easy samples get large norms), and its gradient has a
# radial component that does exactly that. SphereFace scales its logits by $\|x\|$ too, but
# with m = 4 hardly any sample here meets its margin $\psi(\theta_y) > \max_{j\neq y}\cos\theta_j$,
# so its loss grows with the norm and the radial gradient pulls the norm down. NormFace and
# ArcFace are invariant to $\|x\|$, so their gradient has no radial component at all (the
# gradient of a scale-invariant function is orthogonal to $x$, by Euler's theorem):

# %%
cos = directions @ W
cos_target = cos[jnp.arange(B), labels]
cos_other = jnp.max(jnp.where(jax.nn.one_hot(labels, C, dtype=bool), -jnp.inf, cos), axis=1)
meets_margin = losses.multiple_angle_psi(cos_target, 4) > cos_other
print(f"samples meeting SphereFace's m=4 margin: {int(meets_margin.sum())} of {B}")

x = 4.0 * directions
for name, fn in LOSSES.items():
    grad = jax.jit(jax.grad(lambda v: fn(v).mean()))(x)
    radial = jnp.sum(grad * x, axis=1) / jnp.linalg.norm(x, axis=1)
    print(
        f"{name:22s} radial gradient: correct {float(radial[correct].mean()):+.2e}, "
        f"wrong {float(radial[~correct].mean()):+.2e}"
    )
    if name.startswith(("NormFace", "ArcFace")):
        assert float(jnp.max(jnp.abs(radial))) < 1e-5
        assert np.allclose(table[name], table[name][0], rtol=1e-5)
assert np.all(np.diff(table["softmax (no bias)"][:, correct].mean(axis=1)) < 0)

# %% [markdown]
# ## Weight normalization
#
# Give class 0 a weight vector three times longer (as a frequent identity tends to get). The
# softmax, which scores $\|W_j\|\|x\|\cos\theta_j$, now assigns more samples to class 0; the
# normalized losses score $\cos\theta_j$ and do not move.

# %%
W_long = W.at[:, 0].multiply(3.0)
for name, weights in (("unit weights", W), ("‖W_0‖ = 3", W_long)):
    to_class_0 = float(jnp.mean(jnp.argmax(directions @ weights, axis=1) == 0))
    softmax = float(losses.softmax_cross_entropy(4 * directions, weights, labels).mean())
    normface = float(losses.normface(4 * directions, weights, labels, scale=16.0).mean())
    print(
        f"{name:13s} predicted class 0: {to_class_0:5.1%}   softmax loss {softmax:.4f}   "
        f"NormFace loss {normface:.4f}"
    )
assert np.allclose(
    losses.normface(directions, W, labels, scale=16.0),
    losses.normface(directions, W_long, labels, scale=16.0),
    rtol=1e-5,
)


# %% [markdown]
# ## The scale $s$ and the floor of the loss
#
# With both normalizations every logit lies in $[-s, s]$, so the loss cannot reach zero.
# NormFace (Wang et al. 2017, Proposition 2) shows that its minimum, reached when the $C$
# class centres form a regular simplex and each feature sits on its centre
# ($\cos\theta_y = 1$, $\cos\theta_j = -1/(C-1)$), is
#
# $$L_{\min}(s, C) = \log\left(1 + (C-1)\,e^{-s\,C/(C-1)}\right),$$
#
# and with an ArcFace margin the target logit at $\theta_y = 0$ is $s\cos m$:
# $\log(1 + (C-1)e^{-s(\cos m + 1/(C-1))})$. Below we build that simplex and compare the
# library's losses with the formulas.


# %%
def simplex(num_classes: int) -> jax.Array:
    # (C, C) columns: a regular simplex of unit vectors, cos = −1/(C−1) between any two.
    centred = jnp.eye(num_classes) - 1.0 / num_classes
    return centred / jnp.linalg.norm(centred, axis=0)


def floor(s, num_classes, margin=0.0):
    return np.log1p((num_classes - 1) * np.exp(-s * (np.cos(margin) + 1.0 / (num_classes - 1))))


# float64 inputs give float64 losses: the floors reach 1e-30, far below float32's resolution.
scales = np.array([1.0, 2, 4, 8, 16, 32, 64])
library = {}
with jax.enable_x64(True):
    for num_classes in (10, 100):
        centres = simplex(num_classes).astype(jnp.float64)
        y = jnp.arange(num_classes)
        x = centres.T  # each feature on its own centre
        library[num_classes] = [
            float(losses.normface(x, centres, y, scale=s).mean()) for s in scales
        ]
        assert np.allclose(library[num_classes], floor(scales, num_classes), rtol=1e-6)
        arc = [float(losses.arcface(x, centres, y, scale=s, margin=0.5).mean()) for s in scales]
        assert np.allclose(arc, floor(scales, num_classes, 0.5), rtol=1e-6)
print("library NormFace / ArcFace losses at the simplex = the closed-form floors")

s = np.geomspace(1, 100, 200)
fig, ax = plt.subplots(figsize=(7, 4))
for num_classes in (10, 100, 1_000, 100_000, 2_000_000):
    ax.plot(s, floor(s, num_classes), label=f"C = {num_classes:,}")
for num_classes, marker in ((10, "ko"), (100, "ks")):
    ax.plot(scales, library[num_classes], marker, label=f"library, C = {num_classes}")
ax.set(xscale="log", yscale="log", ylim=(1e-8, 20), xlabel="scale s", ylabel="minimum loss")
ax.legend()
plt.show()

for num_classes in (10, 1_000, 100_000, 2_000_000):
    # The smallest s whose floor is 0.01 (invert the formula).
    s_min = (num_classes - 1) / num_classes * np.log((num_classes - 1) / np.expm1(0.01))
    print(
        f"C = {num_classes:>9,}: floor at s=1 is {floor(1.0, num_classes):7.3f}; "
        f"s ≥ {s_min:5.1f} for a floor of 0.01"
    )

# %% [markdown]
# Without a scale ($s = 1$) a 10-class normalized softmax cannot go below 1.38 nats and its
# gradient never vanishes, which is why NormFace needs $s$; the $s$ needed grows only with
# $\log C$, the reason 30–64 is enough for the 10⁵–10⁶ identities of MS1M or WebFace42M.
#
# ## Contrastive and triplet: distances are angles on the sphere
#
# For unit vectors $\|a - b\|^2 = 2 - 2\cos\theta$, so the Euclidean losses on normalized
# features are angular losses in disguise. The contrastive loss (Hadsell et al. 2006) of a
# same pair is $\frac12 D^2 = 1 - \cos\theta$; that of a different pair,
# $\frac12\max(0, m - D)^2$ with $D = 2\sin(\theta/2)$, vanishes beyond
# $\theta = 2\arcsin(m/2)$ (60° for $m = 1$). FaceNet's triplet loss with $\alpha = 0.2$ on
# squared distances is $[2(\cos\theta_{an} - \cos\theta_{ap}) + \alpha]_+$: a cosine margin of
# $\alpha/2 = 0.1$ between pairs, where CosFace puts 0.35 between a sample and its class centre.

# %%
unit = directions  # unit-norm embeddings
cosines = unit @ unit.T
assert np.allclose(losses.pairwise_sq_distances(unit), 2 - 2 * cosines, atol=1e-5)

angles = np.linspace(0.0, np.pi, 181)
a = jnp.tile(jnp.array([[1.0, 0.0]]), (len(angles), 1))
b = jnp.stack([np.cos(angles), np.sin(angles)], axis=1).astype(jnp.float32)
pair = jax.vmap(  # one pair at a time: the classic loss averages over its N pairs
    lambda u, v, same: losses.contrastive_pair_loss(u[None], v[None], same[None], margin=1.0)
)
same_loss = np.asarray(pair(a, b, jnp.ones(len(angles))))
diff_loss = np.asarray(pair(a, b, jnp.zeros(len(angles))))
assert np.allclose(same_loss, 1 - np.cos(angles), atol=1e-5)
assert np.all(diff_loss[angles >= np.radians(60.0) + 1e-3] == 0) and diff_loss[0] > 0

fig, axes = plt.subplots(1, 2, figsize=(12, 4))
axes[0].plot(np.degrees(angles), same_loss, label="same pair: ½D² = 1 − cos θ")
axes[0].plot(np.degrees(angles), diff_loss, label="different pair: ½max(0, 1 − D)²")
axes[0].axvline(60, color="k", ls=":", lw=0.8)
axes[0].set(
    xlabel="angle between unit embeddings (degrees)", ylabel="contrastive loss", title="m = 1"
)
axes[0].legend()

# Unnormalized, the same angle gives a different loss at every norm: a Euclidean margin
# is not scale invariant (FaceNet L2-normalizes for this reason).
for theta in (30, 60, 90):
    v = jnp.array([[np.cos(np.radians(theta)), np.sin(np.radians(theta))]], jnp.float32)
    values = [float(losses.contrastive_pair_loss(r * a[:1], r * v, jnp.zeros(1))) for r in norms]
    axes[1].plot(norms, values, "o-", label=f"different pair at {theta}°")
axes[1].set(xscale="log", xlabel="norm of both embeddings", ylabel="contrastive loss (m = 1)")
axes[1].legend()
plt.show()

# Triplet loss on unit vectors = [2(cos θ_an − cos θ_ap) + α]₊.
k1, k2, k3 = jax.random.split(jax.random.PRNGKey(1), 3)
anchor, positive, negative = (
    v / jnp.linalg.norm(v, axis=1, keepdims=True)
    for v in (jax.random.normal(k, (256, 8)) for k in (k1, k2, k3))
)
cos_ap, cos_an = jnp.sum(anchor * positive, 1), jnp.sum(anchor * negative, 1)
expected = jnp.maximum(2 * (cos_an - cos_ap) + 0.2, 0.0)
assert np.allclose(losses.triplet_loss(anchor, positive, negative, margin=0.2), expected, atol=1e-5)
print("triplet loss on the sphere = cosine margin α/2 between pairs: checked on 256 triplets")
