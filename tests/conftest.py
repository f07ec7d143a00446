"""Test setup: 8 host CPU devices for the sharded paths, a float64 fixture.

XLA_FLAGS must be set before JAX is imported anywhere, so this runs first.
"""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import pytest  # noqa: E402


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
