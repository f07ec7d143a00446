r"""One training step of iResNet-50 in JAX (faceloss_jax.models) and in PyTorch
(arcface_torch's iResNet), interleaved on the same CPU.

A step is the forward pass in training mode (batch statistics), the loss
``mean(Σ embedding²)``, the backward pass and an SGD update (momentum 0.9, weight decay
5e-4 on every parameter, arcface_torch's optimizer), float32, 112×112 inputs. The
PyTorch network is written here from arcface_torch's ``backbones/iresnet.py``
(``IBasicBlock``: BN → conv3×3 → BN → PReLU → conv3×3/s → BN, + the shortcut, a
conv1×1/s + BN where the shape changes; stem conv3×3 + BN + PReLU; BN → flatten →
FC(512·7·7 → 512) → BatchNorm1d with its weight frozen at 1). Each round times
``--steps`` JAX steps and then as many PyTorch steps, so load from other programs
slows both alike; the ratio is the median over rounds of PyTorch's time ÷ JAX's.
Also timed, once per round: the forward pass alone and forward + backward (no update)
of each, to say where the time goes.

    python experiments/bench_backbone_step.py --batch=32 --rounds=3 --steps=2

One thread each: ``XLA_FLAGS="--xla_cpu_multi_thread_eigen=false
intra_op_parallelism_threads=1" python experiments/bench_backbone_step.py --torch_threads=1``.
"""

import functools
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags

from faceloss_jax import models

_MODEL = flags.DEFINE_enum("model", "iresnet50", ["iresnet18", "iresnet50", "iresnet100"], "")
_BATCH = flags.DEFINE_integer("batch", 32, "Images per step.")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Interleaved rounds (the median is reported).")
_STEPS = flags.DEFINE_integer("steps", 2, "Steps per side and round.")
_PARTS = flags.DEFINE_bool("parts", True, "Also time forward and forward + backward.")
_TORCH_THREADS = flags.DEFINE_integer(
    "torch_threads", 0, "PyTorch's intra-op threads; 0: one per CPU (XLA:CPU's default)."
)

STAGES = {"iresnet18": (2, 2, 2, 2), "iresnet50": (3, 4, 14, 3), "iresnet100": (3, 13, 30, 3)}
LEARNING_RATE, MOMENTUM, WEIGHT_DECAY = 0.1, 0.9, 5e-4


def torch_iresnet(layers: tuple[int, ...]):
    """arcface_torch's ``IResNet(IBasicBlock, layers)`` at 112×112 (``fc_scale = 7·7``)."""
    import torch
    from torch import nn

    class IBasicBlock(nn.Module):
        def __init__(self, inplanes: int, planes: int, stride: int = 1):
            super().__init__()
            self.bn1 = nn.BatchNorm2d(inplanes, eps=1e-5)
            self.conv1 = nn.Conv2d(inplanes, planes, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(planes, eps=1e-5)
            self.prelu = nn.PReLU(planes)
            self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
            self.bn3 = nn.BatchNorm2d(planes, eps=1e-5)
            self.downsample = None
            if stride != 1 or inplanes != planes:
                self.downsample = nn.Sequential(
                    nn.Conv2d(inplanes, planes, 1, stride, bias=False),
                    nn.BatchNorm2d(planes, eps=1e-5),
                )

        def forward(self, x):
            out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
            return out + (x if self.downsample is None else self.downsample(x))

    class IResNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(64, eps=1e-5)
            self.prelu = nn.PReLU(64)
            blocks, inplanes = [], 64
            for planes, count in zip((64, 128, 256, 512), layers):
                blocks.append(IBasicBlock(inplanes, planes, 2))
                blocks += [IBasicBlock(planes, planes) for _ in range(count - 1)]
                inplanes = planes
            self.layers = nn.Sequential(*blocks)
            self.bn2 = nn.BatchNorm2d(512, eps=1e-5)
            self.fc = nn.Linear(512 * 7 * 7, 512)
            self.features = nn.BatchNorm1d(512, eps=1e-5)
            nn.init.constant_(self.features.weight, 1.0)
            self.features.weight.requires_grad = False

        def forward(self, x):
            x = self.layers(self.prelu(self.bn1(self.conv1(x))))
            return self.features(self.fc(torch.flatten(self.bn2(x), 1)))

    return IResNet()


def jax_step_fns(model_name: str, images: np.ndarray):
    """The jitted JAX step (donating its state), forward and forward+backward, and the
    initial state ``(params, batch_stats, momentum)``."""
    model = models.create_model({"name": model_name})
    variables = jax.jit(model.init, static_argnames="train")(
        jax.random.key(0), images[:1], train=False
    )
    tx = optax.chain(
        optax.add_decayed_weights(WEIGHT_DECAY), optax.sgd(LEARNING_RATE, momentum=MOMENTUM)
    )

    def loss_fn(params, batch_stats, x):
        embeddings, updates = model.apply(
            {"params": params, "batch_stats": batch_stats}, x, train=True, mutable=["batch_stats"]
        )
        return jnp.mean(jnp.sum(jnp.square(embeddings), axis=-1)), updates["batch_stats"]

    @jax.jit
    def forward(params, batch_stats, x):
        return loss_fn(params, batch_stats, x)[0]

    @jax.jit
    def forward_backward(params, batch_stats, x):
        return jax.grad(loss_fn, has_aux=True)(params, batch_stats, x)

    @functools.partial(jax.jit, donate_argnums=0)  # the state, as the train step does
    def step(state, x):
        params, batch_stats, opt_state = state
        grads, batch_stats = jax.grad(loss_fn, has_aux=True)(params, batch_stats, x)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), batch_stats, opt_state

    params = variables["params"]
    state = (params, variables["batch_stats"], tx.init(params))
    return step, forward, forward_backward, state


def _seconds(fn, repeats: int) -> float:
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def main(argv) -> None:
    del argv
    import torch

    torch.set_num_threads(_TORCH_THREADS.value or os.cpu_count())
    batch, steps = _BATCH.value, _STEPS.value
    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, (batch, 112, 112, 3)).astype(np.float32)

    step, forward, forward_backward, state = jax_step_fns(_MODEL.value, images)
    x = jnp.asarray(images)
    start = time.perf_counter()
    state = jax.block_until_ready(step(state, x))  # compiles
    compile_s = time.perf_counter() - start
    if _PARTS.value:  # compile the parts too
        jax.block_until_ready(forward(state[0], state[1], x))
        jax.block_until_ready(forward_backward(state[0], state[1], x))

    torch.manual_seed(0)
    net = torch_iresnet(STAGES[_MODEL.value]).train()
    optimizer = torch.optim.SGD(
        [p for p in net.parameters() if p.requires_grad],
        lr=LEARNING_RATE,
        momentum=MOMENTUM,
        weight_decay=WEIGHT_DECAY,
    )
    tx = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())

    def torch_step():
        optimizer.zero_grad(set_to_none=True)
        net(tx).square().sum(dim=1).mean().backward()
        optimizer.step()

    def torch_forward_backward():
        net.zero_grad(set_to_none=True)
        net(tx).square().sum(dim=1).mean().backward()

    def torch_forward():
        with torch.no_grad():
            net(tx).square().sum(dim=1).mean()

    torch_forward()  # warm-up (allocations)

    def jax_step():
        nonlocal state
        state = jax.block_until_ready(step(state, x))

    rows = {k: [] for k in ("jax", "torch", "jax_fwd", "torch_fwd", "jax_fb", "torch_fb")}
    for _ in range(_ROUNDS.value):
        rows["jax"].append(_seconds(jax_step, steps))
        rows["torch"].append(_seconds(torch_step, steps))
        if _PARTS.value:
            p, s = state[0], state[1]
            rows["jax_fwd"].append(_seconds(lambda: forward(p, s, x).block_until_ready(), 1))
            rows["torch_fwd"].append(_seconds(torch_forward, 1))
            rows["jax_fb"].append(
                _seconds(lambda: jax.block_until_ready(forward_backward(p, s, x)), 1)
            )
            rows["torch_fb"].append(_seconds(torch_forward_backward, 1))
    ratio = statistics.median(t / j for t, j in zip(rows["torch"], rows["jax"]))
    print(
        f"\n{_MODEL.value} 112×112, batch {batch}, float32, {os.cpu_count()} CPUs, "
        f"1-min load average {os.getloadavg()[0]:.1f}; jax {jax.__version__}, torch "
        f"{torch.__version__} ({torch.get_num_threads()} threads); {_ROUNDS.value} rounds of "
        f"{steps} steps each, medians; JAX compile {compile_s:.0f} s\n"
    )
    print("| part | JAX s | PyTorch s | PyTorch ÷ JAX |")
    print("|---|---|---|---|")
    names = {"": "training step (SGD)", "_fb": "forward + backward", "_fwd": "forward"}
    for suffix, name in names.items():
        j, t = rows["jax" + suffix], rows["torch" + suffix]
        if not j:
            continue
        r = statistics.median(b / a for a, b in zip(j, t))
        print(f"| {name} | {statistics.median(j):.2f} | {statistics.median(t):.2f} | {r:.2f} |")
    print(
        f"\nimages/s: JAX {batch / statistics.median(rows['jax']):.1f}, PyTorch "
        f"{batch / statistics.median(rows['torch']):.1f}; step ratio {ratio:.2f}"
    )


if __name__ == "__main__":
    app.run(main)
