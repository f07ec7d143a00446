r"""Forward + backward time and peak memory of the angular heads at 10k–1M classes.

For each loss in --losses, C in --classes and B in --batches (d = --dim), one run
measures the same head (mean loss, gradients w.r.t. the embeddings and W) as

  dense    faceloss_jax with ``chunk_size=None``: the B×C logits at once;
  chunked  ``chunk_size=--chunk_size``: W streamed in blocks under a custom_vjp;
  sharded  W's columns split over --shards devices under ``jax.shard_map`` with
           ``class_axis_name`` (8 host CPU devices on a CPU), each shard chunked too;
  bf16     the chunked head with bfloat16 embeddings and W (at --bf16_classes);
  pytorch  the dense head in plain PyTorch (experiments/bench_heads_torch.py), when
           PyTorch is installed (the ``benchmarks`` extra), same CPU and threads.

Each configuration runs in a fresh subprocess. Time: median over up to --repeats
calls (fewer once --time_budget_s is spent; at least one) of the compiled
``jit(value_and_grad)``, after compilation and one warm-up call. Memory: XLA's
``compiled.memory_analysis()`` (argument + output + temp bytes, per device for the
sharded head), and the subprocess's peak resident memory (Linux VmHWM) during the
calls, minus its resident memory before the inputs existed. Both are compared with
W + dW, the memory any head needs. The heads that hold the logits (JAX dense,
PyTorch) are only run up to C = --dense_max_classes; above it the dense head is
compiled for its memory estimate and not timed.

    python experiments/bench_heads.py                        # the full table
    python experiments/bench_heads.py --classes=10000,100000 --batches=256
    python experiments/bench_heads.py --classes=1000000 --batches=256 \
        --bf16_classes=1000000 --peak_tflops=989             # on a GPU: % of peak

The table is printed and written as Markdown to --out.
"""

import functools
import importlib.util
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from typing import Callable

if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    # Before jax is imported: the CPU platform then offers 8 devices for the sharded head.
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    ).strip()

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from faceloss_jax import losses

_LOSSES = flags.DEFINE_list("losses", ["arcface"], "Heads measured at every C and B.")
_EXTRA_LOSSES = flags.DEFINE_list(
    "extra_losses", ["cosface"], "Heads measured only where PyTorch runs (C ≤ --dense_max_classes)."
)
_CLASSES = flags.DEFINE_list("classes", ["10000", "100000", "1000000"], "Numbers of classes C.")
_BATCHES = flags.DEFINE_list("batches", ["256", "512"], "Batch sizes B.")
_DIM = flags.DEFINE_integer("dim", 512, "Embedding dimension d.")
_CHUNK = flags.DEFINE_integer(
    "chunk_size", 2048, "Classes per block of the chunked heads (CPU: B×chunk floats in cache)."
)
_SHARDS = flags.DEFINE_integer("shards", 8, "Devices the class-sharded head splits W over.")
_SHARD_CHUNKED = flags.DEFINE_bool(
    "shard_chunked", True, "Chunk each shard too (where it has more than --chunk_size classes)."
)
_BF16_CLASSES = flags.DEFINE_list(
    "bf16_classes", ["1000000"], "C at which the chunked head also runs in bfloat16."
)
_BF16_BATCHES = flags.DEFINE_list("bf16_batches", ["256"], "B of those bfloat16 runs.")
_DENSE_MAX = flags.DEFINE_integer(
    "dense_max_classes",
    100000,
    "Largest C at which JAX dense and PyTorch are timed (above: dense compiled only).",
)
_TORCH = flags.DEFINE_bool("torch", True, "Add the PyTorch reference if torch is installed.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed calls per configuration (median).")
_BUDGET = flags.DEFINE_float(
    "time_budget_s", 30.0, "Stop repeating once the timed calls took this long."
)
_PEAK_TFLOPS = flags.DEFINE_float(
    "peak_tflops", None, "The device's matmul peak (TFLOP/s): adds a % of peak column."
)
_OUT = flags.DEFINE_string(
    "out",
    os.path.join(os.path.dirname(__file__), "results", "bench_heads.md"),
    "Markdown file to write the table to ('' to skip).",
)
_WORKER_TIMEOUT = flags.DEFINE_float(
    "worker_timeout_s", 600.0, "Give up on a configuration after this long (its row says so)."
)
_WORKER = flags.DEFINE_string("worker", None, "Internal: measure one configuration (JSON).")

_HPARAMS = {"arcface": {"scale": 64.0, "margin": 0.5}, "cosface": {"scale": 64.0, "margin": 0.35}}
_AXIS = "classes"
_MIB = 2**20


# ----------------------------------------------------------------------------------
# One configuration, in a worker subprocess.
# ----------------------------------------------------------------------------------


def _report(result: dict) -> None:
    """Hands ``result`` to the parent process, which keeps the last one."""
    print("RESULT " + json.dumps(result), flush=True)


def _rss_bytes(field: str) -> int:
    """VmRSS or VmHWM (peak) of this process, in bytes."""
    with open("/proc/self/status", encoding="utf-8") as f:
        line = next(line for line in f if line.startswith(field + ":"))
    return int(line.split()[1]) * 1024


def _reset_peak_rss() -> None:
    """Makes VmHWM restart from the current resident size (Linux ≥ 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="utf-8") as f:
            f.write("5")
    except OSError:
        pass  # VmHWM then also covers the creation of the inputs.


def _median_time(call: Callable[[], object], repeats: int, budget_s: float) -> dict:
    """Median seconds of ``call`` over the timed calls that follow one warm-up call."""
    call()
    times = []
    while len(times) < repeats and sum(times) < budget_s:
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return {"time_s": statistics.median(times), "repeats": len(times)}


def _objective(spec: dict, mesh: Mesh | None) -> Callable:
    """Mean loss of (x, w, y) in the layout ``spec["head"]``."""
    chunk = None if spec["head"] == "dense" else spec["chunk_size"]
    loss = getattr(losses, spec["loss"])
    hp = _HPARAMS[spec["loss"]]
    if spec["head"] == "sharded":
        per_device = jax.shard_map(
            lambda x, w, y: loss(x, w, y, chunk_size=chunk, class_axis_name=_AXIS, **hp),
            mesh=mesh,
            in_specs=(P(), P(None, _AXIS), P()),
            out_specs=P(),
        )
    else:
        per_device = lambda x, w, y: loss(x, w, y, chunk_size=chunk, **hp)
    return lambda x, w, y: per_device(x, w, y).mean()


def _normal(key: jax.Array, like: jax.ShapeDtypeStruct) -> jax.Array:
    """A standard normal array shaped and placed like ``like``, made on its devices."""
    make = lambda k: jax.random.normal(k, like.shape, like.dtype)
    return jax.jit(make, out_shardings=like.sharding)(key)


def _measure_jax(spec: dict) -> dict:
    dtype = jnp.dtype(spec["dtype"])
    mesh, x_sharding, w_sharding = None, None, None
    if spec["head"] == "sharded":
        mesh = Mesh(np.array(jax.devices()[: spec["shards"]]), (_AXIS,))
        x_sharding, w_sharding = NamedSharding(mesh, P()), NamedSharding(mesh, P(None, _AXIS))
    shapes = (
        jax.ShapeDtypeStruct((spec["batch"], spec["dim"]), dtype, sharding=x_sharding),
        jax.ShapeDtypeStruct((spec["dim"], spec["classes"]), dtype, sharding=w_sharding),
        jax.ShapeDtypeStruct((spec["batch"],), jnp.int32, sharding=x_sharding),
    )
    step = jax.jit(jax.value_and_grad(_objective(spec, mesh), argnums=(0, 1)))
    compiled = step.lower(*shapes).compile()
    stats = compiled.memory_analysis()
    result = {
        "xla_peak_bytes": (
            stats.argument_size_in_bytes
            + stats.output_size_in_bytes
            + stats.temp_size_in_bytes
            - stats.alias_size_in_bytes
        ),
        "xla_temp_bytes": stats.temp_size_in_bytes,
    }
    if not spec["time"]:
        return result
    _report(result)  # the memory figures survive a timing that runs out of time
    # Compiled first, so that the compiler's memory is not counted as the head's.
    base_rss = _rss_bytes("VmRSS")
    kx, kw, ky = jax.random.split(jax.random.key(0), 3)
    x, w = _normal(kx, shapes[0]), _normal(kw, shapes[1])
    y = jax.device_put(jax.random.randint(ky, shapes[2].shape, 0, spec["classes"]), x_sharding)
    jax.block_until_ready((x, w, y))
    _reset_peak_rss()
    result |= _median_time(
        lambda: jax.block_until_ready(compiled(x, w, y)), spec["repeats"], spec["time_budget_s"]
    )
    result["rss_peak_bytes"] = _rss_bytes("VmHWM") - base_rss
    return result


def _measure_torch(spec: dict) -> dict:
    import bench_heads_torch  # pylint: disable=import-outside-toplevel

    make = functools.partial(
        bench_heads_torch.make_step, loss=spec["loss"], **_HPARAMS[spec["loss"]]
    )
    make(batch=2, num_classes=4, dim=4)()  # PyTorch's own buffers are not the head's
    base_rss = _rss_bytes("VmRSS")
    step = make(batch=spec["batch"], num_classes=spec["classes"], dim=spec["dim"])
    _reset_peak_rss()
    result = _median_time(step, spec["repeats"], spec["time_budget_s"])
    result["rss_peak_bytes"] = _rss_bytes("VmHWM") - base_rss
    return result


# ----------------------------------------------------------------------------------
# The table, in the parent process.
# ----------------------------------------------------------------------------------


def _matmuls(spec: dict) -> int:
    """B×C×d matmuls the head runs: 3 (logits, dx, dW), or 4 when chunked (recompute)."""
    if spec["head"] == "pytorch" or spec["chunk_size"] is None:
        return 3
    local_classes = spec["classes"] // (spec["shards"] if spec["head"] == "sharded" else 1)
    return 4 if spec["chunk_size"] < local_classes else 3


def _specs(loss: str, classes: int, batch: int, torch_available: bool) -> list[dict]:
    common = {
        "loss": loss,
        "classes": classes,
        "batch": batch,
        "dim": _DIM.value,
        "dtype": "float32",
        "shards": _SHARDS.value,
        "time": True,
        "repeats": _REPEATS.value,
        "time_budget_s": _BUDGET.value,
    }
    small = classes <= _DENSE_MAX.value
    specs = [dict(common, head="dense", chunk_size=None, time=small)]
    if _CHUNK.value < classes:  # otherwise the chunked head is the dense one
        specs.append(dict(common, head="chunked", chunk_size=_CHUNK.value))
        if str(classes) in _BF16_CLASSES.value and str(batch) in _BF16_BATCHES.value:
            specs.append(dict(common, head="chunked", chunk_size=_CHUNK.value, dtype="bfloat16"))
    if jax.device_count() >= _SHARDS.value > 1:
        specs.append(
            dict(common, head="sharded", chunk_size=_CHUNK.value if _SHARD_CHUNKED.value else None)
        )
    if torch_available and small and jax.default_backend() == "cpu":
        specs.append(dict(common, head="pytorch", chunk_size=None))
    return specs


def _run_worker(spec: dict) -> dict:
    """Measures ``spec`` in a fresh Python process (clean peak memory, no shared caches)."""
    error = None
    try:
        proc = subprocess.run(
            [sys.executable, __file__, "--worker=" + json.dumps(spec)],
            capture_output=True,
            timeout=_WORKER_TIMEOUT.value,
            check=False,
        )
        stdout = proc.stdout
        if proc.returncode:
            tail = (proc.stderr.decode(errors="replace").strip().splitlines() or [""])[-1]
            error = f"exit {proc.returncode} {tail[:100]}".strip()
    except subprocess.TimeoutExpired as e:
        stdout, error = e.stdout or b"", f"timed out after {_WORKER_TIMEOUT.value:.0f} s"
    reports = [line for line in stdout.decode().splitlines() if line.startswith("RESULT ")]
    result = json.loads(reports[-1][len("RESULT ") :]) if reports else {}
    return result | ({"error": error} if error else {})


def _w_dw_bytes(spec: dict, *, per_device: bool = False) -> int:
    """Bytes of W plus dW, of one device's shard with ``per_device`` for the sharded head."""
    size = 2 * spec["dim"] * spec["classes"] * jnp.dtype(spec["dtype"]).itemsize
    return size // spec["shards"] if per_device and spec["head"] == "sharded" else size


def _head_name(spec: dict) -> str:
    chunk = f", chunk {spec['chunk_size']}" if _matmuls(spec) == 4 else ""
    if spec["head"] == "sharded":
        return f"sharded ×{spec['shards']}{chunk}"
    return spec["head"] + chunk


def _cells(spec: dict, result: dict, dense_time: float | None) -> list[str]:
    t = result.get("time_s")
    flops = 2 * _matmuls(spec) * spec["batch"] * spec["classes"] * spec["dim"]
    cells = [
        f"{1e3 * t:,.0f} ({result['repeats']})" if t else result.get("error", "not timed"),
        f"{t / dense_time:.2f}" if t and dense_time else "—",
        f"{flops / t / 1e9:,.0f}" if t else "—",
    ]
    if _PEAK_TFLOPS.value:
        cells.append(f"{100 * flops / t / 1e12 / _PEAK_TFLOPS.value:.0f} %" if t else "—")
    if "xla_peak_bytes" in result:
        peak, w_dw = result["xla_peak_bytes"], _w_dw_bytes(spec, per_device=True)
        cells += [
            f"{peak / _MIB:,.0f} ({peak / w_dw:.2f}×)",
            f"{result['xla_temp_bytes'] / _MIB:,.0f}",
        ]
    else:
        cells += ["—", "—"]
    rss = result.get("rss_peak_bytes")
    cells.append(f"{rss / _MIB:,.0f} ({rss / _w_dw_bytes(spec):.2f}×)" if rss else "—")
    return cells


def _row(spec: dict, result: dict, dense_time: float | None) -> str:
    config = [
        spec["loss"],
        f"{spec['classes']:,}",
        str(spec["batch"]),
        spec["dtype"],
        _head_name(spec),
    ]
    return "| " + " | ".join(config + _cells(spec, result, dense_time)) + " |"


def _columns() -> list[str]:
    columns = ["loss", "C", "B", "dtype", "head", "time ms (calls)", "÷ dense", "GFLOP/s"]
    if _PEAK_TFLOPS.value:
        columns.append("% peak")
    return columns + ["XLA peak MiB (÷ W+dW)", "XLA temp MiB", "peak RSS MiB (÷ W+dW)"]


def _header() -> list[str]:
    return ["| " + " | ".join(_columns()) + " |", "|" + "---|" * len(_columns())]


def _targets(measured: dict[tuple, dict]) -> list[str]:
    """The issue's targets, checked on the configurations measured."""
    lines = []
    key = (_LOSSES.value[0], 1_000_000, 256, "float32")
    chunked, dense = measured.get(key + ("chunked",), {}), measured.get(key + ("dense",), {})
    if "xla_peak_bytes" in chunked and "xla_peak_bytes" in dense:
        w_dw = 2 * _DIM.value * 1_000_000 * 4
        ratio = chunked["xla_peak_bytes"] / w_dw
        lines.append(
            f"- Memory, {key[0]} C = 1,000,000, B = 256: chunked XLA peak {ratio:.3f} × (W + dW) "
            f"(target ≤ 1.2: {'met' if ratio <= 1.2 else 'missed'}); dense "
            f"{dense['xla_peak_bytes'] / w_dw:.2f} × (W + dW), its temporaries "
            f"{dense['xla_temp_bytes'] / chunked['xla_temp_bytes']:.0f} × the chunked head's."
        )
    chunk_ratios, torch_ratios = [], []
    for (*config, head), result in measured.items():
        dense_t = measured.get((*config, "dense"), {}).get("time_s")
        if not (dense_t and result.get("time_s")):
            continue
        where = f"{config[0]} C={config[1]:,} B={config[2]}"
        if head == "chunked":
            chunk_ratios.append((result["time_s"] / dense_t, where))
        elif head == "pytorch":
            torch_ratios.append((result["time_s"] / dense_t, where))
    if chunk_ratios:
        (low, _), (high, where) = min(chunk_ratios), max(chunk_ratios)
        lines.append(
            f"- Time, chunked ÷ dense: {low:.2f}–{high:.2f} (worst: {where}; "
            f"target ≤ 1.5: {'met' if high <= 1.5 else 'missed'})."
        )
    if torch_ratios:
        (low, where), (high, _) = min(torch_ratios), max(torch_ratios)
        lines.append(
            f"- Time, PyTorch ÷ JAX dense: {low:.2f}–{high:.2f} (worst: {where}; "
            f"target ≥ 2: {'met' if low >= 2 else 'missed'})."
        )
    return lines


def _configs():
    """(loss, C, B): every size for --losses, the PyTorch-sized ones for --extra_losses."""
    for loss in _LOSSES.value + _EXTRA_LOSSES.value:
        for classes in (int(c) for c in _CLASSES.value):
            if loss in _LOSSES.value or classes <= _DENSE_MAX.value:
                for batch in (int(b) for b in _BATCHES.value):
                    yield loss, classes, batch


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (
        f"{cpu}, {os.cpu_count()} cores, JAX {jax.__version__} on "
        f"{jax.devices()[0].device_kind} ({jax.device_count()} devices)"
    )


def _bench(argv) -> None:
    del argv
    torch_available = _TORCH.value and importlib.util.find_spec("torch") is not None
    loads = [os.getloadavg()[0]]
    started = time.perf_counter()
    lines = _header()
    print("\n".join(lines), flush=True)
    measured = {}
    for loss, classes, batch in _configs():
        for spec in _specs(loss, classes, batch, torch_available):
            result = _run_worker(spec)
            config = (loss, classes, batch, "float32")
            measured[(loss, classes, batch, spec["dtype"], spec["head"])] = result
            lines.append(_row(spec, result, measured[config + ("dense",)].get("time_s")))
            loads.append(os.getloadavg()[0])
            print(lines[-1], flush=True)
    minutes = (time.perf_counter() - started) / 60
    notes = [
        "",
        "GFLOP/s = 2·B·C·d·k / time, k the B×C×d matmuls the head runs: 3 (logits, dx, dW) "
        "for dense and PyTorch, 4 for the chunked heads (the backward recomputes each block's "
        "logits). XLA peak = argument + output + temp bytes of the compiled step (per device "
        "for the sharded head, against that device's W + dW); peak RSS is the whole process "
        "(all devices) minus its size before the inputs existed, against the whole W + dW. "
        "÷ dense = time ÷ the JAX dense head's time at the same loss, C, B.",
        "",
        f"Machine: {_machine()}; 1-minute load average {min(loads):.1f}–{max(loads):.1f} "
        f"during the run (other jobs share the machine when it exceeds the core count); "
        f"{minutes:.1f} min in all.",
        "",
        "Targets:",
        *_targets(measured),
    ]
    print("\n".join(notes))
    if _OUT.value:
        command = "python experiments/bench_heads.py " + " ".join(
            shlex.quote(a) for a in sys.argv[1:]
        )
        with open(_OUT.value, "w", encoding="utf-8") as f:
            f.write(
                "# Angular heads: time and memory\n\n```\n"
                + command.strip()
                + "\n```\n\n"
                + "\n".join(lines + notes)
                + "\n"
            )


def main(argv) -> None:
    if _WORKER.value is None:
        _bench(argv)
        return
    spec = json.loads(_WORKER.value)
    _report(_measure_torch(spec) if spec["head"] == "pytorch" else _measure_jax(spec))


if __name__ == "__main__":
    app.run(main)
