"""The errors a user can cause, in one module that every layer may import.

Each CLI (``main``, ``evaluate``, ``embed``, ``convert``) prints a ``UserError`` as one
``FATAL <kind>: <message>`` line without a traceback (``--verbose`` shows it) and exits
with status 1; anything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """An error the user can fix: the message names the problem and the way out."""

    kind = "error"


class ConfigError(UserError, ValueError):
    """A config value the run cannot use; the message names the field and what is valid."""

    kind = "config error"


class CheckpointMismatchError(ConfigError):
    """A checkpoint whose structure, shapes or dtypes do not fit the config. Nothing is
    restored and nothing is moved: it is the config (or the workdir) that is wrong."""


class DataError(UserError, ValueError):
    """A file of data that cannot be used: a corrupt record or image, a malformed index,
    property, pair list or ``.bin`` (the message names the file and the entry)."""

    kind = "data error"


class CheckpointError(UserError):
    """No usable checkpoint where one is needed (evaluation of a run without one), or a
    run that cannot go on without losing a checkpoint."""

    kind = "checkpoint error"
