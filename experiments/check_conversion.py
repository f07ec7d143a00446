r"""Conversion error of arcface_torch iResNets → Flax → PyTorch, at 112×112.

Builds the PyTorch iResNet of ``tests/test_convert.py`` (arcface_torch's architecture,
random weights, BatchNorm statistics and PReLU slopes), converts it with
``weights.torch_to_flax``, and reports the max relative difference
``max|flax − torch| / max|torch|`` of the eval-mode embeddings, and the same for the
``state_dict`` exported back (``weights.flax_to_torch``) and loaded into PyTorch:

  python experiments/check_conversion.py --models=iresnet18,iresnet34,iresnet50,iresnet100

Needs PyTorch (``pip install -e ".[torch]"``).
"""

import os
import sys

import numpy as np
from absl import app, flags

sys.path.insert(
    0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests")
)

import test_convert  # noqa: E402  -- the PyTorch reference iResNet of the tests.
import torch  # noqa: E402

from faceloss_jax import weights  # noqa: E402
from faceloss_jax.models.iresnet import STAGE_SIZES  # noqa: E402

_MODELS = flags.DEFINE_list("models", list(STAGE_SIZES), "iResNets to check.")
_SIZE = flags.DEFINE_integer("size", 112, "Input size (a multiple of 16).")
_BATCH = flags.DEFINE_integer("batch", 2, "Images.")


def main(argv):
    del argv
    test_convert.SIZE = _SIZE.value
    print("| model | input | flax vs torch | exported torch vs flax |")
    print("|---|---|---|---|")
    for name in _MODELS.value:
        model = test_convert._torch_model(name)
        images = test_convert._images(batch=_BATCH.value)
        expected = test_convert._torch_forward(model, images)
        variables = weights.torch_to_flax(model.state_dict(), name)
        flax_out = test_convert._flax_forward(name, variables, images)
        exported = weights.flax_to_torch(variables, name)
        fresh = test_convert.TorchIResNet(STAGE_SIZES[name], grid=_SIZE.value // 16).eval()
        fresh.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in exported.items()})
        back = test_convert._torch_forward(fresh, images)
        print(
            f"| {name} | {_SIZE.value}×{_SIZE.value} | {test_convert._rel(flax_out, expected):.2e}"
            f" | {test_convert._rel(back, flax_out):.2e} |",
            flush=True,
        )


if __name__ == "__main__":
    app.run(main)
