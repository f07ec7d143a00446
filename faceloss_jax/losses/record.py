"""The record of a loss: what training needs beside the pure function.

Each loss module declares its functions and, at its end, its records (``RECORDS``);
``faceloss_jax.train_lib.objectives`` collects them into the table that training reads.
A record's defaults are not written in it: each knob's comes from the signature of the
function that takes it (see ``hyperparameters``), so a record cannot disagree with its
function.

Hooks (state rules, joint terms, schedules, checks) take keyword arguments only and
declare just the ones they use; ``call`` passes them those, by name, from:

* ``config``: the loss config (``config.loss``);
* ``state``: the loss state (a dict of arrays); ``embeddings``, ``weights``, ``labels``:
  the batch (no gradient in state rules); ``axis_name``, ``class_axis_name``: the axes;
* ``embedding_dim``, ``num_classes`` (``init``); ``step`` (``schedule``);
  ``batch_size``, the global batch (``check``; None when not known).
"""

import dataclasses
import inspect
from collections.abc import Callable, Mapping
from typing import Any

import jax

from faceloss_jax.losses import hyperparameters as hp

# What scores a class: none (pair losses), w_jᵀx + b_j (linear), cos θ_j (normalized),
# the best of K sub-centres (subcenter).
CLASSIFIERS = ("none", "linear", "normalized", "subcenter")
# The layouts a loss can run in (config.loss.chunk_size, config.loss.class_sharded,
# and scoring the global batch on every device).
LAYOUTS = frozenset({"chunked", "class_sharded", "data_parallel"})

State = dict[str, jax.Array]


def call(hook: Callable[..., Any], **available: Any) -> Any:
    """``hook`` called with the keywords of ``available`` that it declares.

    Example:
      >>> call(lambda *, config: config + 1, config=1, state=None)
      2
    """
    names = inspect.signature(hook).parameters
    return hook(**{k: v for k, v in available.items() if k in names})


@dataclasses.dataclass(frozen=True)
class StateRule:
    """How a loss's state outside the gradient starts and moves (keyword-only hooks).

    Attributes:
      init: ``(config, embedding_dim, num_classes) -> state``.
      before: ``(config, state, embeddings, weights, labels, axis_name,
        class_axis_name) -> (state, kwargs)``: the state moved by this batch before the
        loss (the official CurricularFace, AdaFace and AdaCos code uses the new value in
        the same step) and the keyword arguments it gives the loss function.
      after: ``(config, state, embeddings, labels, axis_name) -> state``: moved after
        the loss (center-loss centres, the XBM memory).
      held_batches: ``(config) -> int``: steps each global batch is served (offline
        mining trains on a mined batch until the next refresh); None: 1.
    """

    init: Callable[..., State]
    before: Callable[..., tuple[State, dict[str, Any]]] | None = None
    after: Callable[..., State] | None = None
    held_batches: Callable[..., int] | None = None


@dataclasses.dataclass(frozen=True)
class Objective:
    """One loss, as training sees it.

    Attributes:
      fn: the library function: ``fn(embeddings, weights, labels, **kwargs)`` (per
        example) with a classifier, ``fn(embeddings, labels, **kwargs)`` without.
      paper: the reference, as the README's table of losses shows it.
      hyperparameters: the ``config.loss`` fields of the loss, each with its valid range;
        the defaults are read from the signatures when the record is made.
      classifier: one of ``CLASSIFIERS``.
      layouts: the subset of ``LAYOUTS`` the loss supports (dense only: empty);
        "data_parallel" for a pair loss: it mines over the global batch (``axis_name``).
      family: "core" (the README's "The losses") or "successor" (its "Successors of
        ArcFace").
      state: the state rule of a stateful loss.
      auxiliary: ``(config, embeddings, labels, state, axis_name) -> term`` added to the
        mean loss (the joint losses), or None.
      schedule: ``(config, step) -> kwargs`` for ``fn`` that depend on the step
        (L-Softmax's λ), or None.
      needs_key: whether ``fn`` draws at random (the "loss" PRNG stream).
      unit_embeddings: whether ``fn`` sees L2-normalized embeddings (pair losses).
      aliases: other names that select the record (e.g. the function's name).
      check: ``(config, batch_size) -> None`` raising ConfigError for inconsistent
        fields, or None.
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
    check: Callable[..., None] | None = None

    def __post_init__(self):
        if self.classifier not in CLASSIFIERS:
            raise ValueError(f"classifier {self.classifier!r} is not one of {CLASSIFIERS}")
        if not self.layouts <= LAYOUTS:
            raise ValueError(f"unknown layouts {set(self.layouts - LAYOUTS)}; valid: {LAYOUTS}")
        knobs = {k: hp.resolved(k, s, self.fn) for k, s in self.hyperparameters.items()}
        object.__setattr__(self, "hyperparameters", knobs)
