# %% [markdown]
# # Loss geometry: target logits and decision boundaries
#
# Every angular loss of `faceloss_jax.losses` is a softmax cross-entropy in which only the
# **target logit** carries a margin. With normalized features and class centres,
# $\cos\theta_j = W_j^\top x / (\|W_j\|\|x\|)$, the loss of an example of class $y$ is
#
# $$L = -\log \frac{e^{s\,f(\theta_y)}}{e^{s\,f(\theta_y)} + \sum_{j\neq y} e^{s\cos\theta_j}},$$
#
# and the losses differ only in $f$ (SphereFace's
# $\psi(\theta) = (-1)^k\cos(m\theta) - 2k$ on $\theta\in[k\pi/m, (k+1)\pi/m]$ is the monotonic
# extension of $\cos m\theta$):
#
# | loss | $f(\theta)$ | paper |
# |---|---|---|
# | softmax / NormFace | $\cos\theta$ | Wang et al., ACM MM 2017 |
# | SphereFace (A-Softmax) | $\psi(\theta)$, below | Liu et al., CVPR 2017 |
# | CosFace (AM-Softmax) | $\cos\theta - m$ | Wang et al., CVPR 2018 |
# | ArcFace | $\cos(\theta + m)$ | Deng et al., CVPR 2019 |
# | combined | $\cos(m_1\theta + m_2) - m_3$ | Deng et al., CVPR 2019, Eq. 4 |
#
# The margin functions are public: `losses.multiple_angle_psi(cos, m)`,
# `losses.additive_angular_margin(cos, m)` and `losses.combined_angular_margin(cos, m1, m2, m3)`
# map $\cos\theta_y$ to $f(\theta_y)$ (SphereFace multiplies by $\|x\|$ instead of $s$).

# %%
import os

import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

import faceloss_jax
from faceloss_jax import losses

print("faceloss_jax from", os.path.relpath(os.path.dirname(faceloss_jax.__file__)))

# %% [markdown]
# ## Target logit against θ
#
# The ArcFace paper's figure of target-logit curves. SphereFace is shown both as the raw
# $\psi$ (m = 4) and as the blend it is actually trained with,
# $(\lambda\cos\theta + \psi(\theta))/(1 + \lambda)$ with $\lambda_{\min} = 5$. ArcFace
# past $\theta + m > \pi$ falls back to $\cos\theta - m\sin m$ (InsightFace's rule), which keeps
# the curve decreasing; the combined margin is computed through $\arccos$ as in the original
# code, with no fallback, so it rises again near $\pi$.

# %%
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
    ax.set(
        xlim=(lo, hi),
        ylim=(-1.5, 1.05),
        xlabel="θ between x and its class centre (degrees)",
        ylabel="target logit / s",
    )
    ax.grid(alpha=0.3)
axes[0].set_title("all angles")
axes[1].set_title("20°–100°, where training samples lie (the paper's window)")
axes[1].legend(fontsize="small")
plt.show()

print(f"{'loss':40s}" + "".join(f"{d:>8d}°" for d in (0, 30, 60, 90)))
for name, target in curves.items():
    values = np.interp(np.radians([0, 30, 60, 90]), theta, target)
    print(f"{name:40s}" + "".join(f"{v:9.3f}" for v in values))

# %%
arc = curves["ArcFace: cos(θ + 0.5)"]
assert np.isclose(arc[0], np.cos(0.5), atol=1e-6)
assert np.all(np.diff(arc) <= 1e-6), "ArcFace's target must decrease on [0, π]"
assert np.any(np.diff(curves["combined (1, 0.3, 0.2)"]) > 0), "no fallback: not monotonic"
assert np.isclose(curves["SphereFace: ψ(θ), m=4"][-1], -7.0)  # ψ(π) = −cos 4π − 6
around = jnp.cos(jnp.array([np.pi - 0.5 - 1e-4, np.pi - 0.5 + 1e-4]))
around = losses.additive_angular_margin(around, 0.5)
print(
    "ArcFace's target just before and after θ = π − m: cos(θ + m) → −1, then cos θ − m·sin m:",
    np.round(np.asarray(around), 4),
)

# %% [markdown]
# ## Decision boundaries of two classes
#
# Two classes with centres $W_1, W_2$ and a sample at angles $(\theta_1, \theta_2)$ to them.
# The sample is assigned to class 1 with its margin when $f(\theta_1) > \cos\theta_2$, and to
# class 2 when $f(\theta_2) > \cos\theta_1$. The two boundaries coincide for the softmax
# ($\theta_1 = \theta_2$, equal weight norms and no bias); a margin separates them by a band
# in which neither class is satisfied, the ArcFace paper's comparison of decision margins
# (SphereFace $m\theta_1 = \theta_2$, CosFace $\cos\theta_1 - m = \cos\theta_2$, ArcFace
# $\theta_1 + m = \theta_2$). The common factor $s$ (or $\|x\|$ for SphereFace) cancels.

# %%
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
    ax.contourf(
        np.degrees(t1),
        np.degrees(t2),
        region,
        levels=[-1.5, -0.5, 0.5, 1.5],
        colors=["tab:orange", "0.85", "tab:blue"],
    )
    ax.plot([0, 180], [0, 180], "k:", lw=0.8)
    ax.set(title=name, xlabel="θ1 (degrees)", ylabel="θ2 (degrees)", aspect="equal")
fig.suptitle("blue: class 1 with its margin, orange: class 2, grey: the margin band")
plt.tight_layout()
plt.show()


# %% [markdown]
# How wide is the band? Put the sample on the arc between two centres $\varphi$ apart, so
# $\theta_1 + \theta_2 = \varphi$, and measure the arc on which neither class is satisfied.
# ArcFace's band is the constant $m$ (its "exact correspondence to the geodesic distance");
# SphereFace's grows with $\varphi$ ($\varphi\,(m-1)/(m+1)$ for $\psi = \cos m\theta$); CosFace's
# depends on how far apart the classes sit: two classes 45° apart can never both satisfy
# CosFace's m = 0.35 (the whole arc is band), which ArcFace's paper counts against a margin
# in cosine units.


# %%
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
