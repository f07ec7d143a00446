"""The training objectives: one record per loss, and the functions derived from the table.

``OBJECTIVES`` maps each ``config.loss.name`` to an ``Objective``: the library function,
its hyper-parameters (default and valid range), its classifier, the layouts it runs in
and, for a loss with state outside the gradient, how that state starts and moves.
Everything else is derived from the table: the loss names, config checks, head
initialization, the state updates, the objective of a step, the predicted class.

Adding a loss is its function in ``faceloss_jax.losses``, one record here and one config
file in ``configs/`` (see the README's "Adding a loss"); ``register`` adds a record from
outside the package (a research script, a test).

The scalar objective of a device's batch is ``mean_i fn(x_i, …)``, plus a weighted
auxiliary term for the joint losses (DeepID2's contrastive, center loss):

* a classifier ``{"weights": W (d, C)}`` (``(d, C, K)`` for sub-centres; plus
  ``"bias"`` (C,) for a linear classifier with ``use_bias``), owned by the train state;
  the pair losses (triplet, pair-level Circle, XBM) have none;
* the loss state (center-loss centres, CurricularFace's t, AdaFace's norm statistics,
  AdaCos's dynamic scale, the XBM memory): a dict of arrays carried explicitly in the
  train state, replicated over the devices, moved from the global batch.
"""

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from faceloss_jax import losses
from faceloss_jax.errors import ConfigError
from faceloss_jax.losses import mining as mining_lib
from faceloss_jax.train_lib import hyperparameters as hp

Params = Mapping[str, jax.Array]
# What scores a class: none (pair losses), w_jᵀx + b_j (linear), cos θ_j (normalized),
# the best of K sub-centres (subcenter).
CLASSIFIERS = ("none", "linear", "normalized", "subcenter")
# The layouts a loss can run in (config.loss.chunk_size, config.loss.class_sharded,
# and scoring the global batch on every device).
LAYOUTS = frozenset({"chunked", "class_sharded", "data_parallel"})
# config.loss fields that choose a layout, not the loss (sample_rate: Partial FC).
LAYOUT_KNOBS = ("chunk_size", "class_sharded", "sample_rate")


@dataclasses.dataclass(frozen=True)
class StateRule:
    """How a loss's state outside the gradient starts and moves.

    Attributes:
      init: ``(config, embedding_dim, num_classes) -> state`` (a dict of arrays).
      before: ``(config, state, x, w, labels, axis_name, class_axis_name) ->
        (state, kwargs)``: the state moved by this batch before the loss (the official
        CurricularFace, AdaFace and AdaCos code uses the new value in the same step)
        and the keyword arguments it gives the loss function; x and w carry no gradient.
      after: ``(config, state, x, labels, axis_name) -> state``: moved after the loss
        (center-loss centres, the XBM memory), x without gradient.
    """

    init: Callable[[ml_collections.ConfigDict, int, int], dict[str, jax.Array]]
    before: Callable[..., tuple[dict[str, jax.Array], dict[str, Any]]] | None = None
    after: Callable[..., dict[str, jax.Array]] | None = None


@dataclasses.dataclass(frozen=True)
class Objective:
    """One loss, as training sees it.

    Attributes:
      fn: the library function: ``fn(embeddings, weights, labels, **kwargs)`` (per
        example) with a classifier, ``fn(embeddings, labels, **kwargs)`` without.
      paper: the reference, as the README's table of losses shows it.
      hyperparameters: the ``config.loss`` fields of the loss, each with its default
        and valid range; those with ``argument=True`` are passed to ``fn``.
      classifier: one of ``CLASSIFIERS``.
      layouts: the subset of ``LAYOUTS`` the loss supports (dense only: empty);
        "data_parallel" for a pair loss: it mines over the global batch (``axis_name``).
      family: "core" (DESIGN.md's losses) or "successor".
      state: the state rule of a stateful loss.
      auxiliary: ``(config, embeddings, labels, state, axis_name) -> term`` added to
        the mean loss (the joint losses), or None.
      schedule: ``(config, step) -> kwargs`` for ``fn`` that depend on the step
        (L-Softmax's λ), or None.
      needs_key: whether ``fn`` draws at random (a PRNG key per device and step).
      unit_embeddings: whether ``fn`` sees L2-normalized embeddings (pair losses).
      aliases: other names that select the record (e.g. the function's name).
      check: ``(config) -> None`` raising ConfigError for inconsistent fields, or None.
    """

    fn: Callable[..., jax.Array]
    paper: str
    hyperparameters: Mapping[str, hp.HyperParameter] = dataclasses.field(default_factory=dict)
    classifier: str = "normalized"
    layouts: frozenset[str] = frozenset({"chunked", "class_sharded"})
    family: str = "core"
    state: StateRule | None = None
    auxiliary: Callable[..., jax.Array] | None = None
    schedule: Callable[..., dict[str, Any]] | None = None
    needs_key: bool = False
    unit_embeddings: bool = False
    aliases: tuple[str, ...] = ()
    check: Callable[[ml_collections.ConfigDict], None] | None = None

    def __post_init__(self):
        if self.classifier not in CLASSIFIERS:
            raise ValueError(f"classifier {self.classifier!r} is not one of {CLASSIFIERS}")
        if not self.layouts <= LAYOUTS:
            raise ValueError(f"unknown layouts {set(self.layouts - LAYOUTS)}; valid: {LAYOUTS}")


# ------------------------------------------------------------------------------------
# The pieces of the records: hyper-parameters, state rules, joint terms.
# ------------------------------------------------------------------------------------

_HALF_PI = math.pi / 2
_SCALE = hp.positive(64.0, "s, the scale of the cosine logits")
_ARC_MARGIN = hp.real(0.5, "m, additive angular margin (radians)", low=0.0, high=_HALF_PI)
_EASY_MARGIN = hp.boolean(False, "margin only where cos θ > 0 (no fallback past π)")
_STRAIGHT_THROUGH = hp.boolean(
    False, "current arcface_torch: no fallback, gradient of s·cos θ_y (see losses.arcface)"
)
_INT_MARGIN = hp.integer(4, "m, the integer angular margin of ψ(θ)")
_USE_BIAS = hp.boolean(True, "a bias b (C,) in the linear classifier", argument=False)
_EMA_ALPHA = hp.real(0.01, "EMA rate of the state", low=0.0, high=1.0, argument=False)
_PAIR_MARGIN = hp.positive(0.2, "α of the triplet loss / m of the contrastive loss")
_MINING = hp.choice("batch_all", losses.MININGS, "in-batch triplet mining")
_LAMBDA = {
    "lambda_base": hp.real(1000.0, "λ at step 0", low=0.0, argument=False),
    "lambda_gamma": hp.real(0.12, "γ of the λ annealing", low=0.0, argument=False),
    "lambda_power": hp.real(1.0, "power of the λ annealing", low=0.0, argument=False),
    "lambda_min": hp.real(5.0, "the floor of λ", low=0.0, argument=False),
}


def _lambda_at_step(config: ml_collections.ConfigDict, step: jax.Array) -> dict[str, Any]:
    """L-Softmax / SphereFace's annealed λ, ``max(λ_min, base·(1 + γ·step)^−power)``."""
    schedule = losses.lambda_schedule(
        config.lambda_base, config.lambda_gamma, config.lambda_power, config.lambda_min
    )
    return {"lambda_": schedule(step)}


def _contrastive_term(config, embeddings, labels, state, axis_name) -> jax.Array:
    del state
    return config.weight * losses.contrastive_loss(
        embeddings, labels, margin=config.margin, axis_name=axis_name
    )


def _center_term(config, embeddings, labels, state, axis_name) -> jax.Array:
    del axis_name  # each device's own examples against the (replicated) centres
    return config.weight * jnp.mean(losses.center_loss(embeddings, state["centers"], labels))


_CENTERS = StateRule(
    init=lambda config, d, num_classes: {"centers": jnp.zeros((num_classes, d))},
    after=lambda config, state, x, labels, axis_name: {
        "centers": losses.update_centers(
            state["centers"], x, labels, alpha=config.alpha, axis_name=axis_name
        )
    },
)


def _curricularface_before(config, state, x, w, labels, axis_name, class_axis_name):
    del class_axis_name
    t = losses.curricularface_update_t(
        state["t"], x, w, labels, alpha=config.alpha, axis_name=axis_name
    )
    return {"t": t}, {"t": t}


def _adaface_before(config, state, x, w, labels, axis_name, class_axis_name):
    del w, labels, class_axis_name
    stats = losses.adaface_update_stats(
        losses.AdaFaceStats(**state), x, alpha=config.alpha, axis_name=axis_name
    )
    return stats._asdict(), {"stats": stats}


def _adacos_init(config, d, num_classes):
    del d
    if not config.dynamic:
        return {}
    return {"scale": jnp.asarray(losses.adacos_fixed_scale(num_classes), jnp.float32)}


def _adacos_before(config, state, x, w, labels, axis_name, class_axis_name):
    if not config.dynamic:
        return state, {}
    scale = losses.adacos_dynamic_scale(
        state["scale"], x, w, labels, axis_name=axis_name, class_axis_name=class_axis_name
    )
    return {"scale": scale}, {"scale": scale}


_ELASTICFACE = {"arc": losses.elasticface_arc, "cos": losses.elasticface_cos}


def elasticface(embeddings, weights, labels, *, variant: str, **kwargs) -> jax.Array:
    """ElasticFace-Arc or -Cos (Boutros et al., CVPR-W 2022), as ``variant`` says."""
    return _ELASTICFACE[variant](embeddings, weights, labels, **kwargs)


def _check_elasticface(config: ml_collections.ConfigDict) -> None:
    if config.plus and config.get("class_sharded"):
        raise ConfigError(
            "config.loss.plus=True (ElasticFace+) ranks the batch's target cosines, which a "
            "class-sharded W cannot: set loss.plus=False or loss.class_sharded=False"
        )


def _check_straight_through(config: ml_collections.ConfigDict) -> None:
    if config.straight_through and config.easy_margin:
        raise ConfigError(
            "config.loss.straight_through=True (arcface_torch) has no easy margin: set "
            "loss.easy_margin=False"
        )


def _check_magface(config: ml_collections.ConfigDict) -> None:
    if not config.lower_norm < config.upper_norm:
        raise ConfigError(
            f"config.loss.lower_norm = {config.lower_norm} must be < config.loss.upper_norm "
            f"= {config.upper_norm}"
        )
    if not config.lower_margin <= config.upper_margin:
        raise ConfigError(
            f"config.loss.lower_margin = {config.lower_margin} must be ≤ "
            f"config.loss.upper_margin = {config.upper_margin}"
        )


def xbm(
    embeddings: jax.Array,
    labels: jax.Array,
    *,
    memory: losses.CrossBatchMemory,
    base: str,
    margin: float,
    mining: str,
    weight: float,
    axis_name: str | None = None,
) -> jax.Array:
    """XBM (Wang et al., CVPR 2020): the in-batch pair loss + weight · the batch against
    the memory of past batches (batch-hard triplets, or all contrastive pairs), mined
    over the global batch under ``axis_name``."""
    pairs = {"margin": margin, "axis_name": axis_name}
    if base == "triplet":
        loss = losses.triplet_margin_loss(embeddings, labels, mining=mining, **pairs)
        cross = losses.xbm_triplet_loss(embeddings, labels, memory, **pairs)
    else:
        loss = losses.contrastive_loss(embeddings, labels, **pairs)
        cross = losses.xbm_contrastive_loss(embeddings, labels, memory, **pairs)
    return loss + weight * cross


_XBM_MEMORY = StateRule(
    init=lambda config, d, num_classes: losses.xbm_init(config.memory_size, d)._asdict(),
    before=lambda config, state, *_: (state, {"memory": losses.CrossBatchMemory(**state)}),
    after=lambda config, state, x, labels, axis_name: losses.xbm_enqueue(
        losses.CrossBatchMemory(**state),
        x,
        labels,
        warmup_steps=config.warmup_steps,
        axis_name=axis_name,
    )._asdict(),
)


def triplet(
    embeddings: jax.Array,
    labels: jax.Array,
    *,
    margin: float,
    mining: str,
    offline_rule: str,
    axis_name: str | None = None,
    negative: jax.Array | None = None,
    selected: jax.Array | None = None,
) -> jax.Array:
    """FaceNet's triplet loss: online in-batch mining (``losses.triplet_margin_loss``),
    or with ``mining="offline"`` the triplets ``(a, p, negative[a, p])`` that
    ``losses.mining.select_triplets`` selected at the last refresh (``selected``)."""
    if mining == "offline":
        del offline_rule  # used at the refresh (_OFFLINE_MINER)
        return mining_lib.mined_triplet_loss(
            embeddings,
            labels,
            negative=negative,
            selected=selected,
            margin=margin,
            axis_name=axis_name,
        )
    return losses.triplet_margin_loss(
        embeddings, labels, margin=margin, mining=mining, axis_name=axis_name
    )


def _check_offline(config: ml_collections.ConfigDict) -> None:
    if config.mining == "offline" and config.subset_size < 2:
        raise ConfigError(
            "config.loss.mining='offline' mines the global batch: set config.loss.subset_size "
            "to config.batch_size"
        )


def _offline_init(config, d, num_classes):
    del d, num_classes
    if config.mining != "offline":
        return {}
    n = config.subset_size
    return {
        "negative": jnp.zeros((n, n), jnp.int32),
        "selected": jnp.zeros((n, n), bool),
        "steps": jnp.zeros((), jnp.int32),
    }


def _offline_before(config, state, x, w, labels, axis_name, class_axis_name):
    """Offline mining's refresh: every ``every_steps`` steps (``steps`` counts them) the
    current embeddings of the global batch select the triplets of the next steps."""
    del w, class_axis_name
    if config.mining != "offline":
        return state, {}
    batch = losses.euclidean.pair_batch(x, labels, axis_name)
    if batch.others.shape[0] != config.subset_size:
        raise ConfigError(
            f"config.loss.subset_size = {config.subset_size} must equal the global batch "
            f"size {batch.others.shape[0]} (offline mining mines the global batch)"
        )
    negative, selected = jax.lax.cond(
        state["steps"] % config.every_steps == 0,
        lambda: mining_lib.select_triplets(
            batch.others, batch.other_labels, margin=config.margin, rule=config.offline_rule
        ),
        lambda: (state["negative"], state["selected"]),
    )
    new_state = {"negative": negative, "selected": selected, "steps": state["steps"] + 1}
    return new_state, {"negative": negative, "selected": selected}


# Offline triplet mining: the triplets of the last refresh, in the (checkpointed) state.
_OFFLINE_MINER = StateRule(init=_offline_init, before=_offline_before)


def held_batches(config: ml_collections.ConfigDict, batch_size: int) -> int:
    """Consecutive steps each global batch is served (``data.create_iterator``'s
    ``repeat_batches``): ``every_steps`` for offline triplet mining, which trains on the
    mined batch until the next refresh; 1 otherwise. ConfigError when offline mining's
    ``subset_size`` is not ``batch_size``."""
    if config.name not in ("triplet", "triplet_margin_loss") or config.mining != "offline":
        return 1
    if config.subset_size != batch_size:
        raise ConfigError(
            f"config.loss.subset_size = {config.subset_size} must equal batch_size = "
            f"{batch_size}: offline mining mines the global batch"
        )
    return config.every_steps


# ------------------------------------------------------------------------------------
# The table.
# ------------------------------------------------------------------------------------

OBJECTIVES: dict[str, Objective] = {
    "softmax": Objective(
        losses.softmax_cross_entropy,
        "softmax cross-entropy (DeepFace, Taigman et al. 2014)",
        {"use_bias": _USE_BIAS},
        classifier="linear",
        aliases=("softmax_cross_entropy",),
    ),
    "contrastive": Objective(
        losses.softmax_cross_entropy,
        "DeepID2: softmax + λ·contrastive (Sun et al., NeurIPS 2014)",
        {
            "use_bias": _USE_BIAS,
            "weight": hp.real(0.05, "λ of the verification term", low=0.0, argument=False),
            "margin": hp.positive(1.0, "m of the different-pair hinge", argument=False),
        },
        classifier="linear",
        auxiliary=_contrastive_term,
        aliases=("deepid2",),
    ),
    "triplet": Objective(
        triplet,
        "triplet loss, online or offline mining (FaceNet, Schroff et al., CVPR 2015)",
        {
            "margin": _PAIR_MARGIN,
            "mining": hp.choice(
                "batch_all", (*losses.MININGS, "offline"), "in-batch online, or offline mining"
            ),
            "offline_rule": hp.choice(
                "semi_hard", mining_lib.RULES, "offline: FaceNet's semi-hard or the hardest"
            ),
            "every_steps": hp.integer(10, "offline: steps between refreshes", argument=False),
            "subset_size": hp.integer(
                0, "offline: images mined, = batch_size (0: online)", low=0, argument=False
            ),
        },
        classifier="none",
        layouts=frozenset({"data_parallel"}),
        state=_OFFLINE_MINER,
        unit_embeddings=True,
        aliases=("triplet_margin_loss",),
        check=_check_offline,
    ),
    "center": Objective(
        losses.softmax_cross_entropy,
        "softmax + λ·center loss (Wen et al., ECCV 2016)",
        {
            "use_bias": _USE_BIAS,
            "weight": hp.real(0.003, "λ of the center term", low=0.0, argument=False),
            "alpha": hp.real(0.5, "α, the centre learning rate", low=0.0, high=1.0, argument=False),
        },
        classifier="linear",
        state=_CENTERS,
        auxiliary=_center_term,
        aliases=("center_loss",),
    ),
    "lsoftmax": Objective(
        losses.large_margin_softmax,
        "L-Softmax (Liu et al., ICML 2016)",
        {"margin": _INT_MARGIN, **_LAMBDA},
        classifier="linear",
        schedule=_lambda_at_step,
        aliases=("large_margin_softmax",),
    ),
    "sphereface": Objective(
        losses.sphereface,
        "A-Softmax / SphereFace (Liu et al., CVPR 2017)",
        {"margin": _INT_MARGIN, **_LAMBDA},
        schedule=_lambda_at_step,
        aliases=("asoftmax",),
    ),
    "normface": Objective(
        losses.normface,
        "NormFace (Wang et al., ACM MM 2017)",
        {"scale": _SCALE},
    ),
    "cosface": Objective(
        losses.cosface,
        "CosFace / AM-Softmax (Wang et al., CVPR 2018)",
        {"scale": _SCALE, "margin": hp.real(0.35, "m, cosine margin", low=0.0, high=2.0)},
        aliases=("amsoftmax",),
    ),
    "arcface": Objective(
        losses.arcface,
        "ArcFace (Deng et al., CVPR 2019)",
        {
            "scale": _SCALE,
            "margin": _ARC_MARGIN,
            "easy_margin": _EASY_MARGIN,
            "straight_through": _STRAIGHT_THROUGH,
        },
        check=_check_straight_through,
    ),
    "combined": Objective(
        losses.combined_margin,
        "combined margin (Deng et al., CVPR 2019, Eq. 4)",
        {
            "scale": _SCALE,
            "m1": hp.real(1.0, "multiplicative angular margin", low=0.0, low_open=True),
            "m2": hp.real(0.5, "additive angular margin (radians)", low=0.0, high=_HALF_PI),
            "m3": hp.real(0.0, "additive cosine margin", low=0.0, high=2.0),
            "straight_through": _STRAIGHT_THROUGH,
        },
        aliases=("combined_margin",),
    ),
    "subcenter_arcface": Objective(
        losses.subcenter_arcface,
        "sub-center ArcFace (Deng et al., ECCV 2020)",
        {
            "scale": _SCALE,
            "margin": _ARC_MARGIN,
            "easy_margin": _EASY_MARGIN,
            "num_subcenters": hp.integer(3, "K sub-centres per class", argument=False),
        },
        classifier="subcenter",
        layouts=frozenset(),
        family="successor",
    ),
    "curricularface": Objective(
        losses.curricularface,
        "CurricularFace (Huang et al., CVPR 2020)",
        {"scale": _SCALE, "margin": _ARC_MARGIN, "alpha": _EMA_ALPHA},
        layouts=frozenset(),
        family="successor",
        state=StateRule(
            init=lambda config, d, c: {"t": jnp.zeros((), jnp.float32)},
            before=_curricularface_before,
        ),
    ),
    "adaface": Objective(
        losses.adaface,
        "AdaFace (Kim et al., CVPR 2022)",
        {
            "scale": _SCALE,
            "margin": hp.real(0.4, "m", low=0.0, high=_HALF_PI),
            "h": hp.real(0.333, "concentration of the normalized norm ẑ", low=0.0),
            "alpha": _EMA_ALPHA,
        },
        family="successor",
        state=StateRule(
            init=lambda config, d, c: losses.adaface_init_stats()._asdict(),
            before=_adaface_before,
        ),
    ),
    "magface": Objective(
        losses.magface,
        "MagFace (Meng et al., CVPR 2021)",
        {
            "scale": _SCALE,
            "lower_norm": hp.positive(10.0, "l_a"),
            "upper_norm": hp.positive(110.0, "u_a"),
            "lower_margin": hp.real(0.45, "l_m (radians)", low=0.0, high=_HALF_PI),
            "upper_margin": hp.real(0.8, "u_m (radians)", low=0.0, high=_HALF_PI),
            "lambda_g": hp.real(35.0, "λ_g, weight of the regularizer g(a)", low=0.0),
            "easy_margin": _EASY_MARGIN,
        },
        family="successor",
        check=_check_magface,
    ),
    "elasticface": Objective(
        elasticface,
        "ElasticFace (Boutros et al., CVPR-W 2022)",
        {
            "variant": hp.choice("arc", tuple(_ELASTICFACE), "ElasticFace-Arc or -Cos"),
            "scale": _SCALE,
            "margin": hp.real(0.5, "mean margin m", low=0.0, high=_HALF_PI),
            "sigma": hp.real(0.05, "σ of the margin", low=0.0),
            "plus": hp.boolean(False, "ElasticFace+: margins sorted by target cosine"),
        },
        family="successor",
        needs_key=True,
        check=_check_elasticface,
    ),
    "adacos": Objective(
        losses.adacos,
        "AdaCos (Zhang et al., CVPR 2019)",
        {"dynamic": hp.boolean(True, "the dynamic scale (else fixed)", argument=False)},
        family="successor",
        state=StateRule(init=_adacos_init, before=_adacos_before),
    ),
    "circle": Objective(
        losses.circle_loss,
        "Circle loss, class level (Sun et al., CVPR 2020)",
        {"scale": hp.positive(256.0, "γ"), "margin": hp.real(0.25, "m", low=0.0, high=1.0)},
        layouts=frozenset(),
        family="successor",
        aliases=("circle_loss",),
    ),
    "circle_pair": Objective(
        losses.circle_pair_loss,
        "Circle loss, pair level (Sun et al., CVPR 2020)",
        {"scale": hp.positive(256.0, "γ"), "margin": hp.real(0.25, "m", low=0.0, high=1.0)},
        classifier="none",
        layouts=frozenset({"data_parallel"}),
        family="successor",
        aliases=("circle_pair_loss",),
    ),
    "xbm": Objective(
        xbm,
        "cross-batch memory (Wang et al., CVPR 2020)",
        {
            "base": hp.choice("triplet", ("triplet", "contrastive"), "the pair loss"),
            "margin": _PAIR_MARGIN,
            "mining": _MINING,
            "memory_size": hp.integer(1024, "M memory slots", argument=False),
            "warmup_steps": hp.integer(
                1000, "steps before the memory fills", low=0, argument=False
            ),
            "weight": hp.real(1.0, "weight of the memory term", low=0.0),
        },
        classifier="none",
        layouts=frozenset({"data_parallel"}),
        family="successor",
        state=_XBM_MEMORY,
        unit_embeddings=True,
    ),
}


def register(name: str, objective: Objective) -> None:
    """Adds ``objective`` under ``name`` (a new loss, from a script or a test)."""
    if name in OBJECTIVES or name in _aliases():
        raise ValueError(f"loss {name!r} is already registered")
    OBJECTIVES[name] = objective


def _aliases() -> dict[str, str]:
    return {alias: name for name, o in OBJECTIVES.items() for alias in o.aliases}


def loss_names(family: str | None = None) -> tuple[str, ...]:
    """The registered losses (of ``family``, "core" or "successor", if given)."""
    return tuple(n for n, o in OBJECTIVES.items() if family in (None, o.family))


def pair_losses() -> tuple[str, ...]:
    """The losses of the embeddings alone, without a classifier."""
    return tuple(n for n, o in OBJECTIVES.items() if o.classifier == "none")


def canonical_name(name: str) -> str:
    """The record key of ``name`` or of its alias; ConfigError naming the valid losses."""
    if name in OBJECTIVES:
        return name
    if name in _aliases():
        return _aliases()[name]
    raise ConfigError(
        f"unknown config.loss.name {name!r}; valid: {', '.join(OBJECTIVES)} "
        f"(aliases: {', '.join(_aliases())})"
    )


def get(name: str) -> Objective:
    """The record of loss ``name`` (or of an alias)."""
    return OBJECTIVES[canonical_name(name)]


def default_hyperparameters(name: str) -> dict[str, Any]:
    """Every hyper-parameter of loss ``name`` at its default."""
    return {key: spec.default for key, spec in get(name).hyperparameters.items()}


def check_loss_config(
    config: ml_collections.ConfigDict,
    *,
    num_classes: int | None = None,
    num_devices: int | None = None,
) -> None:
    """Raises ConfigError for the first field of ``config.loss`` the run cannot use.

    Checks the name, that every field is a hyper-parameter of the loss or a layout knob,
    each hyper-parameter against its range, the loss's own consistency checks, the
    layout knobs against the loss's layouts and, given ``num_classes`` and
    ``num_devices``, that a class-sharded W splits evenly over the devices.
    """
    objective = get(config.name)
    known = {"name", *objective.hyperparameters}
    if objective.classifier != "none":
        known |= set(LAYOUT_KNOBS)
    for key in config.keys():
        if key not in known:
            raise ConfigError(
                f"config.loss.{key} is not a field of loss {config.name!r}; its fields: "
                f"{', '.join(sorted(known))}"
            )
    for key, spec in objective.hyperparameters.items():
        if key not in config:
            raise ConfigError(f"config.loss.{key} of loss {config.name!r} is missing")
        hp.check(f"loss.{key}", config[key], spec)
    if objective.check is not None:
        objective.check(config)
    _check_layout(config, objective, num_classes=num_classes, num_devices=num_devices)


def _check_layout(config, objective, *, num_classes, num_devices) -> None:
    chunk_size, class_sharded = config.get("chunk_size"), config.get("class_sharded", False)
    rate = config.get("sample_rate", 1.0)
    if not hp.real(1.0, low=0.0, high=1.0, low_open=True).accepts(rate):
        raise ConfigError(f"config.loss.sample_rate = {rate!r} is out of range; valid: (0, 1]")
    if chunk_size is not None and (
        isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1
    ):
        raise ConfigError(
            f"config.loss.chunk_size = {chunk_size!r} is out of range; valid: None or an "
            "integer ≥ 1"
        )
    for knob, used, layout in (
        ("chunk_size", chunk_size is not None, "chunked"),
        ("class_sharded", class_sharded, "class_sharded"),
        ("sample_rate", rate < 1.0, "class_sharded"),
    ):
        if used and layout not in objective.layouts:
            raise ConfigError(
                f"loss {config.name!r} does not support config.loss.{knob} (it changes the "
                "non-target logits too, so it is dense only): set loss.chunk_size=None, "
                "loss.class_sharded=False and loss.sample_rate=1.0"
            )
    if class_sharded and num_classes is not None and num_devices is not None:
        try:
            losses.class_block_size(num_classes, num_devices)
        except ValueError as error:
            raise ConfigError(f"config.loss.class_sharded=True: {error}") from None


def has_classifier(config: ml_collections.ConfigDict) -> bool:
    """Whether the loss trains a classifier W (every loss but the pair losses)."""
    return get(config.name).classifier != "none"


def init_head(
    config: ml_collections.ConfigDict, key: jax.Array, *, embedding_dim: int, num_classes: int
) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
    """Initial classifier parameters and loss state.

    Args:
      config: the loss config.
      key: PRNG key for the classifier weights.
      embedding_dim: d, the width of the embeddings.
      num_classes: C, the number of training classes.

    Returns:
      ``(head, loss_state)``: ``head`` has ``"weights"`` (d, C), LeCun-normal
      ((d, C, K) for sub-centres, initialized as a (d, C·K) matrix), and ``"bias"``
      (C,) zeros for a linear classifier with ``use_bias`` (empty for the pair losses);
      ``loss_state`` is the record's ``state.init`` (empty for a stateless loss).
    """
    objective = get(config.name)
    head = {}
    if objective.classifier != "none":
        shape = (embedding_dim, num_classes)
        if objective.classifier == "subcenter":
            shape += (config.num_subcenters,)
        # Fan-in d for every column, sub-centres included.
        weights = nn.initializers.lecun_normal()(key, (embedding_dim, math.prod(shape[1:])))
        head["weights"] = weights.reshape(shape)
    if objective.classifier == "linear" and config.get("use_bias", False):
        head["bias"] = jnp.zeros((num_classes,))
    loss_state = (
        {} if objective.state is None else objective.state.init(config, embedding_dim, num_classes)
    )
    return head, loss_state


def loss_kwargs(config: ml_collections.ConfigDict, step: jax.Array) -> dict[str, Any]:
    """The keyword arguments of the loss function set by the config at ``step``."""
    objective = get(config.name)
    kwargs = {k: config[k] for k, s in objective.hyperparameters.items() if s.argument}
    if objective.schedule is not None:
        kwargs |= objective.schedule(config, step)
    return kwargs


def compute_loss(
    config: ml_collections.ConfigDict,
    head: Params,
    loss_state: Params,
    embeddings: jax.Array,
    labels: jax.Array,
    *,
    step: jax.Array,
    key: jax.Array | None = None,
    axis_name: str | None = None,
    class_axis_name: str | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The scalar objective of one device's batch and the new loss state.

    ``mean_i fn(x_i, …)`` with the record's function and the config's
    hyper-parameters (+ the auxiliary term of a joint loss); the state moved by the
    record's rule from the global batch (over ``axis_name``); ``key`` for a random loss
    (ElasticFace). With ``class_axis_name`` (the Partial FC layout) every device scores
    the global batch against its block of classes and returns its own examples' losses.
    Pair and triplet losses (and DeepID2's contrastive term) mine over the global
    batch under ``axis_name``: each device returns its share, and the mean over the
    devices (the train step's ``pmean``) is the single-device loss of the whole batch.

    Args:
      config: the loss config.
      head: the classifier parameters (see ``init_head``).
      loss_state: the loss state (see ``init_head``).
      embeddings: float32 (B, d) embeddings of this device's examples.
      labels: int (B,) class ids.
      step: the training step (for annealed hyper-parameters).
      key: PRNG key of the random losses, distinct per device.
      axis_name: the data-parallel axis, or None outside a mapped function.
      class_axis_name: the axis over which W's columns are sharded, or None.

    Returns:
      ``(loss, new_loss_state)``.
    """
    objective = get(config.name)
    kwargs = loss_kwargs(config, step)
    x = losses.l2_normalize(embeddings) if objective.unit_embeddings else embeddings
    weights = head.get("weights")
    rule = objective.state or StateRule(init=lambda *_: {})
    if rule.before is not None:
        loss_state, extra = rule.before(
            config,
            loss_state,
            jax.lax.stop_gradient(x),
            None if weights is None else jax.lax.stop_gradient(weights),
            labels,
            axis_name,
            class_axis_name,
        )
        kwargs |= extra
    if objective.needs_key:
        if key is None:
            raise ValueError(f"{config.name} draws at random: pass a PRNG key")
        kwargs["key"] = key
    if objective.classifier == "none":
        if "data_parallel" in objective.layouts:
            kwargs["axis_name"] = axis_name
        loss = jnp.mean(objective.fn(x, labels, **kwargs))
    else:
        bias = head.get("bias")
        rate = config.get("sample_rate", 1.0)
        if rate < 1.0:
            if key is None:
                raise ValueError("loss.sample_rate < 1 samples classes: pass a PRNG key")
            weights, bias, labels = _partial_fc(
                jax.random.fold_in(key, 2), weights, bias, labels, rate, class_axis_name
            )
        if bias is not None:
            kwargs["bias"] = bias
        if "chunked" in objective.layouts:
            kwargs["chunk_size"] = config.chunk_size
        if class_axis_name is not None:
            kwargs.update(axis_name=class_axis_name, class_axis_name=class_axis_name)
        loss = jnp.mean(objective.fn(x, weights, labels, **kwargs))
    if objective.auxiliary is not None:
        loss += objective.auxiliary(config, embeddings, labels, loss_state, axis_name)
    if rule.after is not None:
        loss_state = rule.after(config, loss_state, jax.lax.stop_gradient(x), labels, axis_name)
    return loss, loss_state


def _partial_fc(key, weights, bias, labels, rate, class_axis_name):
    """Partial FC (An et al., ICCVW 2021): the columns of a random ``int(r·C)`` sample of
    the classes (of this device's block when class-sharded), with every positive of the
    global batch, and this device's labels re-indexed into the sample."""
    batch = labels.shape[0]
    if class_axis_name is not None:
        labels = jax.lax.all_gather(labels, class_axis_name, tiled=True)
    classes, sampled = losses.sample_classes(
        key, labels, weights.shape[1], sample_rate=rate, class_axis_name=class_axis_name
    )
    if class_axis_name is not None:
        start = losses.engine.axis_index(class_axis_name) * batch
        sampled = jax.lax.dynamic_slice_in_dim(sampled, start, batch)
    return weights[:, classes], None if bias is None else bias[classes], sampled


def classifier_weights(config: ml_collections.ConfigDict, head: Params) -> jax.Array:
    """The class vectors (d, C) whose scores ``xᵀw_j`` decide the predicted class.

    W itself for a linear classifier (``w_jᵀx + b_j``; the bias is left out), the unit
    columns of W for the others, whose decision is ``argmax_j cos θ_j`` whatever
    ‖w_j‖; for sub-centres the unit sub-centres (d, C, K), a class scoring its best one.
    """
    if get(config.name).classifier == "linear":
        return head["weights"]
    return losses.l2_normalize(head["weights"], axis=0)


def batch_metrics(
    config: ml_collections.ConfigDict, head: Params, embeddings: jax.Array, labels: jax.Array
) -> dict[str, jax.Array]:
    """Training accuracy and ArcFace's L_Intra of a batch (empty without a classifier)."""
    classifier = get(config.name).classifier
    if classifier == "none":
        return {}
    weights = classifier_weights(config, head)
    if classifier == "subcenter":  # each class by its sub-centre closest to x
        per_subcenter = jnp.einsum("bd,dck->bck", embeddings, weights)
        closest = jnp.argmax(per_subcenter, axis=-1)
        scores = jnp.max(per_subcenter, axis=-1)
        own = weights[:, labels, jnp.take_along_axis(closest, labels[:, None], 1)[:, 0]]
        intra = losses.intra_angle(embeddings, own, jnp.arange(labels.shape[0]))
    else:
        scores = embeddings @ weights
        intra = losses.intra_angle(embeddings, head["weights"], labels)
    if classifier == "linear":
        scores += head.get("bias", 0.0)
    correct = jnp.argmax(scores, axis=-1) == labels
    return {"accuracy": jnp.mean(correct), "intra_angle": intra}


def describe(config: ml_collections.ConfigDict) -> str:
    """The loss of ``config``: its paper, classifier, layouts and each knob with its
    value, default and valid range (``python -m faceloss_jax.main ... --describe``)."""
    objective = get(config.name)
    layouts = ", ".join(sorted(objective.layouts)) or "dense only"
    lines = [
        f"loss {config.name!r}: {objective.paper}",
        f"  classifier: {objective.classifier}; layouts: {layouts}",
    ]
    for key, spec in objective.hyperparameters.items():
        value = config.get(key, spec.default)
        lines.append(
            f"  loss.{key} = {value!r}  (default {spec.default!r}; valid: {spec.valid})"
            + (f"  {spec.doc}" if spec.doc else "")
        )
    if objective.classifier != "none":
        lines.append(f"  loss.chunk_size = {config.get('chunk_size')!r}  (None or an integer ≥ 1)")
        lines.append(f"  loss.class_sharded = {config.get('class_sharded')!r}  (True or False)")
    return "\n".join(lines)


def markdown_table() -> str:
    """The README's table of losses, generated from ``OBJECTIVES``."""
    rows = [
        "| `loss.name` | loss | classifier | layouts | state | hyper-parameters |",
        "|---|---|---|---|---|---|",
    ]
    for name, o in OBJECTIVES.items():
        layouts = ", ".join(sorted(o.layouts)) or "dense"
        state = "yes" if o.state is not None else ""
        knobs = ", ".join(f"`{k}`" for k in o.hyperparameters)
        rows.append(f"| `{name}` | {o.paper} | {o.classifier} | {layouts} | {state} | {knobs} |")
    return "\n".join(rows)
