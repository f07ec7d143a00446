"""MobileFaceNet (Chen, Liu, Gao, Han. "MobileFaceNets: Efficient CNNs for Accurate
Real-Time Face Verification on Mobile Devices", CCBR 2018, Table 1)."""

import functools
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.typing import Dtype

from faceloss_jax.models.layers import HE_NORMAL, PReLU, batch_norm, check_images, conv

# Table 1 of the paper: bottleneck stages (expansion t, channels c, repeats n, stride s).
BOTTLENECKS = ((2, 64, 5, 2), (4, 128, 1, 2), (2, 128, 6, 1), (4, 128, 1, 2), (2, 128, 2, 1))


class Bottleneck(nn.Module):
    """MobileNetV2's inverted residual with PReLU.

    ``1×1 expand (×t) + BN + PReLU → 3×3 depthwise/s + BN + PReLU → 1×1 project + BN``,
    plus the input when the stride is 1 and the width is unchanged.

    Attributes:
      features: output channels.
      expansion: width of the hidden layer relative to the input channels.
      strides: stride of the depthwise convolution.
      conv: constructor of a convolution, ``conv(features, kernel_size, strides=..., groups=...)``.
      norm: constructor of a BatchNorm layer.
    """

    features: int
    expansion: int
    strides: int
    conv: Callable[..., nn.Module]
    norm: Callable[..., nn.Module]

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        hidden = x.shape[-1] * self.expansion
        y = PReLU()(self.norm()(self.conv(hidden, 1)(x)))
        y = self.conv(hidden, 3, strides=self.strides, groups=hidden)(y)
        y = PReLU()(self.norm()(y))
        y = self.norm()(self.conv(self.features, 1)(y))
        if self.strides == 1 and x.shape[-1] == self.features:
            return x + y
        return y


class MobileFaceNet(nn.Module):
    """MobileFaceNet: depthwise-separable bottlenecks and a global depthwise (GDConv) head.

    ``112×112×3 → conv3×3/2 64 → depthwise conv3×3 64 → bottlenecks (Table 1) → 7×7×128 →
    conv1×1 512 → GDConv7×7 (linear) → FC(embedding_dim) → BN``; every convolution is
    followed by BN, and by PReLU unless marked linear. The GDConv kernel covers the whole
    final feature map, so other input sizes work (⌈H/16⌉ × ⌈W/16⌉). With a 128-d embedding
    this is 1.00M parameters (the paper: 0.99M). The body computes in ``dtype``, the FC and
    the final BN in float32.

    Attributes:
      embedding_dim: width of the embedding (128 in the paper).
      dropout: dropout rate before the FC (0 in the paper); uses the "dropout" rng when
        ``train`` is true.
      dtype: computation dtype of the body (parameters are float32).
      bn_axis_name: named device axis for synchronized batch statistics, or None.
    """

    embedding_dim: int = 128
    dropout: float = 0.0
    dtype: Dtype = jnp.float32
    bn_axis_name: str | None = None

    @nn.compact
    def __call__(self, images: jax.Array, train: bool) -> jax.Array:
        """Embeds a batch of images.

        Args:
          images: float (B, H, W, C) images, 112×112×3 for faces.
          train: normalize with batch statistics (updating "batch_stats", which must
            then be mutable) and apply dropout; otherwise use the running averages.

        Returns:
          float32 embeddings of shape (B, embedding_dim).
        """
        check_images(images)
        conv_ = functools.partial(conv, dtype=self.dtype)
        norm = batch_norm(train=train, dtype=self.dtype, axis_name=self.bn_axis_name)
        x = PReLU()(norm()(conv_(64, 3, strides=2)(images.astype(self.dtype))))
        x = PReLU()(norm()(conv_(64, 3, groups=64)(x)))
        for stage, (expansion, width, repeats, strides) in enumerate(BOTTLENECKS):
            for block in range(repeats):
                x = Bottleneck(
                    width,
                    expansion=expansion,
                    strides=strides if block == 0 else 1,
                    conv=conv_,
                    norm=norm,
                    name=f"stage{stage + 1}_block{block}",
                )(x)
        x = PReLU()(norm()(conv_(512, 1)(x)))
        x = nn.Conv(
            512,
            x.shape[1:3],
            padding="VALID",
            feature_group_count=512,
            use_bias=False,
            dtype=self.dtype,
            kernel_init=HE_NORMAL,
            name="gdconv",
        )(x)
        x = norm(name="gdconv_bn")(x)
        x = x.reshape(x.shape[0], -1).astype(jnp.float32)
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        x = nn.Dense(self.embedding_dim, use_bias=False)(x)
        head_norm = batch_norm(train=train, dtype=jnp.float32, axis_name=self.bn_axis_name)
        return head_norm(name="features")(x)
