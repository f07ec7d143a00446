"""faceloss_jax: the loss functions of deep face recognition as pure JAX functions."""

from faceloss_jax import losses

__all__ = ["losses"]
__version__ = "0.1.0"
