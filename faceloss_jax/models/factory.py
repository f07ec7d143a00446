"""``create_model(config)``: a backbone by name, configured by an ml_collections config."""

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from faceloss_jax import errors
from faceloss_jax.models.iresnet import STAGE_SIZES, IResNet
from faceloss_jax.models.lenet import LeNetPlusPlus
from faceloss_jax.models.mobilefacenet import MobileFaceNet

# name -> (module class, fixed attributes, input shape (H, W, C) of the papers).
_REGISTRY: dict[str, tuple[type[nn.Module], dict[str, Any], tuple[int, int, int]]] = {
    "lenet_pp": (LeNetPlusPlus, {}, (28, 28, 1)),
    **{
        name: (IResNet, {"stage_sizes": sizes}, (112, 112, 3))
        for name, sizes in STAGE_SIZES.items()
    },
    "mobilefacenet": (MobileFaceNet, {}, (112, 112, 3)),
}
MODEL_NAMES = tuple(_REGISTRY)


def _lookup(name: str) -> tuple[type[nn.Module], dict[str, Any], tuple[int, int, int]]:
    if name not in _REGISTRY:
        raise errors.ConfigError(
            f"unknown model name {name!r}; valid names: {', '.join(MODEL_NAMES)}"
        )
    return _REGISTRY[name]


def config_keys(name: str) -> tuple[str, ...]:
    """The keys that a model config of this ``name`` accepts (besides ``name``)."""
    cls, fixed, _ = _lookup(name)
    return tuple(
        field.name
        for field in dataclasses.fields(cls)
        if field.init and field.name not in ("parent", "name", *fixed)
    )


def _float_dtype(value: Any) -> jnp.dtype:
    try:
        dtype = jnp.dtype(value)
    except TypeError:
        dtype = None
    if dtype is None or not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(f"dtype must be a floating dtype such as 'bfloat16'; got {value!r}")
    return dtype


def create_model(config: ml_collections.ConfigDict | Mapping[str, Any]) -> nn.Module:
    """Creates the backbone that ``config`` names.

    Every other key of the config sets the attribute of the same name (see
    ``config_keys(name)``): ``embedding_dim`` and ``dropout`` for all backbones, ``dtype``
    ("float32" or "bfloat16": the computation dtype; parameters stay float32),
    ``bn_axis_name`` for the batch-normalized ones, ``feature_prelu`` for LeNets++.

    Args:
      config: a ConfigDict (or mapping) with ``name`` in ``MODEL_NAMES`` and the
        optional attributes above.

    Returns:
      A flax module called as ``model.apply(variables, images, train, ...)`` that maps
      float (B, H, W, C) images to float32 (B, embedding_dim) embeddings.

    Raises:
      errors.ConfigError: for an unknown name (a ValueError).
      ValueError: for an unknown key, a non-positive ``embedding_dim``,
        a dropout rate outside [0, 1) or a dtype that is not floating point.

    Example:
      >>> model = create_model(ml_collections.ConfigDict(
      ...     {"name": "lenet_pp", "embedding_dim": 2}))
      >>> images = jnp.zeros((4, *input_shape("lenet_pp")))
      >>> init = jax.jit(model.init, static_argnames="train")
      >>> variables = init(jax.random.key(0), images, train=False)
      >>> embed = jax.jit(model.apply, static_argnames="train")
      >>> embed(variables, images, train=False).shape
      (4, 2)
    """
    options = dict(config.items())
    if "name" not in options:
        raise ValueError(f"the model config has no 'name'; valid names: {', '.join(MODEL_NAMES)}")
    name = options.pop("name")
    cls, fixed, _ = _lookup(name)
    unknown = sorted(set(options) - set(config_keys(name)))
    if unknown:
        raise ValueError(
            f"unknown key(s) {unknown} in the config of model {name!r}; "
            f"valid keys: name, {', '.join(config_keys(name))}"
        )
    if "embedding_dim" in options and (
        not isinstance(options["embedding_dim"], int) or options["embedding_dim"] < 1
    ):
        raise ValueError(f"embedding_dim must be a positive int; got {options['embedding_dim']!r}")
    if "dropout" in options and not 0.0 <= options["dropout"] < 1.0:
        raise ValueError(f"dropout must be in [0, 1); got {options['dropout']!r}")
    if "dtype" in options:
        options["dtype"] = _float_dtype(options["dtype"])
    return cls(**fixed, **options)


def input_shape(name: str) -> tuple[int, int, int]:
    """The input shape (H, W, C) of the papers: 28×28×1 for LeNets++, 112×112×3 for faces."""
    return _lookup(name)[2]


def param_count(params: Any) -> int:
    """The number of scalars in a pytree of arrays (or of ``jax.ShapeDtypeStruct``)."""
    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(params))
