"""Independent float64 NumPy references of the successor losses, from the papers' formulas.

Written with arccos, full logit matrices and loops over samples and pairs — deliberately
not the library's formulations — so that an agreement is evidence.
"""

import numpy as np


def _unit(a, axis):
    return a / np.linalg.norm(a, axis=axis, keepdims=True)


def cosines(x, w):
    """cos θ between each row of x (B, d) and each column of w (d, ...)."""
    x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
    return np.clip(np.tensordot(_unit(x, 1), _unit(w, 0), axes=1), -1.0, 1.0)


def _lse(v):
    v = np.asarray(v, np.float64)
    return np.logaddexp.reduce(v) if v.size else -np.inf


def cross_entropy(logits, y):
    """Per-example −log softmax(logits)_y."""
    return np.array([_lse(row) - row[label] for row, label in zip(logits, y)])


def arc_target(theta, m, easy_margin=False):
    """cos(θ + m); past π (or where cos θ ≤ 0 with easy_margin) InsightFace's fallbacks."""
    cos = np.cos(theta)
    if easy_margin:
        return np.where(cos > 0, np.cos(theta + m), cos)
    return np.where(theta + m < np.pi, np.cos(theta + m), cos - m * np.sin(m))


def _with_target(others, y, target):
    z = np.array(others, np.float64)
    z[np.arange(len(y)), y] = target
    return z


def subcenter_arcface(x, w, y, *, scale=64.0, margin=0.5, easy_margin=False):
    cos = cosines(x, w).max(axis=-1)
    theta_y = np.arccos(cos[np.arange(len(y)), y])
    return cross_entropy(
        _with_target(scale * cos, y, scale * arc_target(theta_y, margin, easy_margin)), y
    )


def subcenter_cleanup(x, w, y, *, max_angle):
    cos = cosines(x, w)
    _, num_classes, num_sub = np.shape(w)
    counts = np.zeros((num_classes, num_sub), int)
    for i, label in enumerate(y):
        counts[label, np.argmax(cos[i, label])] += 1
    dominant = counts.argmax(axis=1)
    keep = np.array(
        [np.arccos(cos[i, label, dominant[label]]) <= max_angle for i, label in enumerate(y)]
    )
    return keep, dominant, np.asarray(w)[:, np.arange(num_classes), dominant]


def curricularface(x, w, y, t, *, scale=64.0, margin=0.5):
    cos = cosines(x, w)
    z = cos.copy()
    for i, label in enumerate(y):
        theta = np.arccos(cos[i, label])
        for j in range(cos.shape[1]):
            if cos[i, j] > np.cos(theta + margin):  # a hard negative (Eq. 7)
                z[i, j] = cos[i, j] * (t + cos[i, j])
        z[i, label] = arc_target(theta, margin)
    return cross_entropy(scale * z, y)


def curricularface_t(t, x, w, y, *, alpha=0.01):
    cos_y = cosines(x, w)[np.arange(len(y)), y]
    return alpha * cos_y.mean() + (1 - alpha) * t


def adaface_stats(mean, std, x, *, alpha=0.01):
    norms = np.clip(np.linalg.norm(np.asarray(x, np.float64), axis=1), 1e-3, 100)
    return (
        alpha * norms.mean() + (1 - alpha) * mean,
        alpha * norms.std(ddof=1) + (1 - alpha) * std,
    )


def adaface(x, w, y, mean, std, *, scale=64.0, margin=0.4, h=0.333):
    eps = 1e-3
    cos = cosines(x, w)
    norms = np.clip(np.linalg.norm(np.asarray(x, np.float64), axis=1), 1e-3, 100)
    z_hat = np.clip(h * (norms - mean) / (std + eps), -1, 1)
    g_angle, g_add = -margin * z_hat, margin * z_hat + margin
    theta_y = np.arccos(cos[np.arange(len(y)), y])
    target = np.cos(np.clip(theta_y + g_angle, eps, np.pi - eps)) - g_add
    return cross_entropy(_with_target(scale * cos, y, scale * target), y)


def magface(
    x,
    w,
    y,
    *,
    scale=64.0,
    lower_norm=10.0,
    upper_norm=110.0,
    lower_margin=0.45,
    upper_margin=0.8,
    lambda_g=35.0,
    easy_margin=True,
):
    cos = cosines(x, w)
    a = np.clip(np.linalg.norm(np.asarray(x, np.float64), axis=1), lower_norm, upper_norm)
    m = (upper_margin - lower_margin) / (upper_norm - lower_norm) * (a - lower_norm) + lower_margin
    theta_y = np.arccos(cos[np.arange(len(y)), y])
    target = arc_target(theta_y, m, easy_margin)
    ce = cross_entropy(_with_target(scale * cos, y, scale * target), y)
    return ce + lambda_g * (1 / a + a / upper_norm**2)


def elastic_plus_margins(margins, cos_y):
    """ElasticFace+: the r-th largest target cosine gets the r-th smallest margin."""
    out = np.empty(len(margins))
    out[np.argsort(-np.asarray(cos_y), kind="stable")] = np.sort(margins)
    return out


def elasticface(x, w, y, margins, *, kind, scale=64.0):
    cos = cosines(x, w)
    cos_y = cos[np.arange(len(y)), y]
    if kind == "arc":
        target = np.cos(np.arccos(cos_y) + margins)
    else:
        target = cos_y - margins
    return cross_entropy(_with_target(scale * cos, y, scale * target), y)


def normface(x, w, y, *, scale):
    return cross_entropy(scale * cosines(x, w), y)


def adacos_dynamic_scale(s, x, w, y):
    cos = cosines(x, w)
    rows = np.arange(len(y))
    b_sum = sum(np.exp(s * cos[i, j]) for i in rows for j in range(cos.shape[1]) if j != y[i])
    theta_med = np.median(np.arccos(cos[rows, y]))
    return np.log(b_sum / len(y)) / np.cos(min(np.pi / 4, theta_med))


def _circle(sp, sn, gamma, m):
    """Eq. 1 of Circle loss for one sample's positive and negative similarities."""
    if len(sp) == 0 or len(sn) == 0:
        return 0.0
    sp, sn = np.asarray(sp), np.asarray(sn)
    logit_p = -gamma * np.maximum(1 + m - sp, 0) * (sp - (1 - m))
    logit_n = gamma * np.maximum(sn + m, 0) * (sn - m)
    return np.logaddexp(0.0, _lse(logit_n) + _lse(logit_p))


def circle_loss(x, w, y, *, scale=256.0, margin=0.25):
    cos = cosines(x, w)
    return np.array(
        [
            _circle([cos[i, label]], np.delete(cos[i], label), scale, margin)
            for i, label in enumerate(y)
        ]
    )


def circle_pair_loss(x, y, *, scale=256.0, margin=0.25):
    x = np.asarray(x, np.float64)
    sim = _unit(x, 1) @ _unit(x, 1).T
    out = []
    for i in range(len(y)):
        sp = [sim[i, j] for j in range(len(y)) if j != i and y[j] == y[i]]
        sn = [sim[i, j] for j in range(len(y)) if y[j] != y[i]]
        out.append(_circle(sp, sn, scale, margin))
    return np.array(out)


def xbm_enqueue(memory, x, y, *, warmup_steps=0):
    """memory: dict of numpy arrays embeddings, labels, filled, pointer, steps."""
    new = {key: np.array(value) for key, value in memory.items()}
    if memory["steps"] >= warmup_steps:
        size = len(new["labels"])
        for row, label in zip(np.asarray(x), np.asarray(y)):
            slot = int(new["pointer"])
            new["embeddings"][slot], new["labels"][slot], new["filled"][slot] = row, label, True
            new["pointer"] = (slot + 1) % size
    new["steps"] = memory["steps"] + 1
    return new


def xbm_contrastive(x, y, memory, *, margin=1.0):
    terms = []
    for xi, yi in zip(np.asarray(x, np.float64), y):
        for mk, yk, filled in zip(memory["embeddings"], memory["labels"], memory["filled"]):
            if filled:
                dist = np.linalg.norm(xi - mk)
                terms.append(0.5 * (dist**2 if yi == yk else max(0.0, margin - dist) ** 2))
    return np.mean(terms) if terms else 0.0


def xbm_triplet(x, y, memory, *, margin=0.2):
    hinges = []
    for xi, yi in zip(np.asarray(x, np.float64), y):
        pos = [
            np.sum((xi - mk) ** 2)
            for mk, yk, f in zip(memory["embeddings"], memory["labels"], memory["filled"])
            if f and yk == yi
        ]
        neg = [
            np.sum((xi - mk) ** 2)
            for mk, yk, f in zip(memory["embeddings"], memory["labels"], memory["filled"])
            if f and yk != yi
        ]
        if pos and neg:
            hinges.append(max(0.0, max(pos) - min(neg) + margin))
    return np.mean(hinges) if hinges else 0.0
