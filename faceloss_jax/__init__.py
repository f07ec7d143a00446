"""faceloss_jax: the loss functions of deep face recognition as pure JAX functions.

Submodules are imported on use (``from faceloss_jax import losses``), so that the
data pipeline or the evaluation code do not pull in more than they need.
"""

__version__ = "0.1.0"
