r"""Training throughput: the train step of faceloss_jax, and the same LeNets++ step in PyTorch.

Measures steps/s (and images/s) of ``faceloss_jax.train_lib.train_step.train_step`` — forward,
backward, loss, metrics and the optimizer update, jitted under ``shard_map`` on all
local devices — for

* LeNets++ (2-D features) with the softmax loss on 28×28×1 MNIST-sized batches;
* iResNet-50 (512-d) with ArcFace on 112×112×3 faces (a small batch on CPU);

and, when PyTorch is installed (``pip install torch``), the same LeNets++ softmax step
in plain PyTorch on the same CPU (same layers, SGD momentum 0.9, weight decay 5e-4 on
weights only) as a reference ratio. Inputs are fixed random arrays, so the numbers
are compute only, not the data pipeline. Each figure is the median over ``--repeats``
timed windows of ``--steps`` steps, after a compiling/warm-up step; the CPU seconds per
step (of all the process's threads) are reported too, as they are less sensitive than
the wall time to other programs sharing the machine.

    python -m experiments.bench_train                      # both models, and PyTorch
    python -m experiments.bench_train --models=lenet_pp --lenet_batch=128
    python -m experiments.bench_train --json=/tmp/bench.json
"""

import json
import os
import platform
import statistics
import time

import jax
import numpy as np
from absl import app, flags

from configs import arcface as arcface_config
from configs import softmax as softmax_config
from faceloss_jax.train_lib import optimizers, run_state, train_step

_MODELS = flags.DEFINE_list("models", ["lenet_pp", "iresnet50"], "Backbones to time.")
_LENET_BATCH = flags.DEFINE_integer("lenet_batch", 64, "Global batch of LeNets++.")
_IRESNET_BATCH = flags.DEFINE_integer("iresnet_batch", 8, "Global batch of iResNet-50.")
_NUM_CLASSES = flags.DEFINE_integer("iresnet_classes", 1000, "Classes of the ArcFace head.")
_STEPS = flags.DEFINE_integer("steps", 10, "Steps per timed window.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed windows (the median is reported).")
_HALF = flags.DEFINE_bool("half_precision", False, "bfloat16 compute for iResNet-50.")
_TORCH = flags.DEFINE_bool("torch", True, "Also time the PyTorch LeNets++ step.")
_JSON = flags.DEFINE_string("json", None, "Write the results to this file too.")


def _time(step_fn, num_steps: int, repeats: int) -> dict:
    """Runs ``step_fn(1)`` (compilation, warm-up), then ``repeats`` windows of
    ``step_fn(num_steps)``; returns the wall time of the first call and, per step, the
    median wall time and the median CPU time of this process (all its threads), which
    a busy machine inflates much less than the wall time."""
    start = time.perf_counter()
    step_fn(1)
    first = time.perf_counter() - start
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        step_fn(num_steps)
        wall.append((time.perf_counter() - start) / num_steps)
        cpu.append((time.process_time() - start_cpu) / num_steps)
    return {"first": first, "wall": statistics.median(wall), "cpu": statistics.median(cpu)}


def _summary(batch_size: int, timing: dict) -> dict:
    return {
        "batch_size": batch_size,
        "first_step_s": round(timing["first"], 2),
        "steps_per_s": round(1 / timing["wall"], 3),
        "images_per_s": round(batch_size / timing["wall"], 1),
        "cpu_s_per_step": round(timing["cpu"], 3),
    }


def time_jax_step(config, *, image_shape, num_classes: int, batch_size: int) -> dict:
    """Times the parallel train step of ``config`` on random images."""
    config.batch_size = batch_size
    config.optimizer.warmup_steps = 0
    num_devices = jax.device_count()
    mesh = jax.make_mesh((num_devices,), (run_state.DATA_AXIS,))
    model = run_state.training_model(config)
    lr_fn = optimizers.create_learning_rate_schedule(config.optimizer, num_train_steps=10**6)
    state = run_state.create_train_state(
        config,
        model,
        jax.random.PRNGKey(0),
        num_classes=num_classes,
        image_shape=image_shape,
        learning_rate_fn=lr_fn,
    )
    specs = run_state.state_partition_specs(state, class_sharded=False)
    state = jax.device_put(
        state, jax.tree.map(lambda s: jax.sharding.NamedSharding(mesh, s), specs)
    )
    step = train_step.create_parallel_train_step(
        model,
        config,
        lr_fn,
        mesh=mesh,
        state_specs=specs,
        parallelism="shard_map",
    )
    rng = np.random.default_rng(0)
    batch = train_step.shard_batch(
        {
            "image": rng.uniform(-1, 1, (batch_size, *image_shape)).astype(np.float32),
            "label": rng.integers(0, num_classes, batch_size).astype(np.int32),
        },
        parallelism="shard_map",
        mesh=mesh,
    )

    def run(num_steps):
        nonlocal state
        for _ in range(num_steps):
            state, metrics = step(state, batch)
        jax.block_until_ready(metrics)

    return _summary(batch_size, _time(run, _STEPS.value, _REPEATS.value))


def time_torch_lenet(batch_size: int, num_classes: int = 7) -> dict | None:
    """The LeNets++ softmax step in plain PyTorch, or None without PyTorch."""
    try:
        import torch
        from torch import nn
    except ImportError:
        return None
    torch.manual_seed(0)
    torch.set_num_threads(os.cpu_count())
    layers, channels = [], 1
    for width in (32, 64, 128):
        for _ in range(2):
            layers += [nn.Conv2d(channels, width, 5, padding=2), nn.PReLU(width)]
            channels = width
        layers.append(nn.MaxPool2d(2))
    net = nn.Sequential(
        *layers, nn.Flatten(), nn.Linear(128 * 3 * 3, 2), nn.PReLU(2), nn.Linear(2, num_classes)
    )
    decay = [p for p in net.parameters() if p.ndim > 1]
    no_decay = [p for p in net.parameters() if p.ndim <= 1]
    optimizer = torch.optim.SGD(
        [{"params": decay, "weight_decay": 5e-4}, {"params": no_decay, "weight_decay": 0.0}],
        lr=0.01,
        momentum=0.9,
    )
    images = torch.rand(batch_size, 1, 28, 28)
    labels = torch.randint(0, num_classes, (batch_size,))

    def run(num_steps):
        for _ in range(num_steps):
            optimizer.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(net(images), labels).backward()
            optimizer.step()

    return {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        **_summary(batch_size, _time(run, _STEPS.value, _REPEATS.value)),
    }


def main(argv):
    del argv
    results = {
        "device": str(jax.devices()[0].device_kind),
        "num_devices": jax.device_count(),
        "platform": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "jax": jax.__version__,
    }
    if "lenet_pp" in _MODELS.value:
        results["lenet_pp_softmax"] = time_jax_step(
            softmax_config.get_config(),
            image_shape=(28, 28, 1),
            num_classes=7,
            batch_size=_LENET_BATCH.value,
        )
        if _TORCH.value and (torch_result := time_torch_lenet(_LENET_BATCH.value)):
            jax_result = results["lenet_pp_softmax"]
            results["torch_lenet_pp_softmax"] = torch_result
            results["jax_over_torch_steps_per_s"] = round(
                jax_result["steps_per_s"] / torch_result["steps_per_s"], 3
            )
            results["torch_over_jax_cpu_s_per_step"] = round(
                torch_result["cpu_s_per_step"] / jax_result["cpu_s_per_step"], 3
            )
    if "iresnet50" in _MODELS.value:
        config = arcface_config.get_config("face")
        config.half_precision = _HALF.value
        results["iresnet50_arcface_112"] = time_jax_step(
            config,
            image_shape=(112, 112, 3),
            num_classes=_NUM_CLASSES.value,
            batch_size=_IRESNET_BATCH.value,
        )
    text = json.dumps(results, indent=2)
    print(text)
    if _JSON.value:
        with open(_JSON.value, "w", encoding="utf-8") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    app.run(main)
