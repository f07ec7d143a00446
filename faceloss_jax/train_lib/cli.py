"""Command-line helpers shared by ``main`` and ``evaluate``: config files and a clear
error for an override of a config key that does not exist."""

import importlib.util
import sys
from collections.abc import Sequence

import ml_collections
from absl import flags, logging

_CONFIG_PREFIX = "--config."


def load_config(spec: str) -> ml_collections.ConfigDict:
    """Calls ``get_config([arg])`` of the file in ``spec = "path.py[:arg]"``."""
    path, _, arg = spec.partition(":")
    module_spec = importlib.util.spec_from_file_location("_experiment_config", path)
    if module_spec is None:
        raise ValueError(f"cannot load the config file {path!r}")
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(arg) if arg else module.get_config()


def unknown_key_error(config: ml_collections.ConfigDict, key: str) -> str | None:
    """A message naming the first unknown part of a dotted ``key`` and the valid keys
    at that level, or None if ``key`` exists in ``config``."""
    node, path = config, []
    for part in key.split("."):
        is_dict = isinstance(node, ml_collections.ConfigDict)
        if not is_dict or part not in node:
            where = "config" + "".join(f".{p}" for p in path)
            valid = ", ".join(sorted(node.keys())) if is_dict else "(none: a leaf)"
            return (
                f"unknown config key '{key}': {where} has no field '{part}'. "
                f"Valid keys of {where}: {valid}"
            )
        node, path = node[part], [*path, part]
    return None


def _override_keys(argv: Sequence[str]) -> list[str]:
    """The dotted keys of the ``--config.<key>[=value]`` arguments."""
    return [a[len(_CONFIG_PREFIX) :].split("=", 1)[0] for a in argv if a.startswith(_CONFIG_PREFIX)]


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with a clear error for an override of an unknown config key
    (ml_collections raises a bare AttributeError with a traceback)."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as error:
        sys.exit(f"FATAL Flags parsing error: {error}")
    except (AttributeError, KeyError) as error:
        specs = [a.split("=", 1)[1] for a in argv if a.startswith("--config=")]
        if specs:
            config = load_config(specs[-1])
            for key in _override_keys(argv):
                if message := unknown_key_error(config, key):
                    sys.exit(f"FATAL Flags parsing error: {message}")
        raise error


def default_to_warnings() -> None:
    """Logs warnings only, unless ``--verbosity`` was given (``--verbosity=0`` shows the
    INFO logs of checkpointing and evaluation), so that the progress bar stays readable."""
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
