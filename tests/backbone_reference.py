"""Float64 NumPy forward passes of the backbones, and deterministic parameters for them.

Written from the papers and InsightFace's PyTorch code, not from ``faceloss_jax.models``:

- iResNet (Deng et al., ArcFace, CVPR 2019; InsightFace ``backbones/iresnet.py``):
  stem conv3×3 + BN + PReLU; each ``IBasicBlock`` is
  ``BN → conv3×3 → BN → PReLU → conv3×3/s → BN`` plus the shortcut (identity, or
  conv1×1/s + BN when the stride or width changes); then BN → flatten → FC → BN
  (the last BN without a scale).
- MobileFaceNet (Chen et al., 2018, Table 1): conv3×3/2 → depthwise conv3×3 → inverted
  residual bottlenecks (1×1 expand + BN + PReLU → depthwise 3×3/s + BN + PReLU → 1×1
  project + BN, + input if stride 1 and same width) → conv1×1 512 + BN + PReLU → global
  depthwise conv (linear) + BN → FC (no bias) → BN.
- LeNets++ (Wen et al., ECCV 2016, Table 1): three stages of two 5×5 convolutions (pad 2,
  with bias) + PReLU and a 2×2/2 max pool, then FC (+ PReLU).

Convolutions pad ``k // 2`` on both sides (PyTorch's ``padding=k//2``); BatchNorm in
inference mode, ``(x − mean)/√(var + 1e-5)·scale + bias``. Parameters are addressed by the
Flax names (``Conv_0``, ``BatchNorm_1``, ``downsample_conv``, ...) in the order the
papers' layers are created, kernels in (kh, kw, in, out) layout.

``make_variables`` draws every parameter and BatchNorm statistic from NumPy, seeded by its
path (independent of JAX's PRNG), with non-trivial BN statistics, scales, biases and
PReLU slopes, so that swapping two layers or dropping a shortcut changes the output.
"""

from __future__ import annotations

import zlib
from typing import Any

import numpy as np

BN_EPS = 1e-5


def make_variables(shapes: Any, seed: int = 0) -> dict:
    """Deterministic variables with the structure of ``shapes`` ({"params", "batch_stats"}
    of ``jax.ShapeDtypeStruct`` leaves, as nested dicts)."""

    def fill(tree, path):
        if isinstance(tree, dict):
            return {k: fill(v, f"{path}/{k}") for k, v in sorted(tree.items())}
        rng = np.random.default_rng([seed, zlib.crc32(path.encode())])
        shape, leaf = tuple(tree.shape), path.rsplit("/", 1)[-1]
        if leaf == "kernel":
            fan_in = int(np.prod(shape[:-1]))
            value = rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)
        elif leaf == "scale":
            value = rng.uniform(0.5, 1.5, shape)
        elif leaf in ("bias", "mean"):
            value = 0.2 * rng.standard_normal(shape)
        elif leaf == "var":
            value = rng.uniform(0.5, 2.0, shape)
        elif leaf == "negative_slope":
            value = rng.uniform(0.0, 0.5, shape)
        else:
            raise ValueError(f"unexpected variable {path}")
        return value.astype(np.float32)

    return fill(shapes, "")


def conv(x, kernel, stride=1, groups=1, padding=None, bias=None):
    """NHWC convolution, float64, pad k//2 (or ``padding``) on both sides."""
    kh, kw, _, out = kernel.shape
    pad = kh // 2 if padding is None else padding
    xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    h = (xp.shape[1] - kh) // stride + 1
    w = (xp.shape[2] - kw) // stride + 1
    y = np.zeros((x.shape[0], h, w, out))
    for i in range(kh):
        for j in range(kw):
            patch = xp[:, i : i + stride * h : stride, j : j + stride * w : stride, :]
            if groups == 1:
                y += patch @ kernel[i, j]
            else:
                assert groups == x.shape[-1] == out and kernel.shape[2] == 1
                y += patch * kernel[i, j, 0]
    return y if bias is None else y + bias


def bn(x, params, stats, scale=True):
    y = (x - stats["mean"]) / np.sqrt(stats["var"] + BN_EPS)
    return (y * params["scale"] if scale else y) + params["bias"]


def prelu(x, params):
    return np.where(x >= 0, x, params["negative_slope"] * x)


def _f64(tree):
    if isinstance(tree, dict):
        return {k: _f64(v) for k, v in tree.items()}
    return np.asarray(tree, np.float64)


def iresnet(variables, images, stage_sizes):
    p, s = _f64(variables["params"]), _f64(variables["batch_stats"])
    x = np.asarray(images, np.float64)
    x = prelu(bn(conv(x, p["Conv_0"]["kernel"]), p["BatchNorm_0"], s["BatchNorm_0"]), p["PReLU_0"])
    widths = (64, 128, 256, 512)
    for stage, (width, blocks) in enumerate(zip(widths, stage_sizes)):
        for block in range(blocks):
            name = f"stage{stage + 1}_block{block}"
            bp, bs = p[name], s[name]
            stride = 2 if block == 0 else 1
            y = bn(x, bp["BatchNorm_0"], bs["BatchNorm_0"])
            y = conv(y, bp["Conv_0"]["kernel"])
            y = prelu(bn(y, bp["BatchNorm_1"], bs["BatchNorm_1"]), bp["PReLU_0"])
            y = bn(conv(y, bp["Conv_1"]["kernel"], stride), bp["BatchNorm_2"], bs["BatchNorm_2"])
            if stride != 1 or x.shape[-1] != width:
                x = conv(x, bp["downsample_conv"]["kernel"], stride)
                x = bn(x, bp["downsample_bn"], bs["downsample_bn"])
            x = x + y
    x = bn(x, p["BatchNorm_1"], s["BatchNorm_1"]).reshape(x.shape[0], -1)
    x = x @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"]
    return bn(x, p["features"], s["features"], scale=False)


MOBILEFACENET_BOTTLENECKS = (
    (2, 64, 5, 2),
    (4, 128, 1, 2),
    (2, 128, 6, 1),
    (4, 128, 1, 2),
    (2, 128, 2, 1),
)  # (expansion t, width c, repeats n, stride s)


def mobilefacenet(variables, images):
    p, s = _f64(variables["params"]), _f64(variables["batch_stats"])

    def cbp(x, i, stride=1, groups=1, params=p, stats=s, conv_i=None, act_i=None):
        x = conv(x, params[f"Conv_{conv_i}"]["kernel"], stride, groups)
        x = bn(x, params[f"BatchNorm_{i}"], stats[f"BatchNorm_{i}"])
        return x if act_i is None else prelu(x, params[f"PReLU_{act_i}"])

    x = np.asarray(images, np.float64)
    x = cbp(x, 0, stride=2, conv_i=0, act_i=0)
    x = cbp(x, 1, groups=64, conv_i=1, act_i=1)
    for stage, (t, width, repeats, stride0) in enumerate(MOBILEFACENET_BOTTLENECKS):
        for block in range(repeats):
            bp, bs = p[f"stage{stage + 1}_block{block}"], s[f"stage{stage + 1}_block{block}"]
            stride, hidden = stride0 if block == 0 else 1, x.shape[-1] * t
            y = cbp(x, 0, params=bp, stats=bs, conv_i=0, act_i=0)
            y = cbp(y, 1, stride, groups=hidden, params=bp, stats=bs, conv_i=1, act_i=1)
            y = cbp(y, 2, params=bp, stats=bs, conv_i=2)
            x = x + y if stride == 1 and x.shape[-1] == width else y
    x = cbp(x, 2, conv_i=2, act_i=2)
    x = conv(x, p["gdconv"]["kernel"], groups=512, padding=0)  # global depthwise, linear
    x = bn(x, p["gdconv_bn"], s["gdconv_bn"]).reshape(x.shape[0], -1)
    return bn(x @ p["Dense_0"]["kernel"], p["features"], s["features"])


def lenet_pp(variables, images, feature_prelu=True):
    p = _f64(variables["params"])
    x = np.asarray(images, np.float64)
    for i in range(6):
        x = prelu(conv(x, p[f"Conv_{i}"]["kernel"], bias=p[f"Conv_{i}"]["bias"]), p[f"PReLU_{i}"])
        if i % 2:
            b, h, w, c = x.shape
            x = x[:, : h // 2 * 2, : w // 2 * 2].reshape(b, h // 2, 2, w // 2, 2, c).max((2, 4))
    x = x.reshape(x.shape[0], -1) @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"]
    return prelu(x, p["PReLU_6"]) if feature_prelu else x
