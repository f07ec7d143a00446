"""LeNets++, the MNIST network of the center-loss paper.

Wen, Zhang, Li, Qiao. "A Discriminative Feature Learning Approach for Deep Face
Recognition", ECCV 2016, Table 1 and Fig. 2 (2-D features of MNIST digits).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.typing import Dtype

from faceloss_jax.models.layers import PReLU, check_images

# Caffe's "xavier" filler of the authors' prototxt: uniform with variance 1 / fan_in.
_CAFFE_XAVIER = nn.initializers.lecun_uniform()


class LeNetPlusPlus(nn.Module):
    """LeNets++: three stages of two 5×5 convolutions, PReLU and 2×2 max pooling.

    ``28×28×1 → [conv(5, 32)/1,2 ×2, pool 2/2] → [conv(5, 64) ×2, pool] →
    [conv(5, 128) ×2, pool] → 3×3×128 → FC(embedding_dim) → PReLU``.

    The feature layer (FC, with bias) is followed by a PReLU, as in the authors' released
    prototxt (``ip1`` → ``preluip1``); its output is the embedding that the losses see,
    2- or 3-D for the papers' feature figures. The authors' prototxt pools the last stage
    with a 3×3/2 window, which gives the same 3×3 map as the paper's 2×2/2 used here.
    Convolutions compute in ``dtype``; the feature layer always computes in float32.

    Attributes:
      embedding_dim: width of the feature layer.
      dropout: dropout rate on the flattened features before the feature layer
        (0 in the paper); uses the "dropout" rng when ``train`` is true.
      feature_prelu: apply the PReLU after the feature layer (the authors' network).
      dtype: computation dtype of the convolutions (parameters are float32).
    """

    embedding_dim: int = 2
    dropout: float = 0.0
    feature_prelu: bool = True
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, images: jax.Array, train: bool) -> jax.Array:
        """Embeds a batch of images.

        Args:
          images: float (B, H, W, C) images, 28×28×1 for MNIST.
          train: apply dropout (the network has no batch norm).

        Returns:
          float32 embeddings of shape (B, embedding_dim).
        """
        check_images(images)
        x = images.astype(self.dtype)
        for width in (32, 64, 128):
            for _ in range(2):
                x = nn.Conv(width, (5, 5), padding=2, dtype=self.dtype, kernel_init=_CAFFE_XAVIER)(
                    x
                )
                x = PReLU()(x)
            x = nn.max_pool(x, (2, 2), strides=(2, 2))
        x = x.reshape(x.shape[0], -1).astype(jnp.float32)
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        x = nn.Dense(self.embedding_dim, kernel_init=_CAFFE_XAVIER)(x)
        return PReLU()(x) if self.feature_prelu else x
