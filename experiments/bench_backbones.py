r"""Forward+backward throughput (steps/s) of the backbones on this machine.

For each model, times a jitted training-mode step (embeddings, updated batch statistics
and the gradient of a scalar of the embeddings with respect to every parameter; no
optimizer update) after compiling and a warm-up, and prints a Markdown table:

  python experiments/bench_backbones.py --models=lenet_pp:32,iresnet50:8 --steps=10

Each entry of --models is ``name:batch_size``; the input is the paper's (28×28×1 for
LeNets++, 112×112×3 for the face backbones) unless --image_size is set.
"""

import os
import time

import jax
import jax.numpy as jnp
from absl import app, flags

from faceloss_jax import models

_MODELS = flags.DEFINE_list(
    "models", ["lenet_pp:32", "iresnet50:8"], "Entries name:batch_size to time."
)
_STEPS = flags.DEFINE_integer("steps", 10, "Timed steps per model.")
_WARMUP = flags.DEFINE_integer("warmup", 2, "Untimed steps after compiling.")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Compute dtype.")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 0, "Square input size; 0: the paper's.")


def _train_step(model):
    """A jitted forward+backward pass in training mode."""

    @jax.jit
    def step(variables, images):
        state = {k: v for k, v in variables.items() if k != "params"}

        def objective(params):
            embeddings, updates = model.apply(
                {"params": params, **state}, images, train=True, mutable=["batch_stats"]
            )
            return jnp.mean(jnp.sum(jnp.square(embeddings), axis=-1)), updates

        (loss, updates), grads = jax.value_and_grad(objective, has_aux=True)(variables["params"])
        return loss, updates, grads

    return step


def _time(name: str, batch_size: int) -> dict[str, object]:
    model = models.create_model({"name": name, "dtype": _DTYPE.value})
    height, width, channels = models.input_shape(name)
    if _IMAGE_SIZE.value:
        height = width = _IMAGE_SIZE.value
    images = jax.random.normal(jax.random.key(1), (batch_size, height, width, channels))
    variables = jax.jit(model.init, static_argnames="train")(jax.random.key(0), images, train=False)
    step = _train_step(model)
    start = time.perf_counter()
    compiled = step.lower(variables, images).compile()
    compile_s = time.perf_counter() - start
    for _ in range(_WARMUP.value):
        jax.block_until_ready(compiled(variables, images))
    start = time.perf_counter()
    for _ in range(_STEPS.value):
        jax.block_until_ready(compiled(variables, images))
    step_s = (time.perf_counter() - start) / _STEPS.value
    return {
        "model": name,
        "input": f"{height}×{width}×{channels}",
        "batch": batch_size,
        "dtype": _DTYPE.value,
        "params (M)": f"{models.param_count(variables['params']) / 1e6:.2f}",
        "compile (s)": f"{compile_s:.1f}",
        "ms/step": f"{1e3 * step_s:.1f}",
        "steps/s": f"{1 / step_s:.2f}",
        "images/s": f"{batch_size / step_s:.1f}",
    }


def main(argv):
    del argv
    rows = []
    for entry in _MODELS.value:
        name, _, batch = entry.partition(":")
        if not batch.isdigit():
            raise app.UsageError(f"--models entries are name:batch_size; got {entry!r}")
        rows.append(_time(name, int(batch)))
    device = jax.devices()[0]
    print(
        f"\n{device.platform} ({device.device_kind}), {os.cpu_count()} host CPUs, "
        f"1-min load average {os.getloadavg()[0]:.1f}, jax {jax.__version__}; "
        f"forward+backward, {_STEPS.value} timed steps\n"
    )
    columns = list(rows[0])
    print("| " + " | ".join(columns) + " |")
    print("|" + "|".join("---" for _ in columns) + "|")
    for row in rows:
        print("| " + " | ".join(str(row[c]) for c in columns) + " |")


if __name__ == "__main__":
    app.run(main)
