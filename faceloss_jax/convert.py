"""Converts arcface_torch iResNet checkpoints to Flax backbones, and back.

In (a ``backbone.pth`` of InsightFace's arcface_torch → a backbone directory that
``faceloss_jax.evaluate``, ``faceloss_jax.embed`` and ``config.init_from`` read)::

    python -m faceloss_jax.convert --from_torch=backbone.pth --model=iresnet50 --workdir=DIR

Out (a converted directory or a training run's latest checkpoint → a ``state_dict``
that arcface_torch's ``get_model("r50").load_state_dict`` accepts)::

    python -m faceloss_jax.convert --to_torch=backbone.pth --workdir=DIR

PyTorch is imported by these two commands only (``pip install -e ".[torch]"``); the
mapping itself is ``faceloss_jax.weights.arcface_torch`` (NumPy). A ``state_dict`` that
does not fit ``--model`` is rejected with the list of every missing, unexpected and
mis-shaped tensor. Training checkpoints of arcface_torch (``checkpoint_gpu_0.pt`` with a
``state_dict_backbone`` entry) and ``module.``-prefixed keys are accepted too.

Every error of the user's (a missing or unreadable ``.pth``, a ``state_dict`` of another
model, PyTorch not installed, an import into a training run's workdir) is one ``FATAL``
line (``--verbose``: the traceback) and leaves nothing written.
"""

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from absl import app, flags
from etils import epath

from faceloss_jax import errors, weights
from faceloss_jax.train_lib import cli

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The command's flags (defined when run as a program, so that importing this module
    as a library defines none; ``--verbose`` comes with ``train_lib.cli``)."""
    flags.DEFINE_string("from_torch", None, "arcface_torch backbone.pth to import.")
    flags.DEFINE_string("to_torch", None, "Path of the state_dict .pth to export.")
    flags.DEFINE_enum(
        "model", None, list(weights.IRESNET_NAMES), "The architecture of --from_torch."
    )
    flags.DEFINE_string(
        "workdir", None, "Backbone directory to write (import) or read (export).", required=True
    )


class MissingDependencyError(errors.UserError):
    """A package the command needs is not installed (the message says how to install it)."""

    kind = "missing dependency"


def _import_torch() -> Any:
    try:
        import torch  # noqa: PLC0415 -- only the convert commands need PyTorch.
    except ImportError:
        raise MissingDependencyError(
            "faceloss_jax.convert needs PyTorch: pip install -e '.[torch]' (or pip install torch)"
        ) from None
    return torch


def read_torch_state_dict(path: epath.PathLike) -> dict[str, np.ndarray]:
    """The backbone ``state_dict`` in a ``.pth``/``.pt`` file, as NumPy arrays.

    Raises:
      FileNotFoundError: ``path`` does not exist.
      errors.DataError: ``path`` is not a PyTorch file holding a ``state_dict``.
      MissingDependencyError: PyTorch is not installed.
    """
    if not epath.Path(path).is_file():
        raise FileNotFoundError(f"{path} does not exist (--from_torch: an arcface_torch .pth)")
    torch = _import_torch()
    try:
        content = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 -- pickle, zip and torch errors alike.
        raise errors.DataError(
            f"cannot read {path} as a PyTorch checkpoint ({type(error).__name__}: {error})"
        ) from None
    if isinstance(content, Mapping):
        for key in ("state_dict_backbone", "state_dict"):
            if isinstance(content.get(key), Mapping):
                content = content[key]
                break
    if not isinstance(content, Mapping):
        raise errors.DataError(f"{path} holds a {type(content).__name__}, not a state_dict")
    return {k: v.detach().cpu().numpy() for k, v in content.items() if hasattr(v, "detach")}


def import_torch_checkpoint(
    path: epath.PathLike, model: str, workdir: epath.PathLike
) -> epath.Path:
    """Converts arcface_torch ``path`` (iResNet ``model``) to a backbone directory.

    ``workdir`` is checked first (a training run's workdir is refused) and written
    only once the conversion has succeeded, all at once (``weights.save_backbone``).

    Raises:
      errors.CheckpointError: ``workdir`` holds a training run.
      weights.StateDictMismatchError: the ``state_dict`` does not fit ``model``.
    """
    weights.check_backbone_target(workdir)
    state_dict = read_torch_state_dict(path)
    variables = weights.torch_to_flax(state_dict, model)
    fan_in, embedding_dim = variables["params"]["Dense_0"]["kernel"].shape
    return weights.save_backbone(
        workdir,
        variables,
        {"name": model, "embedding_dim": int(embedding_dim)},
        source=f"arcface_torch {model} state_dict {epath.Path(path).absolute()}",
        # The FC reads the last 512-channel g×g map, g = input size / 16 (7 for 112).
        image_size=16 * math.isqrt(fan_in // 512),
    )


def export_torch_checkpoint(workdir: epath.PathLike, path: epath.PathLike) -> str:
    """Writes the iResNet of ``workdir`` as an arcface_torch ``state_dict`` to ``path``
    (through a temporary file beside it: a failed export leaves no partial file).

    Returns:
      The model name.

    Raises:
      errors.ConfigError: ``workdir`` holds another architecture than an iResNet.
    """
    torch = _import_torch()
    backbone = weights.load_backbone(workdir)
    name = backbone.model_config["name"]
    if name not in weights.IRESNET_NAMES:
        raise errors.ConfigError(
            f"only iResNets export to arcface_torch ({', '.join(weights.IRESNET_NAMES)}); "
            f"{workdir} holds a {name}"
        )
    state_dict = weights.flax_to_torch(backbone.variables, name)
    path = epath.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.parent / f".{path.name}.partial"
    try:
        torch.save({k: torch.from_numpy(np.array(v)) for k, v in state_dict.items()}, str(partial))
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)
    return name


def main(argv: Sequence[str]) -> None:
    cli.default_to_warnings()
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if (FLAGS.from_torch is None) == (FLAGS.to_torch is None):
        raise app.UsageError("pass exactly one of --from_torch (import) or --to_torch (export)")
    if FLAGS.from_torch is not None:
        if FLAGS.model is None:
            raise app.UsageError("--from_torch needs --model (iresnet18/34/50/100)")
        directory = import_torch_checkpoint(FLAGS.from_torch, FLAGS.model, FLAGS.workdir)
        print(f"wrote the {FLAGS.model} backbone to {directory}")
    else:
        name = export_torch_checkpoint(FLAGS.workdir, FLAGS.to_torch)
        print(f"wrote the {name} state_dict to {FLAGS.to_torch}")


if __name__ == "__main__":
    define_flags()
    cli.run(main)
