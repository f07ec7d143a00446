"""Hyper-parameters with a default and a valid range, and the checks of a config against them.

A loss's record (``objectives.OBJECTIVES``) lists its hyper-parameters as ``HyperParameter``
values; ``check`` turns an out-of-range value into a ``ConfigError`` that names the field,
the value and the valid range, before anything is compiled.
"""

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

from faceloss_jax.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class HyperParameter:
    """One knob of a loss.

    Attributes:
      default: the value a config gets when it does not set the knob.
      valid: the valid values, as the error message and ``--describe`` show them.
      accepts: whether a value is valid.
      doc: what the knob does, in a few words.
      argument: whether it is passed to the loss function as the keyword of the same
        name (False for knobs read by the objective itself, e.g. a joint weight).
    """

    default: Any
    valid: str
    accepts: Callable[[Any], bool]
    doc: str = ""
    argument: bool = True


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def real(
    default: float,
    doc: str = "",
    *,
    low: float = -math.inf,
    high: float = math.inf,
    low_open: bool = False,
    high_open: bool = False,
    argument: bool = True,
) -> HyperParameter:
    """A real number in the interval from ``low`` to ``high`` (closed unless ``*_open``).

    Example:
      >>> real(0.5, low=0.0, high=math.pi / 2).valid
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
    bounds = f"{opening}{low:g}, {high:g}{closing}"
    return HyperParameter(default, bounds.replace("inf", "∞"), accepts, doc, argument)


def positive(default: float, doc: str = "", *, argument: bool = True) -> HyperParameter:
    """A real number > 0."""
    return real(default, doc, low=0.0, low_open=True, argument=argument)


def integer(default: int, doc: str = "", *, low: int = 1, argument: bool = True) -> HyperParameter:
    """An integer ≥ ``low``."""
    return HyperParameter(
        default,
        f"an integer ≥ {low}",
        lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= low,
        doc,
        argument,
    )


def boolean(default: bool, doc: str = "", *, argument: bool = True) -> HyperParameter:
    """True or False."""
    return HyperParameter(default, "True or False", lambda v: isinstance(v, bool), doc, argument)


def choice(
    default: str, options: Sequence[str], doc: str = "", *, argument: bool = True
) -> HyperParameter:
    """One of ``options``."""
    return HyperParameter(
        default, "one of " + ", ".join(map(repr, options)), lambda v: v in options, doc, argument
    )


def check(field: str, value: Any, spec: HyperParameter) -> None:
    """Raises ConfigError naming ``field``, ``value`` and the valid range if ``value`` is
    not accepted.

    Example:
      >>> try:
      ...     check("loss.margin", -1.0, real(0.5, low=0.0, high=1.0))
      ... except ConfigError as error:
      ...     print(error)
      config.loss.margin = -1.0 is out of range; valid: [0, 1]
    """
    if not spec.accepts(value):
        raise ConfigError(f"config.{field} = {value!r} is out of range; valid: {spec.valid}")
