"""Hyper-parameters: a valid range and a few words beside a default that lives elsewhere.

A loss's record (``faceloss_jax.losses.record``) lists its knobs as ``HyperParameter``
values. A knob's default is declared once:

* a knob passed to the loss function (``argument``) takes the default of the function's
  keyword of the same name — ``real("m", low=0.0)`` declares a range, not a value;
* a knob read by a state or joint hook takes the default of the library function that
  uses it (``read_by=update_centers``, the keyword ``parameter`` if it is named otherwise);
* a knob only the record knows (a joint weight, a memory size) gives ``default=``.

``check`` turns an out-of-range value into a ``ConfigError`` that names the field, the
value and the valid range, before anything is compiled.
"""

import dataclasses
import inspect
import math
from collections.abc import Callable, Sequence
from typing import Any

from faceloss_jax.errors import ConfigError


class _FromSignature:
    """The default of a knob not resolved yet: it is read from a function's signature."""

    def __repr__(self) -> str:
        return "<from the signature>"


FROM_SIGNATURE = _FromSignature()


@dataclasses.dataclass(frozen=True)
class HyperParameter:
    """One knob of a loss.

    Attributes:
      valid: the valid values, as the error message and ``--describe`` show them.
      accepts: whether a value is valid.
      doc: what the knob does, in a few words.
      default: the value a config gets when it does not set the knob; ``FROM_SIGNATURE``
        until the record reads it (see ``resolved``).
      read_by: for a knob that is not an argument of the loss function, the library
        function whose signature holds its default (None: ``default`` is given).
      parameter: the keyword of ``read_by`` (None: the knob's own name).
      argument: whether it is passed to the loss function as the keyword of the same
        name (False for knobs read by the objective itself, e.g. a joint weight).
    """

    valid: str
    accepts: Callable[[Any], bool]
    doc: str = ""
    default: Any = FROM_SIGNATURE
    read_by: Callable[..., Any] | None = None
    parameter: str | None = None
    argument: bool = True


def _spec(valid, accepts, doc, default, read_by, parameter) -> HyperParameter:
    argument = default is FROM_SIGNATURE and read_by is None
    return HyperParameter(valid, accepts, doc, default, read_by, parameter, argument)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def real(
    doc: str = "",
    *,
    low: float = -math.inf,
    high: float = math.inf,
    low_open: bool = False,
    high_open: bool = False,
    default: Any = FROM_SIGNATURE,
    read_by: Callable[..., Any] | None = None,
    parameter: str | None = None,
) -> HyperParameter:
    """A real number in the interval from ``low`` to ``high`` (closed unless ``*_open``).

    Example:
      >>> real("m", low=0.0, high=math.pi / 2).valid
      '[0, 1.5708]'
    """

    def accepts(value):
        if not _is_number(value) or math.isnan(value):
            return False
        above = value > low if low_open else value >= low
        below = value < high if high_open else value <= high
        return above and below

    opening = "(" if low_open or not math.isfinite(low) else "["
    closing = "]" if math.isfinite(high) and not high_open else ")"
    bounds = f"{opening}{low:g}, {high:g}{closing}".replace("inf", "∞")
    return _spec(bounds, accepts, doc, default, read_by, parameter)


def positive(doc: str = "", **source: Any) -> HyperParameter:
    """A real number > 0 (``source``: ``default``, ``read_by``, ``parameter``)."""
    return real(doc, low=0.0, low_open=True, **source)


def integer(
    doc: str = "",
    *,
    low: int = 1,
    default: Any = FROM_SIGNATURE,
    read_by: Callable[..., Any] | None = None,
    parameter: str | None = None,
) -> HyperParameter:
    """An integer ≥ ``low``."""

    def accepts(value):
        return isinstance(value, int) and not isinstance(value, bool) and value >= low

    return _spec(f"an integer ≥ {low}", accepts, doc, default, read_by, parameter)


def boolean(
    doc: str = "",
    *,
    default: Any = FROM_SIGNATURE,
    read_by: Callable[..., Any] | None = None,
    parameter: str | None = None,
) -> HyperParameter:
    """True or False."""
    return _spec("True or False", lambda v: isinstance(v, bool), doc, default, read_by, parameter)


def choice(
    options: Sequence[str],
    doc: str = "",
    *,
    default: Any = FROM_SIGNATURE,
    read_by: Callable[..., Any] | None = None,
    parameter: str | None = None,
) -> HyperParameter:
    """One of ``options``."""
    valid = "one of " + ", ".join(map(repr, options))
    return _spec(valid, lambda v: v in options, doc, default, read_by, parameter)


def resolved(name: str, spec: HyperParameter, fn: Callable[..., Any]) -> HyperParameter:
    """``spec`` with its default read from the signature it names.

    An argument's default is that of ``fn``'s keyword ``name``; a hook's knob that of
    ``spec.read_by``'s keyword ``spec.parameter or name``. ValueError if that keyword has
    no default, or a default outside the knob's range.

    Example:
      >>> def loss(x, *, margin=0.5): ...
      >>> resolved("margin", real(low=0.0), loss).default
      0.5
    """
    if spec.default is FROM_SIGNATURE:
        source = spec.read_by or fn
        keyword = spec.parameter or name
        parameter = inspect.signature(source).parameters.get(keyword)
        if parameter is None or parameter.default is inspect.Parameter.empty:
            raise ValueError(
                f"hyper-parameter {name!r}: {source.__name__} has no default for {keyword!r}"
            )
        spec = dataclasses.replace(spec, default=parameter.default)
    if not spec.accepts(spec.default):
        raise ValueError(f"hyper-parameter {name!r}: default {spec.default!r} not in {spec.valid}")
    return spec


def check(field: str, value: Any, spec: HyperParameter) -> None:
    """Raises ConfigError naming ``field``, ``value`` and the valid range if ``value`` is
    not accepted.

    Example:
      >>> try:
      ...     check("loss.margin", -1.0, real(low=0.0, high=1.0))
      ... except ConfigError as error:
      ...     print(error)
      config.loss.margin = -1.0 is out of range; valid: [0, 1]
    """
    if not spec.accepts(value):
        raise ConfigError(f"config.{field} = {value!r} is out of range; valid: {spec.valid}")


# Knobs several losses share (each loss's function holds the default).
HALF_PI = math.pi / 2
SCALE = positive("s, the scale of the cosine logits")
ARC_MARGIN = real("m, additive angular margin (radians)", low=0.0, high=HALF_PI)
EASY_MARGIN = boolean("margin only where cos θ > 0 (no fallback past π)")
PAIR_MARGIN = positive("α of the triplet loss / m of the contrastive loss")
USE_BIAS = boolean("a bias b (C,) in the linear classifier", default=True)
