"""Backbone checkpoints: write, read, and start a run from them.

A backbone directory (written by ``python -m faceloss_jax.convert``) holds

- ``backbone.json``: ``{"model": {"name", "embedding_dim", ...}, "normalization":
  {"shift", "scale"}, "source": ..., "verification_threshold": ...}`` — the model
  config of ``models.create_model``, the input normalization ``(x − shift)/scale``
  of uint8 RGB pixels, and where the weights came from;
- ``backbone/``: an orbax checkpoint of ``{"params", "batch_stats"}``.

``load_backbone(workdir)`` reads such a directory or a training run's workdir
(``config.json`` + ``checkpoints/<step>/state``, the newest step), so evaluation,
``faceloss_jax.embed`` and ``config.init_from`` take either. A directory holds one or
the other: ``save_backbone`` refuses a run's workdir, and ``load_backbone`` a directory
holding both (which one is meant cannot be told).
"""

import dataclasses
import json
import shutil
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from flax import traverse_util

from faceloss_jax import errors, models
from faceloss_jax.train_lib import checkpointing

BACKBONE_JSON = "backbone.json"
BACKBONE_DIR = "backbone"
# arcface_torch's input: (x/255 − 0.5)/0.5 = (x − 127.5)/127.5 (eval_ijbc.py, dataset.py).
ARCFACE_TORCH_NORMALIZATION = {"shift": 127.5, "scale": 127.5}
# What makes a directory a training run's workdir.
_RUN_FILES = ("config.json", "checkpoints/")


@dataclasses.dataclass(frozen=True)
class Backbone:
    """A restored backbone.

    Attributes:
      model: the Flax module (``model.apply(variables, images, train=False)``).
      variables: ``{"params", "batch_stats"}`` as NumPy arrays.
      model_config: the ``models.create_model`` config it was built from.
      shift, scale: input normalization ``(x − shift)/scale`` of uint8 pixels.
      info: the rest of ``backbone.json`` (or ``{"source": <run workdir>, "step": N}``).
      image_size: the side of the square inputs it was trained on (a run's
        ``dataset.image_size``; a converted backbone's ``backbone.json`` ``image_size``,
        else its model's default, 112 for faces).
    """

    model: nn.Module
    variables: dict[str, Any]
    model_config: dict[str, Any]
    shift: float
    scale: float
    info: dict[str, Any]
    image_size: int = 112  # the ArcFace crop

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

    Both are written into a staging folder beside ``directory`` and moved in when
    complete, so a failed save leaves no half-written backbone (and, for a new
    ``directory``, no directory).

    Args:
      directory: created if missing; an existing backbone there is replaced; a
        training run's workdir is refused (``check_backbone_target``).
      variables: ``{"params", "batch_stats"}``.
      model_config: the ``models.create_model`` config (name, embedding_dim, ...);
        checked by building the model.
      normalization: ``{"shift", "scale"}`` of the inputs.
      **info: JSON-serializable provenance (source file, verification threshold, ...).

    Returns:
      The directory.
    """
    directory = epath.Path(directory).absolute()
    check_backbone_target(directory)
    models.create_model(dict(model_config))
    tree = {k: jax.tree.map(np.asarray, dict(variables[k])) for k in ("params", "batch_stats")}
    meta = {"model": dict(model_config), "normalization": dict(normalization), **info}
    text = json.dumps(meta, indent=2)
    staging = directory.parent / f".{directory.name}.saving"
    if staging.exists():
        shutil.rmtree(staging)  # left by an interrupted save
    try:
        with ocp.StandardCheckpointer() as checkpointer:
            checkpointer.save(staging / BACKBONE_DIR, tree)
            checkpointer.wait_until_finished()
        (staging / BACKBONE_JSON).write_text(text, encoding="utf-8")
        _move_into(staging, directory)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return directory


def _move_into(staging: epath.Path, directory: epath.Path) -> None:
    """Makes the complete backbone in ``staging`` that of ``directory``: one rename for a
    new directory, else the old ``backbone/`` moved out and the new one and its
    ``backbone.json`` moved in."""
    if not directory.exists():
        staging.rename(directory)
        return
    if (directory / BACKBONE_DIR).exists():
        (directory / BACKBONE_DIR).rename(staging / "replaced")
    (staging / BACKBONE_DIR).rename(directory / BACKBONE_DIR)
    (staging / BACKBONE_JSON).replace(directory / BACKBONE_JSON)


def run_files(workdir: epath.PathLike) -> list[str]:
    """The files of a training run in ``workdir`` (``config.json``, ``checkpoints/``)."""
    workdir = epath.Path(workdir)
    return [name for name in _RUN_FILES if (workdir / name.rstrip("/")).exists()]


def check_backbone_target(directory: epath.PathLike) -> None:
    """Refuses to write a backbone into a training run's workdir, where ``load_backbone``
    (``evaluate --bins/--ijb``, ``embed``, ``init_from``) could no longer tell which of
    the two is meant.

    Raises:
      errors.CheckpointError: ``directory`` holds ``config.json`` or ``checkpoints/``.
    """
    found = run_files(directory)
    if found:
        raise errors.CheckpointError(
            f"{directory} holds a training run ({', '.join(found)}): a backbone written "
            "there would stand beside the run's checkpoints; write it to a new directory"
        )


def _restore(path: epath.Path) -> dict[str, Any]:
    with ocp.StandardCheckpointer() as checkpointer:
        return checkpointer.restore(path)


def _read_json(path: epath.Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def _converted_parts(workdir: epath.Path) -> tuple[dict, dict, tuple[float, float], int, dict]:
    """Variables, model config, normalization, input size and info of a converted
    backbone."""
    meta = _read_json(workdir / BACKBONE_JSON)
    tree = _restore((workdir / BACKBONE_DIR).absolute())
    variables = {"params": tree["params"], "batch_stats": tree["batch_stats"]}
    model_config = meta.pop("model")
    norm = meta.pop("normalization")
    size = meta.pop("image_size", models.input_shape(model_config["name"])[0])
    return variables, model_config, (norm["shift"], norm["scale"]), size, meta


def _run_parts(workdir: epath.Path) -> tuple[dict, dict, tuple[float, float], int, dict]:
    """Variables, model config, normalization, input size and info of a run's newest
    checkpoint."""
    from faceloss_jax.data import config as data_config  # noqa: PLC0415

    config = _read_json(workdir / "config.json")
    # Verified against the checksums written at save, read-only, falling back past a
    # damaged checkpoint as training does.
    tree, step = checkpointing.restore_latest_tree(workdir / "checkpoints")
    variables = {"params": tree["params"]["backbone"], "batch_stats": tree["batch_stats"]}
    normalization = data_config.NORMALIZATIONS[config["dataset"]["normalization"]]
    size = config["dataset"]["image_size"]
    info = {"source": str(workdir), "step": step}
    return variables, dict(config["model"]), normalization, size, info


def load_backbone(workdir: epath.PathLike) -> Backbone:
    """The backbone of a converted directory or of a training run's latest checkpoint.

    Raises:
      errors.CheckpointError: ``workdir`` has neither ``backbone.json`` nor
        ``config.json`` with a checkpoint, or both a backbone and a run (which one is
        meant cannot be told).
    """
    workdir = epath.Path(workdir)
    run = run_files(workdir)
    if (workdir / BACKBONE_JSON).exists():
        if run:
            raise errors.CheckpointError(
                f"{workdir} holds both a converted backbone ({BACKBONE_JSON}, "
                f"{BACKBONE_DIR}/) and a training run ({', '.join(run)}): which one to use "
                f"cannot be told; move {BACKBONE_JSON} and {BACKBONE_DIR}/ to a directory "
                "of their own"
            )
        parts = _converted_parts(workdir)
    elif "config.json" in run:
        parts = _run_parts(workdir)
    else:
        raise errors.CheckpointError(
            f"{workdir} is neither a converted backbone ({BACKBONE_JSON}) nor a training "
            "run (config.json + checkpoints/)"
        )
    variables, model_config, (shift, scale), image_size, info = parts
    return Backbone(
        model=models.create_model(model_config),
        variables=jax.tree.map(np.asarray, variables),
        model_config=model_config,
        shift=float(shift),
        scale=float(scale),
        image_size=int(image_size),
        info=info,
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
      errors.CheckpointMismatchError: the backbones differ (every differing variable
        is listed).
    """
    backbone = load_backbone(source)
    params, stats = state.params["backbone"], state.batch_stats
    problems = _shape_mismatches(backbone.variables["params"], params, "params")
    problems += _shape_mismatches(backbone.variables["batch_stats"], stats, "batch_stats")
    if problems:
        raise errors.CheckpointMismatchError(
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
