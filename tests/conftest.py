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


def pytest_collection_finish(session):
    """A whole-suite run that collects (nearly) nothing fails instead of passing."""
    whole_suite = all(os.path.isdir(arg) for arg in session.config.args)
    if whole_suite and not session.config.option.keyword and len(session.items) < MIN_TESTS:
        raise RuntimeError(
            f"only {len(session.items)} tests collected; expected at least {MIN_TESTS}"
        )


# Cases of parametrized tests that the measured durations put in the slow tier (each
# 10–20 s of a loaded 2-core run, `--durations=40`, 2026-12-05; the other cases of the
# same tests stay in the fast tier, so every property keeps a fast check).
SLOW_CASES = frozenset(
    {
        "test_scale.py::test_pmap_in_step_gradient_equals_dense[normface-class_sharded_chunked]",
        "test_global_mining.py::test_global_mining_equals_the_single_device_loss_and_gradient"
        "[contrastive]",
        "test_train.py::test_eight_devices_equal_one[xbm-False]",
        "test_train.py::test_eight_devices_equal_one[adaface-True]",
        "test_successors.py::test_matches_numpy_reference[random-elastic-arc]",
    }
)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items):
    for item in items:
        if item.nodeid.split("/")[-1] in SLOW_CASES:
            item.add_marker(pytest.mark.slow)
