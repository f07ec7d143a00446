"""Regenerates ``tests/data/backbone_golden.npz``: small-input outputs of every backbone.

The outputs come from the float64 NumPy forward passes of ``tests/backbone_reference.py``
(written from the papers and InsightFace's PyTorch code, not from the Flax modules), with
the deterministic variables of ``backbone_reference.make_variables`` (NumPy, seeded by
each variable's path). The script also runs the Flax backbone and refuses to write unless
the two agree, which is the review of both; ``tests/test_backbone_values.py`` then pins
the Flax outputs to the stored values.

    .venv/bin/python tests/data/make_backbone_golden.py
"""

import pathlib
import sys

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE.parents[1])]

import backbone_reference as ref  # noqa: E402
import test_backbone_values as cases  # noqa: E402

REFERENCES = {
    "iresnet18": lambda v, x: ref.iresnet(v, x, (2, 2, 2, 2)),
    "mobilefacenet": ref.mobilefacenet,
    "lenet_pp": ref.lenet_pp,
}


def main() -> None:
    arrays = {}
    for name in cases.BACKBONES:
        model, variables, images = cases.setup(name)
        want = REFERENCES[name](variables, images)
        got = np.asarray(model.apply(variables, images, train=False))
        scale = np.abs(want).max()
        err = np.abs(got - want).max() / scale
        print(f"{name}: max |Flax − NumPy| / max |NumPy| = {err:.2e}")
        assert err < cases.rounding_bound(variables), name  # float32's bound (see there)
        arrays[f"{name}/images"] = images
        arrays[f"{name}/embeddings"] = want
    np.savez_compressed(HERE / "backbone_golden.npz", **arrays)


if __name__ == "__main__":
    main()
