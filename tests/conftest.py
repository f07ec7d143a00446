"""Test setup: 8 host CPU devices for the sharded paths, a float64 fixture.

XLA_FLAGS must be set before JAX is imported anywhere, so this runs first.

``FACELOSS_TEST_XLA_FLAGS`` adds XLA flags after these (CI's second run sets flags that
change the order of reductions, e.g. ``--xla_cpu_multi_thread_eigen=false
--xla_cpu_max_isa=AVX2``, so that a tolerance tuned to one machine's rounding fails
there too). A ``--xla_force_host_platform_device_count`` in it replaces the default 8;
tests that need 8 devices skip (``needs_devices``) when there are fewer.
"""

import os

DEVICES = 8
_extra = os.environ.get("FACELOSS_TEST_XLA_FLAGS", "").split()
_flags = os.environ.get("XLA_FLAGS", "").split()
if not any(f.startswith("--xla_force_host_platform_device_count") for f in _extra):
    _flags.append(f"--xla_force_host_platform_device_count={DEVICES}")
os.environ["XLA_FLAGS"] = " ".join(_flags + _extra)
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import pytest  # noqa: E402
from orbax.checkpoint import type_handlers  # noqa: E402

# Orbax saves a replicated array by slicing it over its replicas (replica-parallel
# writes, a gain on real pods) with a small compiled slice per array and replica: seconds
# per checkpoint over 8 forced host devices. Tests write each array once, from replica 0;
# the files and restored values are the same. (Subprocess runs, as tests/test_multihost.py
# launches, keep orbax's default.)
type_handlers.register_type_handler(
    jax.Array, type_handlers.ArrayHandler(use_replica_parallel=False), override=True
)


def needs_devices(n: int = DEVICES):
    """Skips a test written for ``n`` devices when FACELOSS_TEST_XLA_FLAGS forces fewer."""
    return pytest.mark.skipif(
        jax.device_count() < n,
        reason=f"needs {n} devices, FACELOSS_TEST_XLA_FLAGS forced {jax.device_count()}",
    )


@pytest.fixture
def x64():
    """Runs a test with float64 enabled (for references and check_grads)."""
    with jax.enable_x64(True):
        yield


MIN_TESTS = 20


def _whole_suite(config) -> bool:
    """Whether this run collects whole directories with no ``-k`` filter."""
    return all(os.path.isdir(arg) for arg in config.args) and not config.option.keyword


def pytest_collection_finish(session):
    """A whole-suite run that collects (nearly) nothing fails instead of passing."""
    if _whole_suite(session.config) and len(session.items) < MIN_TESTS:
        raise RuntimeError(
            f"only {len(session.items)} tests collected; expected at least {MIN_TESTS}"
        )


# Cases of parametrized tests that the measured durations put in the slow tier (each
# 10–20 s of a loaded 2-core run, `--durations=40`, 2026-12-05, or 4–6 s of an idle one,
# `--durations=80`, the same day; the other cases of the same tests stay in the fast tier,
# so every property keeps a fast check). A whole-suite run fails if an entry names no
# collected test (a renamed test or case would otherwise silently return to the fast tier).
SLOW_CASES = frozenset(
    {
        "test_scale.py::test_shard_map_equals_dense[arcface-partial_fc]",
        "test_global_mining.py::test_global_mining_equals_the_single_device_loss_and_gradient"
        "[contrastive]",
        "test_global_mining.py::test_global_mining_equals_the_single_device_loss_and_gradient"
        "[triplet_batch_all]",
        "test_global_mining.py::test_global_mining_equals_the_single_device_loss_and_gradient"
        "[circle_pair]",
        "test_train.py::test_eight_devices_equal_one[xbm-False]",
        "test_train.py::test_eight_devices_equal_one[adaface-True]",
        "test_train.py::test_eight_devices_equal_one[circle_pair-False]",
        "test_successors.py::test_matches_numpy_reference[random-elastic-arc]",
        "test_angular.py::test_docstring_examples_run[faceloss_jax.losses.schedules]",
    }
)


def checkerboard(first, second) -> list:
    """The cells of ``first`` × ``second`` (``pytest.param``s) with every other one slow.

    Cell (i, j) is marked ``slow`` when i + j is odd, so every row and every column of a
    grid of at least 2 × 2 keeps a case in the fast tier, and every cell runs in CI. The
    ids are ``<first id>-<second id>``, as two stacked ``parametrize`` would make them.
    """
    return [
        pytest.param(
            *a.values, *b.values, id=f"{a.id}-{b.id}", marks=[pytest.mark.slow] * ((i + j) % 2)
        )
        for i, a in enumerate(first)
        for j, b in enumerate(second)
    ]


def unmatched_slow_cases(nodeids) -> set[str]:
    """The entries of SLOW_CASES that name none of the given test ids."""
    return SLOW_CASES - {nodeid.split("/")[-1] for nodeid in nodeids}


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.nodeid.split("/")[-1] in SLOW_CASES:
            item.add_marker(pytest.mark.slow)
    missing = unmatched_slow_cases(item.nodeid for item in items)
    if _whole_suite(config) and missing:
        raise RuntimeError(f"tests/conftest.SLOW_CASES names no collected test: {sorted(missing)}")
