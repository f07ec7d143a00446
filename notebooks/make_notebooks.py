"""Writes the notebooks of this directory from the cells below, so that they are reviewed
as code and committed without outputs:

    python notebooks/make_notebooks.py

Every notebook reads ``FACELOSS_NB_FAST=1`` (set by ``tests/test_notebooks.py``) to run
with few steps; without it, it runs the full demonstration.
"""

import pathlib

import nbformat
from nbformat import v4

HERE = pathlib.Path(__file__).resolve().parent

KERNELSPEC = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}


def md(text: str) -> nbformat.NotebookNode:
    return v4.new_markdown_cell(text.strip())


def code(text: str) -> nbformat.NotebookNode:
    return v4.new_code_cell(text.strip())


# ------------------------------------------------------------------------------------
# 1. Loss geometry.
# ------------------------------------------------------------------------------------

LOSS_GEOMETRY = [
    md(r"""
# Loss geometry: target logits and decision boundaries

Every angular loss of `faceloss_jax.losses` is a softmax cross-entropy in which only the
**target logit** carries a margin. With normalized features and class centres,
$\cos\theta_j = W_j^\top x / (\|W_j\|\|x\|)$, the loss of an example of class $y$ is

$$L = -\log \frac{e^{s\,f(\theta_y)}}{e^{s\,f(\theta_y)} + \sum_{j\neq y} e^{s\cos\theta_j}},$$

and the losses differ only in $f$ (SphereFace's
$\psi(\theta) = (-1)^k\cos(m\theta) - 2k$ on $\theta\in[k\pi/m, (k+1)\pi/m]$ is the monotonic
extension of $\cos m\theta$):

| loss | $f(\theta)$ | paper |
|---|---|---|
| softmax / NormFace | $\cos\theta$ | Wang et al., ACM MM 2017 |
| SphereFace (A-Softmax) | $\psi(\theta)$, below | Liu et al., CVPR 2017 |
| CosFace (AM-Softmax) | $\cos\theta - m$ | Wang et al., CVPR 2018 |
| ArcFace | $\cos(\theta + m)$ | Deng et al., CVPR 2019 |
| combined | $\cos(m_1\theta + m_2) - m_3$ | Deng et al., CVPR 2019, Eq. 4 |

The margin functions are public: `losses.multiple_angle_psi(cos, m)`,
`losses.additive_angular_margin(cos, m)` and `losses.combined_angular_margin(cos, m1, m2, m3)`
map $\cos\theta_y$ to $f(\theta_y)$ (SphereFace multiplies by $\|x\|$ instead of $s$).
"""),
    code(r"""
import os

import faceloss_jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
from faceloss_jax import losses

print("faceloss_jax from", os.path.dirname(faceloss_jax.__file__))
"""),
    md(r"""
## Target logit against θ

The ArcFace paper's figure of target-logit curves. SphereFace is shown both as the raw
$\psi$ (m = 4) and as the blend it is actually trained with,
$(\lambda\cos\theta + \psi(\theta))/(1 + \lambda)$ with $\lambda_{\min} = 5$. ArcFace
past $\theta + m > \pi$ falls back to $\cos\theta - m\sin m$ (InsightFace's rule), which keeps
the curve decreasing; the combined margin is computed through $\arccos$ as in the original
code, with no fallback, so it rises again near $\pi$.
"""),
    code(r"""
theta = np.linspace(0.0, np.pi, 721)
cos = jnp.asarray(np.cos(theta), jnp.float32)
LAMBDA_MIN = 5.0
psi = losses.multiple_angle_psi(cos, 4)
curves = {
    "softmax / NormFace: cos θ": cos,
    "SphereFace: ψ(θ), m=4": psi,
    "SphereFace, λ=5: (λcos θ + ψ)/(1+λ)": (LAMBDA_MIN * cos + psi) / (1 + LAMBDA_MIN),
    "CosFace: cos θ − 0.35": cos - 0.35,
    "ArcFace: cos(θ + 0.5)": losses.additive_angular_margin(cos, 0.5),
    "combined (1, 0.3, 0.2)": losses.combined_angular_margin(cos, 1.0, 0.3, 0.2),
    "combined (0.9, 0.4, 0.15)": losses.combined_angular_margin(cos, 0.9, 0.4, 0.15),
}
curves = {name: np.asarray(value) for name, value in curves.items()}

fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
for ax, (lo, hi) in zip(axes, [(0, 180), (20, 100)]):
    for name, target in curves.items():
        ax.plot(np.degrees(theta), target, label=name)
    ax.set(xlim=(lo, hi), ylim=(-1.5, 1.05), xlabel="θ between x and its class centre (degrees)",
           ylabel="target logit / s")
    ax.grid(alpha=0.3)
axes[0].set_title("all angles")
axes[1].set_title("20°–100°, where training samples lie (the paper's window)")
axes[1].legend(fontsize="small")
plt.show()

print(f"{'loss':40s}" + "".join(f"{d:>8d}°" for d in (0, 30, 60, 90)))
for name, target in curves.items():
    values = np.interp(np.radians([0, 30, 60, 90]), theta, target)
    print(f"{name:40s}" + "".join(f"{v:9.3f}" for v in values))
"""),
    code(r"""
arc = curves["ArcFace: cos(θ + 0.5)"]
assert np.isclose(arc[0], np.cos(0.5), atol=1e-6)
assert np.all(np.diff(arc) <= 1e-6), "ArcFace's target must decrease on [0, π]"
assert np.any(np.diff(curves["combined (1, 0.3, 0.2)"]) > 0), "no fallback: not monotonic"
assert np.isclose(curves["SphereFace: ψ(θ), m=4"][-1], -7.0)  # ψ(π) = −cos 4π − 6
around = jnp.cos(jnp.array([np.pi - 0.5 - 1e-4, np.pi - 0.5 + 1e-4]))
around = losses.additive_angular_margin(around, 0.5)
print("ArcFace's target just before and after θ = π − m: cos(θ + m) → −1, then cos θ − m·sin m:",
      np.round(np.asarray(around), 4))
"""),
    md(r"""
## Decision boundaries of two classes

Two classes with centres $W_1, W_2$ and a sample at angles $(\theta_1, \theta_2)$ to them.
The sample is assigned to class 1 with its margin when $f(\theta_1) > \cos\theta_2$, and to
class 2 when $f(\theta_2) > \cos\theta_1$. The two boundaries coincide for the softmax
($\theta_1 = \theta_2$, equal weight norms and no bias); a margin separates them by a band
in which neither class is satisfied, the ArcFace paper's comparison of decision margins
(SphereFace $m\theta_1 = \theta_2$, CosFace $\cos\theta_1 - m = \cos\theta_2$, ArcFace
$\theta_1 + m = \theta_2$). The common factor $s$ (or $\|x\|$ for SphereFace) cancels.
"""),
    code(r"""
margins = {
    "softmax / NormFace": lambda c: c,
    "SphereFace ψ, m=4": lambda c: losses.multiple_angle_psi(c, 4),
    "SphereFace, λ=5": lambda c: (
        (LAMBDA_MIN * c + losses.multiple_angle_psi(c, 4)) / (1 + LAMBDA_MIN)
    ),
    "CosFace, m=0.35": lambda c: c - 0.35,
    "ArcFace, m=0.5": lambda c: losses.additive_angular_margin(c, 0.5),
    "combined (1, 0.3, 0.2)": lambda c: losses.combined_angular_margin(c, 1.0, 0.3, 0.2),
}
grid = np.linspace(0.0, np.pi, 361)
t1, t2 = np.meshgrid(grid, grid, indexing="xy")  # t1 along x, t2 along y
c1, c2 = jnp.asarray(np.cos(t1), jnp.float32), jnp.asarray(np.cos(t2), jnp.float32)

fig, axes = plt.subplots(2, 3, figsize=(13, 8.5))
for ax, (name, f) in zip(axes.flat, margins.items()):
    wins1 = np.asarray(f(c1) > c2)
    wins2 = np.asarray(f(c2) > c1)
    region = wins1 * 1.0 - wins2 * 1.0  # 1: class 1, -1: class 2, 0: neither
    ax.contourf(np.degrees(t1), np.degrees(t2), region, levels=[-1.5, -0.5, 0.5, 1.5],
                colors=["tab:orange", "0.85", "tab:blue"])
    ax.plot([0, 180], [0, 180], "k:", lw=0.8)
    ax.set(title=name, xlabel="θ1 (degrees)", ylabel="θ2 (degrees)", aspect="equal")
fig.suptitle("blue: class 1 with its margin, orange: class 2, grey: the margin band")
plt.tight_layout()
plt.show()
"""),
    md(r"""
How wide is the band? Put the sample on the arc between two centres $\varphi$ apart, so
$\theta_1 + \theta_2 = \varphi$, and measure the arc on which neither class is satisfied.
ArcFace's band is the constant $m$ (its "exact correspondence to the geodesic distance");
SphereFace's grows with $\varphi$ ($\varphi\,(m-1)/(m+1)$ for $\psi = \cos m\theta$); CosFace's
depends on how far apart the classes sit: two classes 45° apart can never both satisfy
CosFace's m = 0.35 (the whole arc is band), which ArcFace's paper counts against a margin
in cosine units.
"""),
    code(r"""
def band_width_degrees(f, phi: float, steps: int = 20001) -> float:
    t = np.linspace(0.0, phi, steps)
    c1 = jnp.asarray(np.cos(t), jnp.float32)
    c2 = jnp.asarray(np.cos(phi - t), jnp.float32)
    neither = ~np.asarray(f(c1) > c2) & ~np.asarray(f(c2) > c1)
    return float(np.degrees(neither.mean() * phi))


phis = (45, 90, 120, 150)
print(f"{'margin':26s}" + "".join(f"  φ={p:3d}°" for p in phis))
widths = {}
for name, f in margins.items():
    widths[name] = [band_width_degrees(f, np.radians(p)) for p in phis]
    print(f"{name:26s}" + "".join(f"{w:8.1f}°" for w in widths[name]))

assert np.allclose(widths["ArcFace, m=0.5"], np.degrees(0.5), atol=0.1)
assert np.allclose(widths["SphereFace ψ, m=4"], 0.6 * np.array(phis), atol=0.1)
assert max(widths["softmax / NormFace"]) < 0.1
"""),
]

# ------------------------------------------------------------------------------------
# 2. Euclidean vs angular.
# ------------------------------------------------------------------------------------

EUCLIDEAN_VS_ANGULAR = [
    md(r"""
# Euclidean vs angular: what normalization does to the loss

The survey of deep face recognition (Wang & Deng, "Deep Face Recognition: A Survey",
Neurocomputing 2021) splits the losses into a **Euclidean-distance** family (contrastive,
triplet, center loss) and an **angular/cosine-margin** family, and traces the second to
two normalizations:

* **weight normalization** ($\|W_j\| = 1$, SphereFace): the logit $W_j^\top x$ no longer
  favours classes whose weight vectors grew large (frequent identities);
* **feature normalization** ($\|x\| = s$, L2-softmax / NormFace): the softmax can no longer
  lower its loss by inflating $\|x\|$ for easy samples; but the loss then has a floor that
  depends on the scale $s$ and the number of classes.

Every number below comes from the library's losses.
"""),
    code(r"""
import os

import faceloss_jax
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
from faceloss_jax import losses

print("faceloss_jax from", os.path.dirname(faceloss_jax.__file__))
"""),
    md(r"""
## The same embeddings at different feature norms

64 embeddings of 10 classes in 16-D, each near its unit-norm class centre, are scaled to
norms $r$ from 0.5 to 32 without changing a single angle.
"""),
    code(r"""
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
for ax, subset, title in ((axes[0], correct, "correctly classified"),
                          (axes[1], ~correct, "misclassified")):
    for name, values in table.items():
        ax.plot(norms, values[:, subset].mean(axis=1), "o-", label=name)
    ax.set(xscale="log", yscale="log", xlabel="feature norm ‖x‖", title=title)
axes[0].set_ylabel("mean loss")
axes[1].legend()
plt.show()
"""),
    md(r"""
Without feature normalization the norm acts as a per-sample inverse temperature. The
softmax loss of the correctly classified samples goes to zero as $\|x\|$ grows: a network
can lower its loss by inflating the norms of easy samples without changing any angle (the
NormFace paper's observation that easy samples get large norms), and its gradient has a
radial component that does exactly that. SphereFace scales its logits by $\|x\|$ too, but
with m = 4 hardly any sample here meets its margin $\psi(\theta_y) > \max_{j\neq y}\cos\theta_j$,
so its loss grows with the norm and the radial gradient pulls the norm down. NormFace and
ArcFace are invariant to $\|x\|$, so their gradient has no radial component at all (the
gradient of a scale-invariant function is orthogonal to $x$, by Euler's theorem):
"""),
    code(r"""
cos = directions @ W
cos_target = cos[jnp.arange(B), labels]
cos_other = jnp.max(jnp.where(jax.nn.one_hot(labels, C, dtype=bool), -jnp.inf, cos), axis=1)
meets_margin = losses.multiple_angle_psi(cos_target, 4) > cos_other
print(f"samples meeting SphereFace's m=4 margin: {int(meets_margin.sum())} of {B}")

x = 4.0 * directions
for name, fn in LOSSES.items():
    grad = jax.jit(jax.grad(lambda v: fn(v).mean()))(x)
    radial = jnp.sum(grad * x, axis=1) / jnp.linalg.norm(x, axis=1)
    print(f"{name:22s} radial gradient: correct {float(radial[correct].mean()):+.2e}, "
          f"wrong {float(radial[~correct].mean()):+.2e}")
    if name.startswith(("NormFace", "ArcFace")):
        assert float(jnp.max(jnp.abs(radial))) < 1e-5
        assert np.allclose(table[name], table[name][0], rtol=1e-5)
assert np.all(np.diff(table["softmax (no bias)"][:, correct].mean(axis=1)) < 0)
"""),
    md(r"""
## Weight normalization

Give class 0 a weight vector three times longer (as a frequent identity tends to get). The
softmax, which scores $\|W_j\|\|x\|\cos\theta_j$, now assigns more samples to class 0; the
normalized losses score $\cos\theta_j$ and do not move.
"""),
    code(r"""
W_long = W.at[:, 0].multiply(3.0)
for name, weights in (("unit weights", W), ("‖W_0‖ = 3", W_long)):
    to_class_0 = float(jnp.mean(jnp.argmax(directions @ weights, axis=1) == 0))
    softmax = float(losses.softmax_cross_entropy(4 * directions, weights, labels).mean())
    normface = float(losses.normface(4 * directions, weights, labels, scale=16.0).mean())
    print(f"{name:13s} predicted class 0: {to_class_0:5.1%}   softmax loss {softmax:.4f}   "
          f"NormFace loss {normface:.4f}")
assert np.allclose(losses.normface(directions, W, labels, scale=16.0),
                   losses.normface(directions, W_long, labels, scale=16.0), rtol=1e-5)
"""),
    md(r"""
## The scale $s$ and the floor of the loss

With both normalizations every logit lies in $[-s, s]$, so the loss cannot reach zero.
NormFace (Wang et al. 2017, Proposition 2) shows that its minimum, reached when the $C$
class centres form a regular simplex and each feature sits on its centre
($\cos\theta_y = 1$, $\cos\theta_j = -1/(C-1)$), is

$$L_{\min}(s, C) = \log\left(1 + (C-1)\,e^{-s\,C/(C-1)}\right),$$

and with an ArcFace margin the target logit at $\theta_y = 0$ is $s\cos m$:
$\log(1 + (C-1)e^{-s(\cos m + 1/(C-1))})$. Below we build that simplex and compare the
library's losses with the formulas.
"""),
    code(r"""
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
    print(f"C = {num_classes:>9,}: floor at s=1 is {floor(1.0, num_classes):7.3f}; "
          f"s ≥ {s_min:5.1f} for a floor of 0.01")
"""),
    md(r"""
Without a scale ($s = 1$) a 10-class normalized softmax cannot go below 1.38 nats and its
gradient never vanishes, which is why NormFace needs $s$; the $s$ needed grows only with
$\log C$, the reason 30–64 is enough for the 10⁵–10⁶ identities of MS1M or WebFace42M.

## Contrastive and triplet: distances are angles on the sphere

For unit vectors $\|a - b\|^2 = 2 - 2\cos\theta$, so the Euclidean losses on normalized
features are angular losses in disguise. The contrastive loss (Hadsell et al. 2006) of a
same pair is $\frac12 D^2 = 1 - \cos\theta$; that of a different pair,
$\frac12\max(0, m - D)^2$ with $D = 2\sin(\theta/2)$, vanishes beyond
$\theta = 2\arcsin(m/2)$ (60° for $m = 1$). FaceNet's triplet loss with $\alpha = 0.2$ on
squared distances is $[2(\cos\theta_{an} - \cos\theta_{ap}) + \alpha]_+$: a cosine margin of
$\alpha/2 = 0.1$ between pairs, where CosFace puts 0.35 between a sample and its class centre.
"""),
    code(r"""
unit = directions  # unit-norm embeddings
cosines = unit @ unit.T
assert np.allclose(losses.pairwise_sq_distances(unit), 2 - 2 * cosines, atol=1e-5)

angles = np.linspace(0.0, np.pi, 181)
a = jnp.tile(jnp.array([[1.0, 0.0]]), (len(angles), 1))
b = jnp.stack([np.cos(angles), np.sin(angles)], axis=1).astype(jnp.float32)
pair = jax.vmap(  # one pair at a time: the classic loss averages over its N pairs
    lambda u, v, same: losses.contrastive_pair_loss(u[None], v[None], same[None], margin=1.0))
same_loss = np.asarray(pair(a, b, jnp.ones(len(angles))))
diff_loss = np.asarray(pair(a, b, jnp.zeros(len(angles))))
assert np.allclose(same_loss, 1 - np.cos(angles), atol=1e-5)
assert np.all(diff_loss[angles >= np.radians(60.0) + 1e-3] == 0) and diff_loss[0] > 0

fig, axes = plt.subplots(1, 2, figsize=(12, 4))
axes[0].plot(np.degrees(angles), same_loss, label="same pair: ½D² = 1 − cos θ")
axes[0].plot(np.degrees(angles), diff_loss, label="different pair: ½max(0, 1 − D)²")
axes[0].axvline(60, color="k", ls=":", lw=0.8)
axes[0].set(xlabel="angle between unit embeddings (degrees)", ylabel="contrastive loss",
            title="m = 1")
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
anchor, positive, negative = (v / jnp.linalg.norm(v, axis=1, keepdims=True)
                              for v in (jax.random.normal(k, (256, 8)) for k in (k1, k2, k3)))
cos_ap, cos_an = jnp.sum(anchor * positive, 1), jnp.sum(anchor * negative, 1)
expected = jnp.maximum(2 * (cos_an - cos_ap) + 0.2, 0.0)
assert np.allclose(losses.triplet_loss(anchor, positive, negative, margin=0.2), expected, atol=1e-5)
print("triplet loss on the sphere = cosine margin α/2 between pairs: checked on 256 triplets")
"""),
]

# ------------------------------------------------------------------------------------
# 3. Composition.
# ------------------------------------------------------------------------------------

COMPOSITION = [
    md(r"""
# Composition: joint losses, schedules and a new margin in a few lines

The losses are pure functions that return per-example values, so a joint loss is a
weighted sum, a weight may be a schedule of the step (an optax schedule), and a new margin
is a function of $\cos\theta_y$. This notebook

1. trains a tiny network with **softmax + λ·center loss** (Wen et al., ECCV 2016), the
   centres moved by their own rule (`losses.update_centers`), and with DeepID2's
   **identification + λ·verification** (Sun et al., NeurIPS 2014) with λ ramped up;
2. draws the **schedules**: the λ annealing of L-Softmax/SphereFace and optax schedules;
3. writes a **new margin loss** on the library's margin-softmax engine, checks it against
   the built-in CosFace, and runs it chunked.
"""),
    code(r"""
import os

import faceloss_jax
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax
from faceloss_jax import losses
from faceloss_jax.losses import _head

FAST = os.environ.get("FACELOSS_NB_FAST") == "1"  # set by the tests: fewer steps
NUM_STEPS = 60 if FAST else 600
print("faceloss_jax from", os.path.dirname(faceloss_jax.__file__), "| steps:", NUM_STEPS)
"""),
    md(r"""
## Joint losses, one training loop

Data: 4 classes of 12-D Gaussian inputs; network: a 2-layer MLP to 2-D features; a linear
classifier $W \in \mathbb{R}^{2\times 4}$ with bias. The training loop takes the objective as a
function `objective(features, labels, head, loss_state, step) -> (loss, new_loss_state)`,
so each joint loss below is a few lines.
"""),
    code(r"""
NUM_CLASSES, IN_DIM, PER_CLASS = 4, 12, 100
k_means, k_noise, k_init = jax.random.split(jax.random.PRNGKey(0), 3)
means = 1.5 * jax.random.normal(k_means, (NUM_CLASSES, IN_DIM))
labels = jnp.repeat(jnp.arange(NUM_CLASSES), PER_CLASS)
inputs = means[labels] + jax.random.normal(k_noise, (len(labels), IN_DIM))


def init_params(key):
    k1, k2, k3 = jax.random.split(key, 3)
    return {
        "w1": jax.random.normal(k1, (IN_DIM, 32)) / np.sqrt(IN_DIM),
        "w2": jax.random.normal(k2, (32, 2)) / np.sqrt(32),
        "head": {"w": jax.random.normal(k3, (2, NUM_CLASSES)), "b": jnp.zeros(NUM_CLASSES)},
    }


def features(params, x):
    return jnp.tanh(x @ params["w1"]) @ params["w2"]


def train(objective, loss_state, *, num_steps=NUM_STEPS, learning_rate=1e-2):
    params = init_params(k_init)
    tx = optax.adam(learning_rate)
    opt_state = tx.init(params)

    @jax.jit
    def step_fn(params, opt_state, loss_state, step):
        def loss_fn(p):
            return objective(features(p, inputs), labels, p["head"], loss_state, step)

        (loss, new_loss_state), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, new_loss_state, loss

    history = []
    for step in range(num_steps):
        params, opt_state, loss_state, loss = step_fn(params, opt_state, loss_state, step)
        history.append(float(loss))
    return features(params, inputs), loss_state, history
"""),
    md(r"""
**Softmax + λ·center loss.** $L = \frac1B\sum_i \left[-\log\mathrm{softmax}(W^\top x_i + b)_{y_i}
+ \lambda\,\tfrac12\|x_i - c_{y_i}\|^2\right]$; the centres are not learned by gradient but
moved after each step by $c_j \leftarrow c_j - \alpha\sum_{i:y_i=j}(c_j - x_i)/(1 + n_j)$
(α = 0.5), a pure function that returns the new centres. The paper's λ is 0.003 on faces;
on this toy problem 0.1 shows the effect within a few dozen steps.
"""),
    code(r"""
def softmax_center(lam):
    def objective(x, y, head, centers, step):
        del step
        loss = (losses.softmax_cross_entropy(x, head["w"], y, bias=head["b"])
                + lam * losses.center_loss(x, centers, y)).mean()
        return loss, losses.update_centers(centers, x, y, alpha=0.5)

    return objective


runs = {lam: train(softmax_center(lam), jnp.zeros((NUM_CLASSES, 2))) for lam in (0.0, 0.1)}


def spread(x, y):
    # Mean distance to the class mean, relative to the mean distance between class means.
    x, y = np.asarray(x), np.asarray(y)
    class_means = np.stack([x[y == c].mean(0) for c in range(NUM_CLASSES)])
    intra = np.linalg.norm(x - class_means[y], axis=1).mean()
    inter = np.linalg.norm(class_means[:, None] - class_means[None], axis=-1)
    return float(intra / inter[np.triu_indices(NUM_CLASSES, 1)].mean())


fig, axes = plt.subplots(1, 3, figsize=(15, 4.3))
for ax, (lam, (x, centers, history)) in zip(axes, runs.items()):
    x = np.asarray(x)
    for c in range(NUM_CLASSES):
        ax.scatter(*x[np.asarray(labels) == c].T, s=4)
    ax.scatter(*np.asarray(centers).T, c="k", marker="x", s=60, label="centres")
    ax.set(title=f"λ = {lam}: intra/inter spread {spread(x, labels):.3f}", aspect="equal")
    ax.legend()
    axes[2].plot(history, label=f"λ = {lam}")
axes[2].set(xlabel="step", ylabel="joint loss", yscale="log")
axes[2].legend()
plt.show()
assert spread(runs[0.1][0], labels) < spread(runs[0.0][0], labels)
"""),
    md(r"""
**DeepID2: identification + λ·verification.** The verification signal is the contrastive
loss over all in-batch pairs (`losses.contrastive_loss`), and λ is an optax schedule read at
the (traced) step by `losses.weight_at`, which also accepts a plain number:
"""),
    code(r"""
lam = optax.linear_schedule(0.0, 0.5, transition_steps=NUM_STEPS // 2)


def deepid2(x, y, head, state, step):
    ident = losses.softmax_cross_entropy(x, head["w"], y, bias=head["b"]).mean()
    verif = losses.contrastive_loss(x, y, margin=2.0)
    return ident + losses.weight_at(lam, step) * verif, state


x_deepid2, _, history = train(deepid2, None)
head = init_params(k_init)["head"]
x0 = features(init_params(k_init), inputs)
ident0 = losses.softmax_cross_entropy(x0, head["w"], labels, bias=head["b"]).mean()
assert np.isclose(deepid2(x0, labels, head, None, 0)[0], ident0)  # λ(0) = 0
print(f"λ at steps 0, {NUM_STEPS // 4}, {NUM_STEPS}:",
      [float(lam(s)) for s in (0, NUM_STEPS // 4, NUM_STEPS)])
print(f"intra/inter spread: softmax {spread(runs[0.0][0], labels):.3f}, "
      f"DeepID2 {spread(x_deepid2, labels):.3f}")
"""),
    md(r"""
## Schedules

`losses.lambda_schedule(base, gamma, power, lambda_min)` is the annealing
$\lambda = \max(\lambda_{\min}, \mathrm{base}\,(1 + \gamma\,\mathrm{step})^{-\mathrm{power}})$ of
L-Softmax and SphereFace, an optax schedule like the others. The margin target is the blend
$(\lambda\cos\theta + \psi(\theta))/(1 + \lambda)$, so a huge λ is the plain ("modified")
softmax and λ → 0 the full margin:
"""),
    code(r"""
steps = np.arange(0, 20_001, 50)
schedules = {
    "SphereFace: lambda_schedule() (1000, 0.12, 1, λ_min=5)": losses.lambda_schedule(),
    "L-Softmax MNIST: lambda_schedule(1000, 2.5e-5, 35, 0)": losses.lambda_schedule(
        1000.0, 2.5e-5, 35.0, 0.0),
    "optax.exponential_decay(1000, 2000, 0.1)": optax.exponential_decay(1000.0, 2000, 0.1),
}
fig, ax = plt.subplots(figsize=(7, 4))
for name, schedule in schedules.items():
    ax.plot(steps, [float(losses.weight_at(schedule, s)) for s in steps], label=name)
ax.set(yscale="log", xlabel="step", ylabel="λ", ylim=(1e-2, 2e3))
ax.legend(fontsize="small")
plt.show()

x = jax.random.normal(jax.random.PRNGKey(1), (16, 8))
w = jax.random.normal(jax.random.PRNGKey(2), (8, 5))
y = jnp.arange(16) % 5
sphereface_at = jax.jit(lambda step: losses.sphereface(
    x, w, y, margin=4, lambda_=losses.weight_at(losses.lambda_schedule(), step)).mean())
modified_softmax = losses.sphereface(x, w, y, margin=1).mean()
print("SphereFace loss at steps 0, 100, 10⁶:",
      [round(float(sphereface_at(s)), 4) for s in (0, 100, 10**6)],
      "| modified softmax (m=1):", round(float(modified_softmax), 4))
assert np.isclose(sphereface_at(0), modified_softmax, rtol=0.05)
assert float(sphereface_at(10**6)) > float(sphereface_at(0))
"""),
    md(r"""
## A new margin, as a function

The engine `faceloss_jax.losses._head.margin_softmax` computes
$\mathrm{logaddexp}(t_i, \mathrm{LSE}_{j\neq y_i} z_{ij}) - t_i$, where the non-target logits
$z = s\,\tilde x^\top \tilde W + b$ are described by a `Logits` spec (which of $x$ and $W$ are
normalized, the scale) and the target logit $t_i$ is any function
`target_fn(x, w_y, b_y)` of the example, its own class centre and bias. Everything else, the
chunked `custom_vjp`, the data-parallel and class-sharded layouts, comes with it. First,
CosFace re-created in four lines and checked against the built-in one:
"""),
    code(r"""
def my_cosface(embeddings, weights, labels, *, scale=64.0, margin=0.35, chunk_size=None):
    spec = _head.Logits(normalize_embeddings=True, normalize_weights=True, scale=scale)
    return _head.margin_softmax(
        embeddings, weights, labels, spec=spec, chunk_size=chunk_size,
        target_fn=lambda x, w_y, b_y: scale * (_head.cosine(x, w_y) - margin))


k1, k2 = jax.random.split(jax.random.PRNGKey(3))
emb = jax.random.normal(k1, (32, 16))
centres = jax.random.normal(k2, (16, 100))
ids = jnp.arange(32) * 3 % 100

@jax.jit
def losses_and_grads(emb, centres):
    # Per-example losses and the gradient of their mean, for my_cosface and the built-in.
    def both(loss_fn):
        per_example = lambda e, w: loss_fn(e, w, ids, scale=30.0, margin=0.35)
        grads = jax.grad(lambda e, w: per_example(e, w).mean(), argnums=(0, 1))(emb, centres)
        return per_example(emb, centres), grads

    return both(my_cosface), both(losses.cosface)


(mine, g_mine), (builtin, g_builtin) = losses_and_grads(emb, centres)
print("max |my_cosface − losses.cosface| =", float(jnp.max(jnp.abs(mine - builtin))))
assert np.allclose(mine, builtin, rtol=1e-6, atol=1e-6)
assert all(np.allclose(a, b, rtol=1e-5, atol=1e-7) for a, b in zip(g_mine, g_builtin))
"""),
    md(r"""
Now a margin the library does not have: a **fading cosine margin**,
$f(\theta) = \cos\theta - m\,\frac{1 + \cos\theta}{2}$, which is CosFace's $m$ for easy samples
($\theta = 0$) and fades to zero for the hardest ($\theta = \pi$), so noisy labels far from
their centre are not pushed harder. Its target curve next to CosFace's and ArcFace's:
"""),
    code(r"""
def fading_margin(cos, margin):
    return cos - margin * (1.0 + cos) / 2.0


def fading_cosface(embeddings, weights, labels, *, scale=64.0, margin=0.35, chunk_size=None):
    # CosFace whose margin fades from m at θ = 0 to 0 at θ = π: s·(cos θ − m(1 + cos θ)/2).
    spec = _head.Logits(normalize_embeddings=True, normalize_weights=True, scale=scale)
    return _head.margin_softmax(
        embeddings, weights, labels, spec=spec, chunk_size=chunk_size,
        target_fn=lambda x, w_y, b_y: scale * fading_margin(_head.cosine(x, w_y), margin))


theta = np.linspace(0, np.pi, 361)
cos = jnp.asarray(np.cos(theta), jnp.float32)
fig, ax = plt.subplots(figsize=(7, 4))
ax.plot(np.degrees(theta), cos, "k:", label="cos θ")
ax.plot(np.degrees(theta), cos - 0.35, label="CosFace m=0.35")
ax.plot(np.degrees(theta), losses.additive_angular_margin(cos, 0.5), label="ArcFace m=0.5")
ax.plot(np.degrees(theta), fading_margin(cos, 0.35), label="fading margin m=0.35")
ax.set(xlabel="θ (degrees)", ylabel="target logit / s")
ax.legend()
plt.show()

@jax.jit
def dense_and_chunked(emb, centres):
    def run(chunk_size):  # 100 classes in chunks of 16: 6 blocks and a remainder of 4
        per_example = lambda e, w: fading_cosface(e, w, ids, scale=30.0, chunk_size=chunk_size)
        grads = jax.grad(lambda e, w: per_example(e, w).mean(), argnums=(0, 1))(emb, centres)
        return per_example(emb, centres), grads

    return run(None), run(16)


(dense, g_dense), (chunked, g_chunked) = dense_and_chunked(emb, centres)
print("dense mean", float(dense.mean()), "| chunked mean", float(chunked.mean()))
assert np.allclose(dense, chunked, rtol=1e-5, atol=1e-6)
assert all(np.allclose(a, b, rtol=1e-4, atol=1e-7) for a, b in zip(g_dense, g_chunked))
# Between NormFace (m = 0) and CosFace: the fading margin never exceeds m.
normface = losses.normface(emb, centres, ids, scale=30.0)
assert np.all((normface <= dense + 1e-5) & (dense <= builtin + 1e-5))

# Its gradient is finite with every embedding exactly on its centre (θ = 0).
on_centre = centres[:, ids].T
g = jax.jit(jax.grad(lambda e: fading_cosface(e, centres, ids, chunk_size=16).sum()))(on_centre)
assert bool(jnp.all(jnp.isfinite(g)))
print("chunked value and gradient = dense; finite gradient at θ = 0")
"""),
]

# ------------------------------------------------------------------------------------
# 4. Train and inspect.
# ------------------------------------------------------------------------------------

TRAIN_AND_INSPECT = [
    md(r"""
# Train and inspect: ArcFace on MNIST, features on the sphere

A short run of `faceloss_jax.train.train_and_evaluate(config, workdir)` with
`configs/arcface.py`: LeNets++ on the MNIST digits embedded in the package, digits 7, 8, 9
held out as unseen identities, ArcFace with s = 16 and m = 0.2 rad, the setting of the
center-loss and SphereFace papers' feature figures. The angular configs use 3-D features
(on a circle, LeNets++ trained from scratch with a normalized loss stalls; see
`configs/default.py`), so the features are drawn on the sphere as in SphereFace's figure;
the softmax and center-loss configs keep 2-D features. Then the run is restored from its
checkpoint and inspected with `faceloss_jax.evaluation`: the learned features, the open-set
verification ROC and the angle histograms of positive and negative pairs.

With `FACELOSS_NB_FAST=1` (the tests) it trains a handful of steps on a subset, enough to
exercise every piece but not to learn; unset, it runs the config's steps (a few minutes on
a laptop CPU).
"""),
    code(r"""
import json
import os
import pathlib
import sys
import tempfile

import faceloss_jax
import jax
import matplotlib.pyplot as plt
import numpy as np
from IPython.display import Image, display

FAST = os.environ.get("FACELOSS_NB_FAST") == "1"  # set by the tests: a few steps
# `configs/` lives at the repository root, above this notebook.
REPO = next(p for p in (pathlib.Path.cwd(), *pathlib.Path.cwd().parents)
            if (p / "configs").is_dir())
sys.path.insert(0, str(REPO))

from configs import arcface  # noqa: E402
from faceloss_jax import data, evaluation, train  # noqa: E402
from faceloss_jax.train_lib import checkpointing, objectives, optimizers  # noqa: E402

print("faceloss_jax from", os.path.dirname(faceloss_jax.__file__), "| devices:", jax.device_count())
"""),
    code(r"""
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
"""),
    code(r"""
metrics = train.train_and_evaluate(config, WORKDIR)
for name in ("closed_set_accuracy", "verification_accuracy", "auc", "l_intra", "l_inter"):
    print(f"{name:22s} {metrics[name]:.4f}")
"""),
    md(r"""
## What the run wrote

`metrics.jsonl` (one line per logging step and evaluation), `checkpoints/`, `tensorboard/`,
`config.json`, and `eval/` with `step_<N>.json` and the figures.
"""),
    code(r"""
workdir = pathlib.Path(WORKDIR)
print(sorted(p.name for p in workdir.iterdir()))
print(sorted(p.name for p in (workdir / "eval").iterdir()))
records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
train_records = [r for r in records if r["split"] == "train"]
fig, axes = plt.subplots(1, 2, figsize=(11, 3.5))
steps = [r["step"] for r in train_records]
axes[0].plot(steps, [r["loss"] for r in train_records], "o-")
axes[0].set(xlabel="step", ylabel="ArcFace loss")
axes[1].plot(steps, [np.degrees(r["intra_angle"]) for r in train_records], "o-")
axes[1].set(xlabel="step", ylabel="mean angle to own class centre (degrees)")
plt.show()
"""),
    md(r"""
## Restore and inspect

The checkpoint is restored as `python -m faceloss_jax.evaluate` does: a template train state
gives the structure, `checkpointing.restore_latest` fills it.
"""),
    code(r"""
eval_data = train.load_eval_data(config)
model = train.create_model(config)
template = train.create_train_state(
    config, model, jax.random.PRNGKey(config.seed),
    num_classes=data.num_classes(config.dataset),
    image_shape=eval_data["test"][0].shape[1:],
    learning_rate_fn=optimizers.create_learning_rate_schedule(
        config.optimizer, num_train_steps=config.num_train_steps),
)
manager = checkpointing.create_checkpoint_manager(workdir / "checkpoints", max_to_keep=1)
state = checkpointing.restore_latest(manager, template)
manager.close()
assert int(state.step) == config.num_train_steps

variables = {"params": state.params["backbone"], "batch_stats": state.batch_stats}
embed = lambda images: model.apply(variables, images, train=False)
weights = np.asarray(objectives.classifier_weights(config.loss, state.params["head"]))  # (d, C)
(test_images, test_labels), (open_images, open_labels) = eval_data["test"], eval_data["open"]
extract = dict(batch_size=config.eval.batch_size, flip=config.eval.flip, normalize=False)
test_features = evaluation.extract_embeddings(embed, test_images, **extract)
open_features = evaluation.extract_embeddings(embed, open_images, **extract)
print("test features", test_features.shape, "| open-set features", open_features.shape)
"""),
    md(r"""
### Features

The test features, coloured by class: on the unit sphere for 3-D features
(`evaluation.plot_features_3d`, SphereFace's figure) or in the plane for 2-D ones
(`evaluation.plot_features_2d`, the center-loss paper's). Then where ArcFace's margin
acts: each sample's angle $\theta_y$ to its own class centre $W_y$ against its angle to the
nearest other centre. ArcFace's target is satisfied above the line
$\theta_{\text{other}} = \theta_y + m$, the boundary of the loss-geometry notebook; a trained
model puts the samples there (in fast mode, after a few steps, they are not yet).
"""),
    code(r"""
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
ax.set(xlim=(0, 180), ylim=(0, 180), aspect="equal", xlabel="θ_y to own centre (degrees)",
       ylabel="θ to nearest other centre (degrees)")
ax.legend(markerscale=4, fontsize="small")
plt.show()
print(f"samples beyond ArcFace's margin: {np.mean(theta_other > theta_own + margin):.1%}")
"""),
    md(r"""
### Open-set verification

Balanced pairs of held-out digits (`evaluation.make_pairs`), cosine similarity, the LFW
10-fold protocol (`evaluation.verification_report`), its ROC (`evaluation.plot_roc`) and the
angle histograms of positive and negative pairs (`evaluation.plot_angle_histograms`, the
ArcFace paper's figure). Same pairs and seed as the run's own evaluation, so the accuracy
must equal the one `train_and_evaluate` returned.
"""),
    code(r"""
open_unit = evaluation.l2_normalize(open_features)
idx_a, idx_b, issame = evaluation.make_pairs(
    open_labels, num_pairs=config.eval.num_pairs, seed=config.seed)
report = evaluation.verification_report(
    open_unit[idx_a], open_unit[idx_b], issame, n_folds=config.eval.n_folds)
print(f"verification accuracy {report['accuracy']:.4f} ± {report['accuracy_std']:.4f}, "
      f"AUC {report['auc']:.4f}, EER {report['eer']:.4f}")
assert abs(report["accuracy"] - metrics["verification_accuracy"]) < 1e-9

roc_path = evaluation.plot_roc({f"ArcFace, step {int(state.step)}": (report["fpr"], report["tpr"])},
                               str(figures / "roc.png"))
angles = evaluation.pair_angles(open_unit[idx_a], open_unit[idx_b])
hist_path = evaluation.plot_angle_histograms(
    angles[issame], angles[~issame], str(figures / "angles.png"))
display(Image(roc_path), Image(hist_path))
"""),
]

NOTEBOOKS = {
    "loss_geometry": LOSS_GEOMETRY,
    "euclidean_vs_angular": EUCLIDEAN_VS_ANGULAR,
    "composition": COMPOSITION,
    "train_and_inspect": TRAIN_AND_INSPECT,
}


def build(name: str) -> nbformat.NotebookNode:
    """The notebook ``name`` without outputs, with stable cell ids (so rebuilding it
    leaves an unchanged file)."""
    cells = [nbformat.from_dict(dict(cell)) for cell in NOTEBOOKS[name]]
    for index, cell in enumerate(cells):
        cell["id"] = f"{name}-{index}"
    notebook = v4.new_notebook(
        cells=cells, metadata={"kernelspec": KERNELSPEC, "language_info": {"name": "python"}}
    )
    nbformat.validate(notebook)
    return notebook


def main() -> None:
    for name in NOTEBOOKS:
        path = HERE / f"{name}.ipynb"
        nbformat.write(build(name), path)
        print("wrote", path)


if __name__ == "__main__":
    main()
