"""Weights in and out: arcface_torch iResNet checkpoints and backbone directories.

    python -m faceloss_jax.convert --from_torch=backbone.pth --model=iresnet50 --workdir=DIR
    python -m faceloss_jax.convert --to_torch=out.pth --workdir=DIR

``arcface_torch`` maps state_dicts to Flax variables and back (NumPy only; PyTorch is
needed only by the ``convert`` command), ``store`` writes and reads backbone
directories, and ``init_from`` starts a run from one (``config.init_from``).
"""

from faceloss_jax.weights.arcface_torch import IRESNET_NAMES
from faceloss_jax.weights.arcface_torch import StateDictMismatchError
from faceloss_jax.weights.arcface_torch import check_state_dict
from faceloss_jax.weights.arcface_torch import expected_state_dict_shapes
from faceloss_jax.weights.arcface_torch import flax_to_torch
from faceloss_jax.weights.arcface_torch import torch_to_flax
from faceloss_jax.weights.store import ARCFACE_TORCH_NORMALIZATION
from faceloss_jax.weights.store import Backbone
from faceloss_jax.weights.store import check_backbone_target
from faceloss_jax.weights.store import init_from
from faceloss_jax.weights.store import load_backbone
from faceloss_jax.weights.store import run_files
from faceloss_jax.weights.store import save_backbone
