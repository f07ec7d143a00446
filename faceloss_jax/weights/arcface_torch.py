"""arcface_torch iResNet ``state_dict`` ↔ Flax ``IResNet`` variables, in NumPy.

InsightFace's arcface_torch (``recognition/arcface_torch/backbones/iresnet.py``) saves
``backbone.pth`` as a ``state_dict`` of its ``IResNet``. Its modules map one to one onto
``faceloss_jax.models.IResNet``:

==============================  ===========================================
arcface_torch                   Flax (``params`` / ``batch_stats``)
==============================  ===========================================
``conv1``, ``bn1``, ``prelu``   ``Conv_0``, ``BatchNorm_0``, ``PReLU_0``
``layer{s}.{b}.bn1``            ``stage{s}_block{b}/BatchNorm_0``
``layer{s}.{b}.conv1``          ``stage{s}_block{b}/Conv_0``
``layer{s}.{b}.bn2``, ``prelu``  ``stage{s}_block{b}/BatchNorm_1``, ``PReLU_0``
``layer{s}.{b}.conv2``, ``bn3``  ``stage{s}_block{b}/Conv_1``, ``BatchNorm_2``
``layer{s}.0.downsample.0/.1``  ``stage{s}_block0/downsample_conv``, ``downsample_bn``
``bn2``, ``fc``, ``features``   ``BatchNorm_1``, ``Dense_0``, ``features``
==============================  ===========================================

with these conversions: a convolution weight ``(O, I, kh, kw)`` (OIHW) is the Flax
kernel ``(kh, kw, I, O)`` (HWIO); BatchNorm ``weight, bias, running_mean, running_var``
are ``scale, bias`` (params) and ``mean, var`` (batch_stats), ``num_batches_tracked``
is dropped (and written as 0 on export); the FC weight ``(d, 512·h·w)`` reads a tensor
flattened in NCHW order (``torch.flatten`` of ``(512, h, w)``), the Flax ``Dense``
kernel ``(h·w·512, d)`` one flattened in NHWC order, so the rows are permuted
``(c, h, w) → (h, w, c)``; the final ``features`` BatchNorm1d has its ``weight``
frozen at 1 in arcface_torch (``requires_grad=False``) and no scale in Flax, so a
weight other than 1 is an error on import and 1 is written on export.

The running variances are stored as they are: PyTorch's are running means of the
unbiased batch variance, Flax's of the biased one (``IResNet.unbiased_bn_variance``
switches Flax to PyTorch's rule); inference uses the stored value either way, so the
forward passes agree exactly.

Nothing here imports PyTorch: tensors come in and go out as NumPy arrays (convert
with ``tensor.numpy()`` / ``torch.from_numpy``; see ``faceloss_jax.convert``).
"""

import math
import re
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from faceloss_jax import errors
from faceloss_jax.models.iresnet import STAGE_SIZES, STAGE_WIDTHS, IResNet

IRESNET_NAMES = tuple(STAGE_SIZES)
_BN_PARTS = {"weight": "scale", "bias": "bias", "running_mean": "mean", "running_var": "var"}
_BLOCK_MODULES = {
    "bn1": "BatchNorm_0",
    "conv1": "Conv_0",
    "bn2": "BatchNorm_1",
    "prelu": "PReLU_0",
    "conv2": "Conv_1",
    "bn3": "BatchNorm_2",
    "downsample.0": "downsample_conv",
    "downsample.1": "downsample_bn",
}
_TOP_MODULES = {
    "conv1": "Conv_0",
    "bn1": "BatchNorm_0",
    "prelu": "PReLU_0",
    "bn2": "BatchNorm_1",
    "fc": "Dense_0",
    "features": "features",
}


class StateDictMismatchError(errors.DataError):
    """A ``state_dict`` that does not fit the architecture; the message lists every
    missing, unexpected and mis-shaped tensor."""


def _torch_module(flax_path: tuple[str, ...]) -> str:
    """The arcface_torch module name of a Flax module path (without the leaf)."""
    inverse_top = {v: k for k, v in _TOP_MODULES.items()}
    inverse_block = {v: k for k, v in _BLOCK_MODULES.items()}
    match = re.fullmatch(r"stage(\d)_block(\d+)", flax_path[0])
    if match:
        stage, block = match.groups()
        return f"layer{stage}.{block}.{inverse_block[flax_path[1]]}"
    return inverse_top[flax_path[0]]


def _torch_key(collection: str, path: tuple[str, ...]) -> tuple[str, str]:
    """``(torch key, kind)`` of a Flax leaf; kind is conv, bn, prelu, fc_weight, fc_bias."""
    module, leaf = _torch_module(path[:-1]), path[-1]
    if leaf == "kernel":
        return f"{module}.weight", "fc_weight" if module == "fc" else "conv"
    if module == "fc":
        return f"{module}.bias", "fc_bias"
    if leaf == "negative_slope":
        return f"{module}.weight", "prelu"
    torch_leaf = {v: k for k, v in _BN_PARTS.items()}[leaf]
    return f"{module}.{torch_leaf}", "bn"


def _torch_shape(kind: str, flax_shape: tuple[int, ...]) -> tuple[int, ...]:
    if kind == "conv":
        kh, kw, cin, cout = flax_shape
        return (cout, cin, kh, kw)
    if kind == "fc_weight":
        return flax_shape[::-1]
    return flax_shape


def abstract_variables(name: str, *, embedding_dim: int = 512, grid: int = 7) -> dict[str, Any]:
    """Shapes (``jax.ShapeDtypeStruct``) of the Flax variables of iResNet ``name`` whose
    last feature map is ``grid × grid`` (7 for 112×112 inputs)."""
    if name not in STAGE_SIZES:
        raise errors.ConfigError(f"unknown iResNet {name!r}; valid: {', '.join(IRESNET_NAMES)}")
    model = IResNet(STAGE_SIZES[name], embedding_dim=embedding_dim)
    images = jnp.zeros((1, 16 * grid, 16 * grid, 3))
    return jax.eval_shape(lambda: model.init(jax.random.key(0), images, train=False))


def expected_state_dict_shapes(
    name: str, *, embedding_dim: int = 512, grid: int = 7
) -> dict[str, tuple[int, ...]]:
    """The keys and shapes of arcface_torch's ``state_dict`` of iResNet ``name``
    (``num_batches_tracked`` included; ``features.weight`` included)."""
    shapes = {}
    flat = traverse_util.flatten_dict(
        abstract_variables(name, embedding_dim=embedding_dim, grid=grid)
    )
    for (collection, *path), leaf in flat.items():
        key, kind = _torch_key(collection, tuple(path))
        shapes[key] = _torch_shape(kind, leaf.shape)
        if kind == "bn":
            shapes[key.rsplit(".", 1)[0] + ".num_batches_tracked"] = ()
    shapes["features.weight"] = (embedding_dim,)
    return shapes


def _strip_prefix(state_dict: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """NumPy copies of the tensors, without a ``module.`` prefix (DataParallel/DDP)."""
    arrays = {}
    for key, value in state_dict.items():
        if hasattr(value, "detach"):
            value = value.detach().cpu().numpy()
        arrays[key.removeprefix("module.")] = np.asarray(value)
    return arrays


def detect_stage_sizes(state_dict: Mapping[str, Any]) -> tuple[int, ...]:
    """The number of blocks of each ``layer{s}`` in a ``state_dict``."""
    blocks: dict[int, set[int]] = {}
    for key in state_dict:
        match = re.match(r"(?:module\.)?layer(\d)\.(\d+)\.", key)
        if match:
            blocks.setdefault(int(match.group(1)), set()).add(int(match.group(2)))
    return tuple(len(blocks.get(stage, ())) for stage in range(1, 5))


def _guess_name(state_dict: Mapping[str, Any]) -> str | None:
    sizes = detect_stage_sizes(state_dict)
    return next((n for n, s in STAGE_SIZES.items() if tuple(s) == sizes), None)


def _fc_geometry(arrays: Mapping[str, np.ndarray]) -> tuple[int, int]:
    """``(embedding_dim, grid)`` read from ``fc.weight`` ``(d, 512·grid²)``; (512, 7) if absent."""
    weight = arrays.get("fc.weight")
    if weight is None or weight.ndim != 2:
        return 512, 7
    dim, fan_in = weight.shape
    grid = math.isqrt(fan_in // STAGE_WIDTHS[-1])
    if grid * grid * STAGE_WIDTHS[-1] != fan_in:
        raise StateDictMismatchError(
            f"fc.weight has {fan_in} inputs, not 512·g² for a square g×g feature map"
        )
    return dim, grid


def check_state_dict(state_dict: Mapping[str, Any], name: str) -> None:
    """Raises StateDictMismatchError listing every missing, unexpected and mis-shaped
    tensor of ``state_dict`` for arcface_torch's iResNet ``name`` (on one line: the CLI's
    ``FATAL`` line)."""
    arrays = _strip_prefix(state_dict)
    dim, grid = _fc_geometry(arrays)
    expected = expected_state_dict_shapes(name, embedding_dim=dim, grid=grid)
    missing = sorted(set(expected) - set(arrays))
    unexpected = sorted(set(arrays) - set(expected))
    misshaped = sorted(
        f"{key}: {tuple(arrays[key].shape)}, expected {expected[key]}"
        for key in set(expected) & set(arrays)
        if tuple(arrays[key].shape) != expected[key]
    )
    problems = []
    for title, items in (
        ("missing", missing),
        ("unexpected", unexpected),
        ("mis-shaped", misshaped),
    ):
        if items:
            problems.append(f"{len(items)} {title}: {', '.join(items)}")
    if problems:
        guess = _guess_name(state_dict)
        hint = (
            f" (its layer sizes {detect_stage_sizes(state_dict)} are those of {guess})"
            if guess and guess != name
            else ""
        )
        raise StateDictMismatchError(
            f"the state_dict does not fit arcface_torch's {name}{hint}: " + "; ".join(problems)
        )


def torch_to_flax(state_dict: Mapping[str, Any], name: str) -> dict[str, Any]:
    """Flax variables ``{"params", "batch_stats"}`` of an arcface_torch ``state_dict``.

    Args:
      state_dict: arcface_torch's ``backbone.state_dict()`` (torch tensors or NumPy
        arrays; a ``module.`` prefix is stripped).
      name: ``"iresnet18"``, ``"iresnet34"``, ``"iresnet50"`` or ``"iresnet100"``.

    Returns:
      float32 variables of ``IResNet(STAGE_SIZES[name], embedding_dim=d)``, d read from
      ``fc.weight``; the input size is the one the FC was trained for (112×112 for 7×7).

    Raises:
      StateDictMismatchError: missing, unexpected or mis-shaped tensors (all listed), or a
        ``features.weight`` that is not all ones.
    """
    check_state_dict(state_dict, name)
    arrays = _strip_prefix(state_dict)
    if not np.allclose(arrays["features.weight"], 1.0, rtol=0, atol=1e-6):
        raise StateDictMismatchError(
            "features.weight is not all ones (arcface_torch freezes it at 1 and the Flax "
            f"iResNet has no scale there); its range is [{arrays['features.weight'].min()}, "
            f"{arrays['features.weight'].max()}]"
        )
    dim, grid = _fc_geometry(arrays)
    flat = traverse_util.flatten_dict(abstract_variables(name, embedding_dim=dim, grid=grid))
    out = {}
    for (collection, *path), leaf in flat.items():
        key, kind = _torch_key(collection, tuple(path))
        value = arrays[key].astype(np.float32)
        if kind == "conv":
            value = value.transpose(2, 3, 1, 0)
        elif kind == "fc_weight":
            # (d, c·h·w) in NCHW order → (h·w·c, d) in NHWC order.
            channels = STAGE_WIDTHS[-1]
            value = value.reshape(dim, channels, grid, grid).transpose(2, 3, 1, 0)
            value = value.reshape(grid * grid * channels, dim)
        assert value.shape == leaf.shape, (key, value.shape, leaf.shape)
        out[(collection, *path)] = value
    return traverse_util.unflatten_dict(out)


def flax_to_torch(variables: Mapping[str, Any], name: str) -> dict[str, np.ndarray]:
    """arcface_torch's ``state_dict`` (NumPy arrays) of Flax iResNet ``variables``.

    The inverse of ``torch_to_flax``: load it with
    ``model.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()})``.
    ``num_batches_tracked`` is 0 (int64) and ``features.weight`` is ones.

    Raises:
      StateDictMismatchError: the variables are not those of iResNet ``name`` (the
        listing is in arcface_torch's names).
    """
    flat = traverse_util.flatten_dict({k: variables[k] for k in ("params", "batch_stats")})
    kernel = np.asarray(flat[("params", "Dense_0", "kernel")])
    channels = STAGE_WIDTHS[-1]
    grid = math.isqrt(kernel.shape[0] // channels)
    dim = kernel.shape[1]
    state_dict: dict[str, np.ndarray] = {}
    try:
        for (collection, *path), value in flat.items():
            key, kind = _torch_key(collection, tuple(path))
            value = np.asarray(value, np.float32)
            if kind == "conv" and value.ndim == 4:
                value = value.transpose(3, 2, 0, 1)
            elif kind == "fc_weight":
                value = value.reshape(grid, grid, channels, dim).transpose(3, 2, 0, 1)
                value = value.reshape(dim, channels * grid * grid)
            state_dict[key] = np.ascontiguousarray(value)
            if kind == "bn":
                state_dict[key.rsplit(".", 1)[0] + ".num_batches_tracked"] = np.array(0, np.int64)
    except KeyError as error:
        raise StateDictMismatchError(
            f"the variables are not those of an iResNet: no arcface_torch name for {error}"
        ) from None
    state_dict["features.weight"] = np.ones(dim, np.float32)
    check_state_dict(state_dict, name)
    return state_dict
