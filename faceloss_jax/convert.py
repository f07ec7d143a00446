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
"""

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from absl import app, flags
from etils import epath

from faceloss_jax import weights

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The command's flags (defined when run as a program, so that importing this module
    as a library defines none)."""
    flags.DEFINE_string("from_torch", None, "arcface_torch backbone.pth to import.")
    flags.DEFINE_string("to_torch", None, "Path of the state_dict .pth to export.")
    flags.DEFINE_enum(
        "model", None, list(weights.IRESNET_NAMES), "The architecture of --from_torch."
    )
    flags.DEFINE_string(
        "workdir", None, "Backbone directory to write (import) or read (export).", required=True
    )


def _import_torch() -> Any:
    try:
        import torch  # noqa: PLC0415 -- only the convert commands need PyTorch.
    except ImportError as error:
        raise ImportError(
            "faceloss_jax.convert needs PyTorch: pip install -e '.[torch]'"
        ) from error
    return torch


def read_torch_state_dict(path: epath.PathLike) -> dict[str, np.ndarray]:
    """The backbone ``state_dict`` in a ``.pth``/``.pt`` file, as NumPy arrays."""
    torch = _import_torch()
    content = torch.load(str(path), map_location="cpu", weights_only=True)
    if isinstance(content, Mapping):
        for key in ("state_dict_backbone", "state_dict"):
            if isinstance(content.get(key), Mapping):
                content = content[key]
                break
    if not isinstance(content, Mapping):
        raise ValueError(f"{path} holds a {type(content).__name__}, not a state_dict")
    return {k: v.detach().cpu().numpy() for k, v in content.items() if hasattr(v, "detach")}


def import_torch_checkpoint(
    path: epath.PathLike, model: str, workdir: epath.PathLike
) -> epath.Path:
    """Converts arcface_torch ``path`` (iResNet ``model``) to a backbone directory."""
    state_dict = read_torch_state_dict(path)
    variables = weights.torch_to_flax(state_dict, model)
    embedding_dim = variables["params"]["Dense_0"]["kernel"].shape[1]
    return weights.save_backbone(
        workdir,
        variables,
        {"name": model, "embedding_dim": int(embedding_dim)},
        source=f"arcface_torch {model} state_dict {epath.Path(path).absolute()}",
    )


def export_torch_checkpoint(workdir: epath.PathLike, path: epath.PathLike) -> str:
    """Writes the iResNet of ``workdir`` as an arcface_torch ``state_dict`` to ``path``.

    Returns:
      The model name.
    """
    torch = _import_torch()
    backbone = weights.load_backbone(workdir)
    name = backbone.model_config["name"]
    if name not in weights.IRESNET_NAMES:
        raise ValueError(
            f"only iResNets export to arcface_torch ({', '.join(weights.IRESNET_NAMES)}); "
            f"{workdir} holds a {name}"
        )
    state_dict = weights.flax_to_torch(backbone.variables, name)
    epath.Path(path).parent.mkdir(parents=True, exist_ok=True)
    torch.save({k: torch.from_numpy(np.array(v)) for k, v in state_dict.items()}, str(path))
    return name


def main(argv: Sequence[str]) -> None:
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
    app.run(main)
