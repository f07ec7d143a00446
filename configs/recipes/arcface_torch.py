"""arcface_torch's dataset recipes (deepinsight/insightface, recognition/arcface_torch),
as configs of this project.

Each ``configs/recipes/<name>.py`` holds the values of arcface_torch's
``configs/<name>.py`` (an ``ArcfaceTorch`` record, field names as theirs) and the
number of GPUs of its published run, and builds the config with ``get_config``:

- ``batch_size`` here is global: arcface_torch's ``batch_size`` is per GPU, so the
  global batch is ``per_device_batch × gpus`` (MS1MV2 on 8 GPUs: 128 × 8 = 1,024).
- Steps count micro-batches and derive as ``train_v2.py`` derives them:
  ``total_step = num_image // (batch_size × world_size) × num_epoch`` and
  ``warmup_step = num_image // (batch_size × world_size) × warmup_epoch``
  (``gradient_acc`` does not enter: arcface_torch's scheduler steps every micro-batch,
  and so does ours). ``--config.num_train_steps`` still overrides them.
- The variant re-derives them for another machine: ``:gpus=1`` (one device, global
  batch 128), ``:gpus=8,per_device_batch=64``; ``grad_accum=K`` accumulates K
  micro-batches per update (arcface_torch's ``gradient_acc``: gradients summed).

What arcface_torch does and these configs follow: SGD momentum 0.9 with weight decay
on every parameter, the backbone's gradient norm clipped at 5 at each update (the head
unclipped), the polynomial (power 1) decay to 0 after a linear warmup, s = 64 and
``margin_list = (m1, m2, m3)`` (ArcFace ``(1, 0.5, 0)``: straight-through, no fallback,
as its ``CombinedMarginLoss``; CosFace ``(1, 0, 0.4)``), Partial FC's ``sample_rate``,
inputs ``(x − 127.5) / 127.5``, random horizontal flips, validation on the
``val_targets`` every ``verbose`` steps.

Documented differences: ``fp16`` (PyTorch AMP with a loss scaler) is bfloat16 here
(``half_precision``, no loss scaling); W is replicated unless
``--config.loss.class_sharded=True`` (arcface_torch always splits it over the GPUs;
here that needs ``num_classes`` divisible by the devices); its ViT recipes (AdamW,
``vit_*`` backbones) have no config here, this project having no ViT backbone; DALI
and ``interclass_filtering_threshold`` are not offered.
"""

import dataclasses

import ml_collections

from configs import default
from faceloss_jax.errors import ConfigError

# arcface_torch's network names → this project's backbones.
NETWORKS = {"r18": "iresnet18", "r34": "iresnet34", "r50": "iresnet50", "r100": "iresnet100"}
NETWORKS["mbf"] = "mobilefacenet"
# arcface_torch's CombinedMarginLoss hard-codes the scale.
SCALE = 64.0


@dataclasses.dataclass(frozen=True)
class ArcfaceTorch:
    """The fields of an arcface_torch config file that define a recipe (theirs by name;
    ``batch_size`` per GPU), and the GPUs of its published run (``gpus``)."""

    source: str  # the arcface_torch config file mirrored
    network: str
    margin_list: tuple[float, float, float]
    num_classes: int
    num_image: int
    num_epoch: int
    warmup_epoch: int
    gpus: int
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    embedding_size: int = 512
    sample_rate: float = 1.0
    fp16: bool = True
    verbose: int = 2000
    val_targets: tuple[str, ...] = ("lfw", "cfp_fp", "agedb_30")


def steps_per_epoch(recipe: ArcfaceTorch, *, gpus: int, per_device_batch: int) -> int:
    """``num_image // total_batch_size``, the epoch of ``train_v2.py`` (the last partial
    batch dropped)."""
    return recipe.num_image // (per_device_batch * gpus)


def parse_variant(variant: str) -> dict[str, int]:
    """``"gpus=8,per_device_batch=128,grad_accum=1"`` (any subset) → integers."""
    valid = ("gpus", "per_device_batch", "grad_accum")
    arguments = {}
    for part in filter(None, variant.split(",")):
        key, _, value = part.partition("=")
        if key.strip() not in valid or not value.strip().isdigit() or int(value) < 1:
            raise ConfigError(
                f"unknown recipe variant {part!r}; valid: {', '.join(f'{k}=N' for k in valid)} "
                "(positive integers), e.g. ':gpus=1'"
            )
        arguments[key.strip()] = int(value)
    return arguments


def _loss(recipe: ArcfaceTorch) -> ml_collections.ConfigDict:
    """ArcFace for ``margin_list = (1, m2, 0)``, CosFace for ``(1, 0, m3)``."""
    m1, m2, m3 = recipe.margin_list
    if m1 == 1.0 and m3 == 0.0:
        loss = default.loss_config("arcface", scale=SCALE, margin=m2, straight_through=True)
    elif m1 == 1.0 and m2 == 0.0:
        loss = default.loss_config("cosface", scale=SCALE, margin=m3)
    else:
        raise ConfigError(f"{recipe.source}: no recipe loss for margin_list {recipe.margin_list}")
    loss.sample_rate = recipe.sample_rate
    return loss


def get_config(recipe: ArcfaceTorch, variant: str = "") -> ml_collections.ConfigDict:
    """The config of ``recipe`` on ``recordio`` (``--config.dataset.path=DIR``).

    Args:
      recipe: arcface_torch's values.
      variant: ``gpus=N``, ``per_device_batch=B``, ``grad_accum=K`` (comma-separated;
        defaults: the published run's GPUs, its ``batch_size``, 1).

    Returns:
      The config; ``config.recipe`` records the derivation (read by ``--describe``).
    """
    arguments = parse_variant(variant)
    gpus = arguments.get("gpus", recipe.gpus)
    per_device_batch = arguments.get("per_device_batch", recipe.batch_size)
    epoch = steps_per_epoch(recipe, gpus=gpus, per_device_batch=per_device_batch)
    config = default.get_config("face,source=recordio")
    config.model.name = NETWORKS[recipe.network]
    config.model.embedding_dim = recipe.embedding_size
    config.loss = _loss(recipe)
    config.optimizer.update(
        name="sgd",
        learning_rate=recipe.lr,
        momentum=recipe.momentum,
        weight_decay=recipe.weight_decay,
        decay_all=True,
        grad_clip_norm=5.0,
        clip_scope="backbone",
        grad_accum_steps=arguments.get("grad_accum", 1),
        grad_accum_reduction="sum",
        schedule="polynomial",
        power=1.0,
        warmup_steps=epoch * recipe.warmup_epoch,
    )
    config.half_precision = recipe.fp16
    config.batch_size = per_device_batch * gpus
    # Whole updates: with grad_accum=K, a last partial accumulation is dropped.
    accumulate = config.optimizer.grad_accum_steps
    config.num_train_steps = epoch * recipe.num_epoch // accumulate * accumulate
    config.eval_every_steps = recipe.verbose
    config.checkpoint_every_steps = epoch  # arcface_torch saves once an epoch
    config.log_every_steps = 10  # its ``frequent``
    config.eval.val_targets = recipe.val_targets
    config.recipe = ml_collections.ConfigDict(
        {
            "mirrors": f"arcface_torch/configs/{recipe.source}.py",
            "num_image": recipe.num_image,
            "num_classes": recipe.num_classes,
            "num_epochs": recipe.num_epoch,
            "warmup_epochs": recipe.warmup_epoch,
            "devices": gpus,
            "per_device_batch": per_device_batch,
            "steps_per_epoch": epoch,
        }
    )
    return config
