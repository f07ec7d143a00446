"""The training objectives: the table of the losses' records, and what is derived from it.

Each loss module of ``faceloss_jax.losses`` declares its functions and its records
(``RECORDS``, made of ``losses.record.Objective``); ``OBJECTIVES`` collects them, keyed
by ``config.loss.name``. Everything else is derived from the table: the loss names,
config checks, head initialization, the state updates, the objective of a step, the
predicted class.

Adding a loss is its function and its record in ``faceloss_jax.losses`` and one config
file in ``configs/`` (see the README's "Registries"); ``register`` (or, for the
duration of a block, ``registered``) adds a record from outside the package.

The scalar objective of a device's batch is ``mean_i fn(x_i, …)``, plus a weighted
auxiliary term for the joint losses (DeepID2's contrastive, center loss):

* a classifier ``{"weights": W (d, C)}`` (``(d, C, K)`` for sub-centres; plus
  ``"bias"`` (C,) for a linear classifier with ``use_bias``), owned by the train state;
  the pair losses (triplet, pair-level Circle, XBM) have none;
* the loss state (center-loss centres, CurricularFace's t, AdaFace's norm statistics,
  AdaCos's dynamic scale, the XBM memory): a dict of arrays carried explicitly in the
  train state, replicated over the devices, moved from the global batch.

PRNG streams: a training step draws from one key per device and step (the dropout of
the backbone). ``prng_stream`` derives the others from it, one per purpose, by name:
"loss" (the random losses, ElasticFace's margins) and, from that, "partial_fc" (Partial
FC's class sample).
"""

import contextlib
import math
from collections.abc import Iterator, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from faceloss_jax import losses
from faceloss_jax.errors import ConfigError
from faceloss_jax.losses import (
    adaptive_margins,
    adaptive_scale,
    angular,
    circle,
    curriculum,
    euclidean,
    mining,
    subcenter,
    xbm,
)
from faceloss_jax.losses import hyperparameters as hp
from faceloss_jax.losses.record import CLASSIFIERS, LAYOUTS, Objective, StateRule, call

__all__ = ["CLASSIFIERS", "LAYOUTS", "Objective", "StateRule"]

Params = Mapping[str, jax.Array]
# config.loss fields that choose a layout, not the loss (sample_rate: Partial FC).
LAYOUT_KNOBS = ("chunk_size", "class_sharded", "sample_rate")
# The PRNG streams of a step: each folds its number into the key it derives from.
_PRNG_STREAMS = {"loss": 1, "partial_fc": 2}


def prng_stream(key: jax.Array, purpose: str) -> jax.Array:
    """The key of ``purpose`` ("loss": from the step's key; "partial_fc": from the
    loss's key), one stream per purpose."""
    return jax.random.fold_in(key, _PRNG_STREAMS[purpose])


_RECORDS = {
    **angular.RECORDS,
    **euclidean.RECORDS,
    **mining.RECORDS,
    **subcenter.RECORDS,
    **curriculum.RECORDS,
    **adaptive_margins.RECORDS,
    **adaptive_scale.RECORDS,
    **circle.RECORDS,
    **xbm.RECORDS,
}
# The table in the README's order: the baseline and the Euclidean losses, the angular
# family, then the successors.
OBJECTIVES: dict[str, Objective] = {
    **{name: _RECORDS[name] for name in ("softmax", "contrastive", "triplet", "center")},
    **_RECORDS,
}


def register(name: str, objective: Objective) -> None:
    """Adds ``objective`` under ``name`` (a new loss, from a script or a test)."""
    if name in OBJECTIVES or name in _aliases():
        raise ValueError(f"loss {name!r} is already registered")
    OBJECTIVES[name] = objective


@contextlib.contextmanager
def registered(name: str, objective: Objective) -> Iterator[None]:
    """``register`` for the duration of a ``with`` block (a study's own loss), so that the
    table outside the block stays the package's."""
    register(name, objective)
    try:
        yield
    finally:
        del OBJECTIVES[name]


def _aliases() -> dict[str, str]:
    return {alias: name for name, o in OBJECTIVES.items() for alias in o.aliases}


def loss_names(family: str | None = None) -> tuple[str, ...]:
    """The registered losses (of ``family``, "core" or "successor", if given)."""
    return tuple(n for n, o in OBJECTIVES.items() if family in (None, o.family))


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
    batch_size: int | None = None,
) -> None:
    """Raises ConfigError for the first field of ``config.loss`` the run cannot use.

    Checks the name, that every field is a hyper-parameter of the loss or a layout knob,
    each hyper-parameter against its range, the loss's own consistency checks (given
    the global ``batch_size``, offline mining's subset), the layout knobs against the
    loss's layouts and, given ``num_classes`` and ``num_devices``, that a class-sharded
    W splits evenly over the devices.
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
        call(objective.check, config=config, batch_size=batch_size)
    _check_layout(config, objective, num_classes=num_classes, num_devices=num_devices)


def _check_layout(config, objective, *, num_classes, num_devices) -> None:
    chunk_size, class_sharded = config.get("chunk_size"), config.get("class_sharded", False)
    rate = config.get("sample_rate", 1.0)
    if not hp.real(1.0, low=0.0, high=1.0, low_open=True).accepts(rate):
        raise ConfigError(f"config.loss.sample_rate = {rate!r} is out of range; valid: (0, 1]")
    try:
        losses.engine.check_chunk_size(chunk_size)
    except ValueError:
        raise ConfigError(
            f"config.loss.chunk_size = {chunk_size!r} is out of range; valid: None or an "
            "integer ≥ 1"
        ) from None
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
        {}
        if objective.state is None
        else call(
            objective.state.init,
            config=config,
            embedding_dim=embedding_dim,
            num_classes=num_classes,
        )
    )
    return head, loss_state


def held_batches(config: ml_collections.ConfigDict) -> int:
    """Consecutive steps each global batch is served (``data.create_iterator``'s
    ``repeat_batches``), as the loss's state rule says (offline mining holds a mined
    batch until the next refresh); 1 for the other losses."""
    rule = get(config.name).state
    if rule is None or rule.held_batches is None:
        return 1
    return call(rule.held_batches, config=config)


def loss_kwargs(config: ml_collections.ConfigDict, step: jax.Array) -> dict[str, Any]:
    """The keyword arguments of the loss function set by the config at ``step``."""
    objective = get(config.name)
    kwargs = {k: config[k] for k, s in objective.hyperparameters.items() if s.argument}
    if objective.schedule is not None:
        kwargs |= call(objective.schedule, config=config, step=step)
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
    ``key`` is the step's "loss" stream (``prng_stream``).
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
    x = losses.l2_normalize(embeddings) if objective.unit_embeddings else embeddings
    rule = objective.state or StateRule(init=dict)
    kwargs = loss_kwargs(config, step)
    if rule.before is not None:
        weights = head.get("weights")
        loss_state, extra = call(
            rule.before,
            config=config,
            state=loss_state,
            embeddings=jax.lax.stop_gradient(x),
            weights=None if weights is None else jax.lax.stop_gradient(weights),
            labels=labels,
            axis_name=axis_name,
            class_axis_name=class_axis_name,
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
        loss = _classifier_loss(
            objective, config, head, x, labels, kwargs, key=key, class_axis_name=class_axis_name
        )
    # The auxiliary term and the state's rule see the class ids, never Partial FC's
    # re-indexed labels (the centres are indexed by class).
    if objective.auxiliary is not None:
        loss += call(
            objective.auxiliary,
            config=config,
            embeddings=embeddings,
            labels=labels,
            state=loss_state,
            axis_name=axis_name,
        )
    if rule.after is not None:
        loss_state = call(
            rule.after,
            config=config,
            state=loss_state,
            embeddings=jax.lax.stop_gradient(x),
            labels=labels,
            axis_name=axis_name,
        )
    return loss, loss_state


def _classifier_loss(
    objective: Objective,
    config: ml_collections.ConfigDict,
    head: Params,
    x: jax.Array,
    labels: jax.Array,
    kwargs: dict[str, Any],
    *,
    key: jax.Array | None,
    class_axis_name: str | None,
) -> jax.Array:
    """The mean of ``objective.fn(x, W, y, **kwargs)`` in the config's layout: W all of
    the classes (or this device's block with ``class_axis_name``), or Partial FC's sample
    of them with ``loss.sample_rate < 1``; streamed in ``loss.chunk_size`` columns."""
    weights, bias = head["weights"], head.get("bias")
    rate = config.get("sample_rate", 1.0)
    if rate < 1.0:
        if key is None:
            raise ValueError("loss.sample_rate < 1 samples classes: pass a PRNG key")
        weights, bias, labels = _partial_fc(
            prng_stream(key, "partial_fc"), weights, bias, labels, rate, class_axis_name
        )
    kwargs = dict(kwargs)
    if bias is not None:
        kwargs["bias"] = bias
    if "chunked" in objective.layouts:
        kwargs["chunk_size"] = config.chunk_size
    if class_axis_name is not None:
        kwargs.update(axis_name=class_axis_name, class_axis_name=class_axis_name)
    return jnp.mean(objective.fn(x, weights, labels, **kwargs))


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
