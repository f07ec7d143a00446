"""uint8 batches to the devices, normalized in the jitted step: the same model inputs as
the host's float32 path (to the last bit), the same train step, and an iterator that
still resumes exactly."""

import functools

import jax
import numpy as np
import pytest
from test_train import make_step, mesh_of, tiny_config

from faceloss_jax import data
from faceloss_jax.data import config as config_lib
from faceloss_jax.train_lib import train_step


def _iterator(source, config, *, normalize_images: bool, seed: int = 0):
    return data.create_iterator(
        source,
        config,
        global_batch_size=8,
        seed=seed,
        train=True,
        process_index=0,
        process_count=1,
        normalize_images=normalize_images,
    )


def _faces_config(normalization: str):
    config = data.default_config("synthetic")
    config.update(normalization=normalization, read_threads=1, prefetch_buffer_size=8)
    config.augment.crop_padding = 2
    return config


@pytest.mark.parametrize("normalization", sorted(config_lib.NORMALIZATIONS))
def test_uint8_batches_normalized_on_the_device_equal_the_host_path(normalization):
    config = _faces_config(normalization)
    source = data.SyntheticFaces(identities=range(5), samples=range(4), image_size=20)
    host = _iterator(source, config, normalize_images=True)
    device = _iterator(source, config, normalize_images=False)
    on_device = jax.jit(functools.partial(data.normalize, normalization=normalization))
    for _ in range(3):
        expected, raw = next(host), next(device)
        assert raw["image"].dtype == np.uint8
        np.testing.assert_array_equal(raw["label"], expected["label"])
        # XLA multiplies by 1/scale: at most the last bit differs (none for scale 128).
        np.testing.assert_array_max_ulp(np.asarray(on_device(raw["image"])), expected["image"], 1)


def test_uint8_iterator_resumes_exactly():
    config = _faces_config("arcface_torch")
    config.augment.flip = True
    source = data.SyntheticFaces(identities=range(6), samples=range(3), image_size=12)
    iterator = _iterator(source, config, normalize_images=False, seed=3)
    for _ in range(4):  # crosses an epoch boundary (18 records, batches of 8)
        next(iterator)
    state = iterator.get_state()
    expected = [next(iterator) for _ in range(5)]
    restored = _iterator(source, config, normalize_images=False, seed=3)
    restored.set_state(state)
    for want in expected:
        got = next(restored)
        assert got.keys() == want.keys()
        for key in want:
            np.testing.assert_array_equal(got[key], want[key])


@pytest.mark.slow  # 10-20 s of a loaded 2-core run (--durations, 2026-12-05)
def test_train_step_normalizes_uint8_images_as_the_host_does():
    config = tiny_config()
    config.dataset.normalization = "arcface_torch"
    # SGD: Adam's first update is about lr·sign(g), which turns the last-bit differences
    # of a gradient that BatchNorm makes ~0 (the first Dense's bias) into ±lr.
    config.optimizer.name = "sgd"
    mesh = mesh_of(2)
    rng = np.random.default_rng(0)
    raw = {
        "image": rng.integers(0, 256, (16, 8, 8, 1), dtype=np.uint8),
        "label": (np.arange(16) % 8).astype(np.int32),
    }
    host = {**raw, "image": data.normalize(raw["image"], "arcface_torch")}
    results = []
    for batch in (raw, host):
        state, step = make_step(config, mesh)
        state, metrics = step(
            state, train_step.shard_batch(batch, parallelism="shard_map", mesh=mesh)
        )
        results.append(jax.device_get((state.params, metrics["loss"])))
    jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-5, atol=1e-9), *results)
