"""Independent float64 NumPy references of the angular losses, from the papers' formulas.

Written with arccos, cos(mθ) and explicit piecewise rules — deliberately not the
library's arccos-free formulations — so that an agreement is evidence.
"""

import math

import numpy as np


def _cos_theta(x, w):
    xn = np.linalg.norm(x, axis=1)[:, None]
    wn = np.linalg.norm(w, axis=0)[None, :]
    return np.clip((x @ w) / (xn * wn), -1.0, 1.0), xn, wn


def psi(theta, m):
    """L-Softmax Eq. 6: (−1)^k cos(mθ) − 2k on [kπ/m, (k+1)π/m]."""
    k = np.minimum(np.floor(theta * m / np.pi), m - 1)
    return (-1.0) ** k * np.cos(m * theta) - 2.0 * k


def logits(name, x, w, y, **hp):
    """The (B, C) logits of loss `name`, target entries carrying the margin."""
    x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
    cos, xn, wn = _cos_theta(x, w)
    theta = np.arccos(cos)
    rows = np.arange(len(y))
    c, th = cos[rows, y], theta[rows, y]
    if name == "softmax_cross_entropy":
        z = x @ w
        if hp.get("bias") is not None:
            z = z + np.asarray(hp["bias"], np.float64)
        return z
    if name in ("large_margin_softmax", "sphereface"):
        m, lam = hp.get("margin", 4), hp.get("lambda_", 0.0)
        norms = xn[:, 0] * (wn[0, y] if name == "large_margin_softmax" else 1.0)
        z = xn * cos * (wn if name == "large_margin_softmax" else 1.0)
        z[rows, y] = norms * (lam * c + psi(th, m)) / (1.0 + lam)
        return z
    s = hp.get("scale")
    z = s * cos
    if name == "normface":
        return z
    if name == "cosface":
        z[rows, y] = s * (c - hp["margin"])
    elif name == "arcface":
        m = hp["margin"]
        target = np.cos(th + m)
        if hp.get("easy_margin", False):
            target = np.where(c > 0, target, c)
        else:
            target = np.where(th + m < np.pi, target, c - m * math.sin(m))
        z[rows, y] = s * target
    elif name == "combined_margin":
        z[rows, y] = s * (np.cos(hp["m1"] * th + hp["m2"]) - hp["m3"])
    else:
        raise ValueError(name)
    return z


def loss(name, x, w, y, **hp):
    """Per-example −log softmax(z)_y in float64."""
    z = logits(name, x, w, np.asarray(y), **hp)
    zmax = z.max(axis=1, keepdims=True)
    lse = zmax[:, 0] + np.log(np.exp(z - zmax).sum(axis=1))
    return lse - z[np.arange(len(y)), y]
