"""Flax backbones that map images (B, H, W, C) to embeddings (B, embedding_dim).

LeNets++ (center loss, MNIST 2-D/3-D features), InsightFace's iResNet-18/34/50/100 and
MobileFaceNet. ``create_model(config)`` builds one by name; batch statistics live in the
"batch_stats" collection and dropout draws from the "dropout" rng. The classifier
weights W (d, C) are not part of a backbone.
"""

from faceloss_jax.models.factory import (
    MODEL_NAMES,
    config_keys,
    create_model,
    input_shape,
    param_count,
)
from faceloss_jax.models.iresnet import IBasicBlock, IResNet
from faceloss_jax.models.layers import PReLU
from faceloss_jax.models.lenet import LeNetPlusPlus
from faceloss_jax.models.mobilefacenet import Bottleneck, MobileFaceNet

__all__ = [
    "MODEL_NAMES",
    "Bottleneck",
    "IBasicBlock",
    "IResNet",
    "LeNetPlusPlus",
    "MobileFaceNet",
    "PReLU",
    "config_keys",
    "create_model",
    "input_shape",
    "param_count",
]
