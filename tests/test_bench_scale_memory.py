"""experiments/bench_scale_memory.py: its compiled estimate against a real step, and the
chunked head's temporaries free of B×C terms (C = 100k on 8 host devices; LeNets++ as
the backbone, so that a test compiles in seconds)."""

import pytest

from experiments import bench_scale_memory as bench
from tests.conftest import needs_devices

pytestmark = pytest.mark.slow

IMAGE_SHAPE = (28, 28, 1)
BATCH_PER_DEVICE = 16
CHUNK = 2048


def _memory(classes: int) -> dict[str, float]:
    config = bench.step_config(
        "lenet_pp", "chunked", num_devices=8, batch_per_device=BATCH_PER_DEVICE, chunk_size=CHUNK
    )
    mesh = bench.device_mesh("cpu", 8)
    return bench.compiled_memory(config, mesh, num_classes=classes, image_shape=IMAGE_SHAPE)


@needs_devices(8)
def test_compiled_estimate_within_10_percent_of_a_real_step():
    result = bench.check_row(
        "lenet_pp",
        num_classes=100_000,
        image_shape=IMAGE_SHAPE,
        batch_per_device=BATCH_PER_DEVICE,
        chunk_size=CHUNK,
    )
    assert abs(result["step_rss"] / result["estimated_rss"] - 1) <= 0.10, result


@needs_devices(8)
def test_chunked_temporaries_grow_by_gradient_blocks_only():
    """Doubling C adds one (d, C/8) float32 block to the temporaries, the gradient of
    the device's columns (measured 1.03 blocks; 2.00 while the step divided that
    gradient by 8, which XLA:CPU materialized beside it, see
    ``run_state.average_gradients``), and nothing (B, C/8)-shaped: not even half a
    block of the global batch's logits, which the dense head holds several of."""
    small, large = _memory(100_000), _memory(200_000)
    columns = (200_000 - 100_000) // 8
    gradient_block = 512 * columns * 4
    logits_block = 8 * BATCH_PER_DEVICE * columns * 4
    growth = large["temporaries"] - small["temporaries"]
    assert growth <= gradient_block + logits_block / 2, (growth, gradient_block)
    assert large["arguments"] - small["arguments"] >= 2 * gradient_block  # W and momentum
