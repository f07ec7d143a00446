"""Command-line helpers shared by the CLIs (``main``, ``evaluate``, ``embed``,
``convert``): config files, the data source chosen on the command line, and one clear
line, without a traceback, for every error a user can cause (``run``)."""

import functools
import importlib.util
import pathlib
import sys
from collections.abc import Callable, Sequence

import ml_collections
from absl import app, flags, logging

from faceloss_jax import errors
from faceloss_jax.errors import ConfigError

_VERBOSE = flags.DEFINE_bool(
    "verbose", False, "Show the traceback of a user error (otherwise one FATAL line)."
)
# Errors a user causes and can fix, with the word the FATAL line starts with. The
# OS errors are those of a path the user gave (a missing file, a folder for a file).
_OS_ERRORS = {
    FileNotFoundError: "missing file",
    NotADirectoryError: "not a directory",
    IsADirectoryError: "a directory, not a file",
    PermissionError: "permission denied",
}

_CONFIG_PREFIX = "--config."
_SOURCE_FLAG = "--config.dataset.name="


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


def with_source_variant(argv: Sequence[str]) -> list[str]:
    """``argv`` with ``--config.dataset.name=S`` moved into the config's variant.

    The dataset config is locked per source (a mistyped field is an error), so a
    source's own fields (``--config.dataset.path``) exist only once the config is built
    for it: ``--config=configs/arcface.py:face --config.dataset.name=recordio`` becomes
    ``--config=configs/arcface.py:face,source=recordio``.

    Example:
      >>> with_source_variant(["main", "--config=c.py", "--config.dataset.name=synthetic"])
      ['main', '--config=c.py:mnist,source=synthetic', '--config.dataset.name=synthetic']
    """
    sources = [a[len(_SOURCE_FLAG) :] for a in argv if a.startswith(_SOURCE_FLAG)]
    if not sources:
        return list(argv)
    result = []
    for arg in argv:
        if arg.startswith("--config=") and not arg.startswith(_CONFIG_PREFIX):
            path, _, variant = arg[len("--config=") :].partition(":")
            recipe = (variant or "mnist").split(",")[0]
            arg = f"--config={path}:{recipe},source={sources[-1]}"
        result.append(arg)
    return result


def config_package_on_path(spec: str) -> None:
    """Puts the directory above a config file's package first on ``sys.path``.

    A config file imports its package (``from configs import default``), which running
    from the repository root provides; this provides it from anywhere, the package
    installed from a wheel (``python -m faceloss_jax.main
    --config=/path/to/repo/configs/arcface.py``). The outermost folder with an
    ``__init__.py`` is the package (``configs/recipes/x.py`` imports ``configs`` too); a
    config file outside a package changes nothing.
    """
    folder = pathlib.Path(spec.partition(":")[0]).resolve().parent
    if not (folder / "__init__.py").is_file():
        return
    while (folder.parent / "__init__.py").is_file():
        folder = folder.parent
    if str(folder.parent) not in sys.path:
        sys.path.insert(0, str(folder.parent))


def _check_config_file(spec: str) -> None:
    """Exits with one line if the config file of ``spec`` is missing or its
    ``get_config`` fails (config_flags would log a traceback and fail later)."""
    path = spec.partition(":")[0]
    if not pathlib.Path(path).is_file():
        sys.exit(f"FATAL missing file: the config file {path!r} does not exist")
    try:
        load_config(spec)
    except Exception as error:  # noqa: BLE001 -- any failure of the user's config file.
        sys.exit(
            fatal_line(error) or f"FATAL config error: {spec}: {type(error).__name__}: {error}"
        )


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with ``--config.dataset.name`` selecting the data source and
    one clear line (no traceback) for an unknown config key or an invalid config."""
    argv = with_source_variant(argv)
    for spec in [a.split("=", 1)[1] for a in argv if a.startswith("--config=")]:
        config_package_on_path(spec)
        _check_config_file(spec)
    try:
        return flags.FLAGS(argv)
    except flags.Error as error:
        sys.exit(f"FATAL Flags parsing error: {error}")
    except ConfigError as error:
        sys.exit(f"FATAL config error: {error}")
    except (AttributeError, KeyError) as error:
        specs = [a.split("=", 1)[1] for a in argv if a.startswith("--config=")]
        if specs:
            config = load_config(specs[-1])
            for key in _override_keys(argv):
                if message := unknown_key_error(config, key):
                    sys.exit(f"FATAL Flags parsing error: {message}")
        raise error


def fatal_line(error: BaseException) -> str | None:
    """``FATAL <kind>: <message>`` for an error the user caused, else None (a bug)."""
    if isinstance(error, errors.UserError):
        return f"FATAL {error.kind}: {error}"
    for cls, kind in _OS_ERRORS.items():
        if isinstance(error, cls):
            return f"FATAL {kind}: {error}"
    return None


def _one_line_errors(main: Callable[[list[str]], None], argv: list[str]) -> None:
    try:
        main(argv)
    except Exception as error:  # noqa: BLE001 -- re-raised unless it is the user's.
        line = fatal_line(error)
        if line is None or _VERBOSE.value:
            raise
        sys.exit(line)


def run(main: Callable[[list[str]], None]) -> None:
    """``app.run(main)`` with ``parse_flags``, printing each user error (``errors.UserError``,
    a missing file) as one ``FATAL`` line, exit status 1; ``--verbose`` shows the traceback."""
    app.run(functools.partial(_one_line_errors, main), flags_parser=parse_flags)


def default_to_warnings() -> None:
    """Logs warnings only, unless ``--verbosity`` was given (``--verbosity=0`` shows the
    INFO logs of checkpointing and evaluation), so that the progress bar stays readable."""
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)


def config_from_command_line(args: Sequence[str]) -> ml_collections.ConfigDict:
    """The locked config that ``main`` builds from ``--config=...`` and its overrides.

    The same path as the command line (``config_flags`` with ``lock_config=True``, the
    source moved into the variant), for tests and scripts that start runs in-process.

    Example:
      >>> config = config_from_command_line(["--config=configs/arcface.py:face",
      ...                                    "--config.loss.margin=0.4"])
      >>> config.loss.margin, config.model.name
      (0.4, 'iresnet50')
    """
    from ml_collections import config_flags  # noqa: PLC0415 (absl flags at call time)

    argv = with_source_variant(["prog", *args])
    flag_values = flags.FlagValues()
    config_flags.DEFINE_config_file(
        "config", None, "", flag_values=flag_values, lock_config=True, sys_argv=argv
    )
    flag_values(argv)
    return flag_values.config


# The run-level knobs ``--describe`` lists: (dotted key, what it means). Their defaults
# are declared in configs/default.py, the dataset's in faceloss_jax/data/config.py.
RUN_KNOBS = (
    ("num_train_steps", "micro-batches of batch_size; the run's length"),
    ("batch_size", "global: over all devices and processes"),
    ("model.name", "the backbone (faceloss_jax.models)"),
    ("model.embedding_dim", "d"),
    ("dataset.name", "the data source"),
    ("dataset.path", "the data folder (image_folder, recordio)"),
    ("dataset.image_size", "input side in pixels"),
    ("optimizer.name", "sgd | adamw"),
    ("optimizer.learning_rate", "the peak, reached at the end of warmup"),
    ("optimizer.schedule", "constant | cosine | step | polynomial"),
    ("optimizer.warmup_steps", "micro-batches; must be < num_train_steps"),
    ("optimizer.weight_decay", ""),
    ("optimizer.grad_clip_norm", "None: no clipping"),
    ("optimizer.clip_scope", "global | backbone"),
    ("optimizer.grad_accum_steps", "micro-batches per update"),
    ("optimizer.grad_accum_reduction", "mean | sum (arcface_torch)"),
    ("half_precision", "bfloat16 backbone; float32 head and loss"),
    ("log_every_steps", ""),
    ("checkpoint_every_steps", ""),
    ("eval_every_steps", ""),
    ("eval.val_targets", ".bin pair sets evaluated every eval_every_steps"),
    ("init_from", "a converted backbone or a run to start from"),
)


_ABSENT = object()  # a knob the config does not have


def _lookup(config: ml_collections.ConfigDict, key: str) -> object:
    """``config``'s value at the dotted ``key``, or ``_ABSENT`` (a source's own field,
    e.g. ``dataset.path``, exists only for the sources that read it)."""
    for part in key.split("."):
        if part not in config:
            return _ABSENT
        config = config[part]
    return config


def describe_run(config: ml_collections.ConfigDict) -> str:
    """The run's knobs (``RUN_KNOBS``) with their values and where each default is
    declared, and, for a dataset recipe (``configs/recipes/``), how its steps derive.

    Example:
      >>> print(describe_run(config_from_command_line(["--config=configs/arcface.py"])))
      run: (defaults in configs/default.py, dataset.* in faceloss_jax/data/config.py)
        num_train_steps = 300  micro-batches of batch_size; the run's length
      ...
    """
    lines = ["run: (defaults in configs/default.py, dataset.* in faceloss_jax/data/config.py)"]
    for key, doc in RUN_KNOBS:
        if (value := _lookup(config, key)) is not _ABSENT:
            lines.append(f"  {key} = {value!r}" + (f"  {doc}" if doc else ""))
    warmup, steps = config.optimizer.warmup_steps, config.num_train_steps
    lines.append(
        f"  note: optimizer.warmup_steps ({warmup}) must be < num_train_steps ({steps}); "
        "a short run sets both, e.g. --config.num_train_steps=100 "
        "--config.optimizer.warmup_steps=0"
    )
    if "recipe" in config:
        recipe = config.recipe
        lines += [
            f"recipe: {recipe.mirrors}",
            f"  global batch {config.batch_size} = {recipe.per_device_batch} per device × "
            f"{recipe.devices} devices",
            f"  steps per epoch {recipe.steps_per_epoch} = {recipe.num_image} images // "
            f"{recipe.per_device_batch * recipe.devices}",
            f"  num_train_steps {recipe.steps_per_epoch * recipe.num_epochs} = "
            f"{recipe.steps_per_epoch} × {recipe.num_epochs} epochs; warmup_steps "
            f"{recipe.steps_per_epoch * recipe.warmup_epochs} = {recipe.steps_per_epoch} × "
            f"{recipe.warmup_epochs} epochs (unless overridden)",
        ]
    return "\n".join(lines)
