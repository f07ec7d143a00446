"""Backbone checkpoints: write, read, and start a run from them.

A backbone directory (written by ``python -m faceloss_jax.convert``) holds

- ``backbone.json``: ``{"model": {"name", "embedding_dim", ...}, "normalization":
  {"shift", "scale"}, "source": ..., "verification_threshold": ...}`` — the model
  config of ``models.create_model``, the input normalization ``(x − shift)/scale``
  of uint8 RGB pixels, and where the weights came from;
- ``backbone/``: an orbax checkpoint of ``{"params", "batch_stats"}``.

``load_backbone(workdir)`` reads such a directory or a training run's workdir
(``config.json`` + ``checkpoints/<step>/state``, the newest step), so evaluation,
``faceloss_jax.embed`` and ``config.init_from`` take either.
"""

import dataclasses
import json
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from flax import traverse_util

from faceloss_jax import models

BACKBONE_JSON = "backbone.json"
BACKBONE_DIR = "backbone"
# arcface_torch's input: (x/255 − 0.5)/0.5 = (x − 127.5)/127.5 (eval_ijbc.py, dataset.py).
ARCFACE_TORCH_NORMALIZATION = {"shift": 127.5, "scale": 127.5}


@dataclasses.dataclass(frozen=True)
class Backbone:
    """A restored backbone.

    Attributes:
      model: the Flax module (``model.apply(variables, images, train=False)``).
      variables: ``{"params", "batch_stats"}`` as NumPy arrays.
      model_config: the ``models.create_model`` config it was built from.
      shift, scale: input normalization ``(x − shift)/scale`` of uint8 pixels.
      info: the rest of ``backbone.json`` (or ``{"source": <run workdir>, "step": N}``).
    """

    model: nn.Module
    variables: dict[str, Any]
    model_config: dict[str, Any]
    shift: float
    scale: float
    info: dict[str, Any]

    def preprocess(self, images: np.ndarray) -> np.ndarray:
        """uint8 (or float 0–255) RGB images → float32 inputs of the backbone."""
        return (np.asarray(images, np.float32) - self.shift) / self.scale


def save_backbone(
    directory: epath.PathLike,
    variables: Mapping[str, Any],
    model_config: Mapping[str, Any],
    *,
    normalization: Mapping[str, float] = ARCFACE_TORCH_NORMALIZATION,
    **info: Any,
) -> epath.Path:
    """Writes ``backbone.json`` and the ``backbone/`` checkpoint into ``directory``.

    Args:
      directory: created if missing; an existing backbone there is replaced.
      variables: ``{"params", "batch_stats"}``.
      model_config: the ``models.create_model`` config (name, embedding_dim, ...);
        checked by building the model.
      normalization: ``{"shift", "scale"}`` of the inputs.
      **info: JSON-serializable provenance (source file, verification threshold, ...).

    Returns:
      The directory.
    """
    directory = epath.Path(directory).absolute()
    models.create_model(dict(model_config))
    directory.mkdir(parents=True, exist_ok=True)
    tree = {k: jax.tree.map(np.asarray, dict(variables[k])) for k in ("params", "batch_stats")}
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(directory / BACKBONE_DIR, tree, force=True)
        checkpointer.wait_until_finished()
    meta = {"model": dict(model_config), "normalization": dict(normalization), **info}
    (directory / BACKBONE_JSON).write_text(json.dumps(meta, indent=2))
    return directory


def _latest_state_dir(workdir: epath.Path) -> tuple[epath.Path, int]:
    steps = (
        [
            int(p.name)
            for p in (workdir / "checkpoints").iterdir()
            if p.name.isdigit() and (p / "state").exists()
        ]
        if (workdir / "checkpoints").exists()
        else []
    )
    if not steps:
        raise FileNotFoundError(f"no checkpoint in {workdir}/checkpoints")
    step = max(steps)
    return workdir / "checkpoints" / str(step) / "state", step


def _restore(path: epath.Path) -> dict[str, Any]:
    with ocp.StandardCheckpointer() as checkpointer:
        return checkpointer.restore(path)


def load_backbone(workdir: epath.PathLike) -> Backbone:
    """The backbone of a converted directory or of a training run's latest checkpoint.

    Raises:
      FileNotFoundError: ``workdir`` has neither ``backbone.json`` nor ``config.json``
        with a checkpoint.
    """
    workdir = epath.Path(workdir)
    if (workdir / BACKBONE_JSON).exists():
        meta = json.loads((workdir / BACKBONE_JSON).read_text())
        tree = _restore((workdir / BACKBONE_DIR).absolute())
        variables = {"params": tree["params"], "batch_stats": tree["batch_stats"]}
        model_config = meta.pop("model")
        norm = meta.pop("normalization")
        shift, scale = norm["shift"], norm["scale"]
    elif (workdir / "config.json").exists():
        from faceloss_jax.data import config as data_config  # noqa: PLC0415

        config = json.loads((workdir / "config.json").read_text())
        state_dir, step = _latest_state_dir(workdir)
        tree = _restore(state_dir.absolute())
        variables = {"params": tree["params"]["backbone"], "batch_stats": tree["batch_stats"]}
        model_config = dict(config["model"])
        shift, scale = data_config.NORMALIZATIONS[config["dataset"]["normalization"]]
        meta = {"source": str(workdir), "step": step}
    else:
        raise FileNotFoundError(
            f"{workdir} is neither a converted backbone ({BACKBONE_JSON}) nor a training "
            "run (config.json + checkpoints/)"
        )
    variables = jax.tree.map(np.asarray, variables)
    return Backbone(
        model=models.create_model(model_config),
        variables=variables,
        model_config=model_config,
        shift=float(shift),
        scale=float(scale),
        info=meta,
    )


def _shape_mismatches(loaded: Any, template: Any, prefix: str) -> list[str]:
    flat_loaded = traverse_util.flatten_dict(loaded, sep="/")
    flat_template = traverse_util.flatten_dict(template, sep="/")
    problems = [f"{prefix}/{k}: missing" for k in sorted(set(flat_template) - set(flat_loaded))]
    problems += [f"{prefix}/{k}: unexpected" for k in sorted(set(flat_loaded) - set(flat_template))]
    problems += [
        f"{prefix}/{k}: shape {np.shape(flat_loaded[k])}, the run has {np.shape(flat_template[k])}"
        for k in sorted(set(flat_loaded) & set(flat_template))
        if np.shape(flat_loaded[k]) != np.shape(flat_template[k])
    ]
    return problems


def init_from(state: Any, source: epath.PathLike) -> Any:
    """A fresh train state whose backbone (params and BatchNorm statistics) is loaded
    from ``source`` (a converted backbone or a run); the head, the optimizer state and
    the step stay as initialized (fine-tuning with a fresh classifier).

    Raises:
      ValueError: the backbones differ (every differing variable is listed).
    """
    backbone = load_backbone(source)
    params, stats = state.params["backbone"], state.batch_stats
    problems = _shape_mismatches(backbone.variables["params"], params, "params")
    problems += _shape_mismatches(backbone.variables["batch_stats"], stats, "batch_stats")
    if problems:
        raise ValueError(
            f"config.init_from={source} holds a {backbone.model_config.get('name')} backbone "
            "that does not fit this run's model:\n  " + "\n  ".join(problems)
        )

    def cast(new, old):
        return jax.numpy.asarray(new, old.dtype)

    return state.replace(
        params={
            **state.params,
            "backbone": jax.tree.map(cast, backbone.variables["params"], params),
        },
        batch_stats=jax.tree.map(cast, backbone.variables["batch_stats"], stats),
    )
