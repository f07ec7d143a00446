r"""Per-device memory of the whole face-recipe train step at arcface_torch's scale.

For each backbone (iResNet-50/100 at 112×112), number of identities C, device count and
classifier layout, builds the real step — ``train_step.train_step`` under ``shard_map``
(``train_step.parallelize_train_step``), the real ``TrainState`` and optimizer of the face
recipe (``configs/arcface.py:face``: bfloat16 backbone, float32 master weights, head and
loss; SGD momentum 0.9 with weight decay on every parameter; the backbone's gradient
clipped), batch 128 per device — on abstract inputs (``jax.eval_shape`` for the state,
``jax.ShapeDtypeStruct`` with shardings for state and batch), so W is never allocated,
compiles it and reads ``compiled.memory_analysis()``. The peak per device is
arguments + outputs − aliased (the donated state is counted once) + temporaries +
generated code.

Layouts (``config.loss``): data-parallel dense (W replicated, each device scores the
global batch), class-sharded dense (W's columns split over the devices), class-sharded
chunked (``chunk_size``: never the B×C logits), class-sharded Partial FC 0.1
(``sample_rate``), and chunked + Partial FC.

Platforms: ``cpu`` (the default; ``--xla_force_host_platform_device_count`` host devices,
nothing else needed) or ``tpu`` (ahead-of-time compilation for a TPU v5p topology,
``v5p:2x2x2`` for 8 chips, ``v5p:4x4x4`` for 64, without TPU hardware: needs ``libtpu`` of the
installed jax, ``pip install libtpu==<jax's pin>`` or ``jax[tpu]``). The CPU compiler keeps
bfloat16 convolutions' activations in float32 and schedules for a CPU, so its backbone
figures are larger than an accelerator's; the TPU compile is the accelerator estimate.
Each row is compiled in a fresh subprocess (the device count is fixed at start-up);
results are appended to ``--json`` as they come, so an interrupted run keeps its rows
and a rerun skips them.

    python experiments/bench_scale_memory.py                     # the whole grid, CPU
    python experiments/bench_scale_memory.py --models=iresnet50 --grid=8:1M,29M
    python experiments/bench_scale_memory.py --platform=tpu --models=iresnet50 \
        --grid=8:1M --layouts=chunked
    python experiments/bench_scale_memory.py --report_only      # the table from --json
    python experiments/bench_scale_memory.py --check            # one small row, really run

``--check`` runs one small row (``--check_classes`` on 8 host devices, LeNets++ backbone,
batch 16 per device, chunked head) for real and compares the compiled estimate with the
growth of the process's resident memory during the step (the row the test checks).
"""

import functools
import hashlib
import importlib.metadata
import json
import os
import pathlib
import subprocess
import sys
import time
from typing import Any

import numpy as np
from absl import app, flags

_ROOT = pathlib.Path(__file__).resolve().parent.parent
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

_MODELS = flags.DEFINE_list("models", ["iresnet50", "iresnet100"], "Backbones.")
_GRID = flags.DEFINE_string(
    "grid",
    "8:1M,2M,4M,8M,16M,29M;64:10M,29M",
    "Device counts and their numbers of classes: 'devices:C,C;devices:C,...'.",
)
_LAYOUTS = flags.DEFINE_list(
    "layouts",
    ["data_parallel", "sharded", "chunked", "pfc", "chunked_pfc"],
    "Layouts (keys of LAYOUTS).",
)
_BATCH = flags.DEFINE_integer("batch_per_device", 128, "Batch per device (arcface_torch's).")
_CHUNK = flags.DEFINE_integer("chunk_size", 8192, "Classes per block of the chunked head.")
_PLATFORM = flags.DEFINE_enum("platform", "cpu", ["cpu", "tpu"], "Compile for this platform.")
_JSON = flags.DEFINE_string(
    "json", str(_ROOT / "experiments/results/bench_scale_memory.json"), "Rows, appended."
)
_MARKDOWN = flags.DEFINE_string(
    "markdown", str(_ROOT / "experiments/results/bench_scale_memory.md"), "The report."
)
_TIMEOUT = flags.DEFINE_float("timeout_s", 1800.0, "Seconds per compile (subprocess).")
_REPORT_ONLY = flags.DEFINE_bool("report_only", False, "Only write the report from --json.")
_CHECK = flags.DEFINE_bool("check", False, "Run one small row for real (see the docstring).")
_CHECK_CLASSES = flags.DEFINE_integer("check_classes", 100_000, "C of the --check row.")
_WORKER = flags.DEFINE_string("worker", None, "Internal: one row, as JSON.")

GB = 1e9
# config.loss fields of each layout; chunk_size is filled in from --chunk_size.
LAYOUTS = {
    "data_parallel": {"class_sharded": False, "chunked": False, "sample_rate": 1.0},
    "sharded": {"class_sharded": True, "chunked": False, "sample_rate": 1.0},
    "chunked": {"class_sharded": True, "chunked": True, "sample_rate": 1.0},
    "pfc": {"class_sharded": True, "chunked": False, "sample_rate": 0.1},
    "chunked_pfc": {"class_sharded": True, "chunked": True, "sample_rate": 0.1},
}
LAYOUT_NAMES = {
    "data_parallel": "data-parallel dense",
    "sharded": "class-sharded dense",
    "chunked": "class-sharded chunked",
    "pfc": "class-sharded Partial FC 0.1",
    "chunked_pfc": "class-sharded chunked + Partial FC 0.1",
}
# v5p (95 GB of HBM per chip), so that no row is refused for want of memory (libtpu
# refuses to compile a program larger than the chip's HBM).
TPU_TOPOLOGIES = {8: "v5p:2x2x2", 64: "v5p:4x4x4"}
# arcface_torch docs/speed_benchmark.md, "GPU memory cost of different parallel methods
# (GB per GPU), Tesla V100 32GB * 8": iResNet-50, fp16, batch 128 per GPU. The table's
# values are MB (its header says GB); None: "-" (out of memory).
ARCFACE_TORCH_MB = {
    125_000: (7358, 5306, 4868),
    250_000: (9940, 5826, 5004),
    500_000: (14220, 7114, 5202),
    1_000_000: (23708, 9966, 5620),
    1_400_000: (32252, 11178, 6056),
    2_000_000: (None, 13978, 6472),
    4_000_000: (None, 23238, 8284),
    5_500_000: (None, 32188, 9854),
    8_000_000: (None, None, 12310),
    16_000_000: (None, None, 19950),
    29_000_000: (None, None, 32324),
}
# Its columns: Data Parallel, Model Parallel, Partial FC 0.1; our layout each compares to.
ARCFACE_TORCH_COLUMN = {"data_parallel": 0, "sharded": 1, "pfc": 2}
BUDGETS_GB = (16, 32, 80)


def parse_count(text: str) -> int:
    """``"29M"`` → 29_000_000, ``"100k"`` → 100_000, ``"1000"`` → 1000."""
    text = text.strip()
    scale = {"k": 10**3, "M": 10**6}.get(text[-1], 1)
    return int(float(text[:-1] if scale > 1 else text) * scale)


def parse_grid(text: str) -> list[tuple[int, int]]:
    """``"8:1M,2M;64:10M"`` → ``[(8, 1_000_000), (8, 2_000_000), (64, 10_000_000)]``."""
    rows = []
    for group in text.split(";"):
        devices, _, counts = group.partition(":")
        rows += [(int(devices), parse_count(c)) for c in counts.split(",")]
    return rows


def step_config(
    model: str, layout: str, *, num_devices: int, batch_per_device: int, chunk_size: int
) -> Any:
    """The face recipe's config (``configs/arcface.py:face``) in ``layout``."""
    from configs import arcface as arcface_config

    config = arcface_config.get_config("face")
    config.model.name = model
    config.batch_size = batch_per_device * num_devices
    knobs = LAYOUTS[layout]
    config.loss.class_sharded = knobs["class_sharded"]
    config.loss.chunk_size = chunk_size if knobs["chunked"] else None
    config.loss.sample_rate = knobs["sample_rate"]
    return config


def _parallel_step(config, mesh, *, num_classes: int, image_shape: tuple[int, int, int]):
    """The jitted parallel train step, the state's constructor (of a PRNG key), the
    abstract state and its PartitionSpecs."""
    import jax

    from faceloss_jax.train_lib import optimizers, run_state, train_step

    model = run_state.training_model(config)
    lr_fn = optimizers.create_learning_rate_schedule(config.optimizer, num_train_steps=10**6)
    make_state = functools.partial(
        run_state.create_train_state,
        config,
        model,
        num_classes=num_classes,
        image_shape=image_shape,
        learning_rate_fn=lr_fn,
    )
    state = jax.eval_shape(make_state, jax.random.PRNGKey(0))
    specs = run_state.state_partition_specs(state, class_sharded=run_state.is_class_sharded(config))
    step = train_step.create_parallel_train_step(
        model,
        config,
        lr_fn,
        mesh=mesh,
        state_specs=specs,
        parallelism="shard_map",
    )
    return step, make_state, state, specs


def abstract_inputs(config, mesh, *, num_classes: int, image_shape: tuple[int, int, int]):
    """The step and its abstract (state, batch), placed on ``mesh`` as training places them."""
    import jax
    import jax.numpy as jnp
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from faceloss_jax.train_lib import run_state

    step, _, state, specs = _parallel_step(
        config, mesh, num_classes=num_classes, image_shape=image_shape
    )
    state = jax.tree.map(
        lambda s, spec: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=NamedSharding(mesh, spec)),
        state,
        specs,
    )
    rows = NamedSharding(mesh, P(run_state.DATA_AXIS))
    batch = {
        "image": jax.ShapeDtypeStruct(
            (config.batch_size, *image_shape), jnp.float32, sharding=rows
        ),
        "label": jax.ShapeDtypeStruct((config.batch_size,), jnp.int32, sharding=rows),
    }
    return step, state, batch


def compiled_memory(
    config, mesh, *, num_classes: int, image_shape: tuple[int, int, int] = (112, 112, 3)
) -> dict[str, float]:
    """Compiles the step of ``config`` for ``mesh`` and returns its per-device bytes:
    ``arguments``, ``outputs``, ``aliased``, ``temporaries``, ``code`` and ``peak``
    (arguments + outputs − aliased + temporaries + code), with ``compile_s`` and
    ``hlo_sha256`` (of the optimized HLO, so that two compiles of one row that report
    different memory can be told apart from one that changed)."""
    step, state, batch = abstract_inputs(
        config, mesh, num_classes=num_classes, image_shape=image_shape
    )
    start = time.perf_counter()
    compiled = step.lower(state, batch).compile()
    compile_s = time.perf_counter() - start
    stats = compiled.memory_analysis()
    result = {
        "arguments": stats.argument_size_in_bytes,
        "outputs": stats.output_size_in_bytes,
        "aliased": stats.alias_size_in_bytes,
        "temporaries": stats.temp_size_in_bytes,
        "code": stats.generated_code_size_in_bytes,
    }
    result["peak"] = (
        result["arguments"]
        + result["outputs"]
        - result["aliased"]
        + result["temporaries"]
        + result["code"]
    )
    hlo = hashlib.sha256(compiled.as_text().encode()).hexdigest()[:16]
    return result | {"compile_s": round(compile_s, 1), "hlo_sha256": hlo}


def provenance() -> dict[str, str]:
    """What a row was compiled with: the versions of the packages that shape the
    program (the compilers, Flax, optax) and the commit."""
    versions = {}
    for package in ("jax", "jaxlib", "libtpu", "flax", "optax"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            pass
    proc = subprocess.run(
        ["git", "-C", str(_ROOT), "describe", "--always", "--dirty"],
        capture_output=True,
        text=True,
        check=False,
    )
    return versions | ({"commit": proc.stdout.strip()} if proc.returncode == 0 else {})


def _rss_bytes(field: str) -> int:
    """VmRSS or VmHWM (peak) of this process, in bytes."""
    with open("/proc/self/status", encoding="utf-8") as f:
        line = next(line for line in f if line.startswith(field + ":"))
    return int(line.split()[1]) * 1024


def _reset_peak_rss() -> None:
    """Makes VmHWM restart from the current resident size (Linux ≥ 4.0)."""
    with open("/proc/self/clear_refs", "w", encoding="utf-8") as f:
        f.write("5")


def measured_step_memory(
    config, mesh, *, num_classes: int, image_shape: tuple[int, int, int]
) -> dict[str, float]:
    """Runs the step of ``config`` once for real on ``mesh`` (host devices) and returns
    the growth of the process's resident memory during the call (``step_rss``: the
    compiled step, state and batch are already resident, so it is the sum over devices
    of what the step allocates beside them) and the compiled estimate of the same,
    ``estimated_rss``: devices × (temporaries + outputs − aliased)."""
    import jax
    import numpy as np
    from jax.sharding import NamedSharding

    from faceloss_jax.train_lib import train_step

    step, make_state, _, specs = _parallel_step(
        config, mesh, num_classes=num_classes, image_shape=image_shape
    )
    state = jax.jit(
        make_state,
        out_shardings=jax.tree.map(lambda spec: NamedSharding(mesh, spec), specs),
    )(jax.random.PRNGKey(0))
    rng = np.random.default_rng(0)
    batch = train_step.shard_batch(
        {
            "image": rng.uniform(-1, 1, (config.batch_size, *image_shape)).astype(np.float32),
            "label": rng.integers(0, num_classes, config.batch_size).astype(np.int32),
        },
        parallelism="shard_map",
        mesh=mesh,
    )
    compiled = step.lower(state, batch).compile()
    stats = compiled.memory_analysis()
    # The runtime's one-time allocations (thread pools, collectives) come with the first
    # step the process runs: a copy of the state takes them, so the measured call is a
    # second step, on buffers the allocator has not seen.
    spare = jax.tree.map(lambda leaf: leaf.copy(), state)
    jax.block_until_ready(compiled(spare, batch))
    del spare
    jax.block_until_ready((state, batch))
    before = _rss_bytes("VmRSS")
    _reset_peak_rss()
    state, metrics = compiled(state, batch)
    jax.block_until_ready((state, metrics))
    step_rss = _rss_bytes("VmHWM") - before
    estimated = mesh.size * (
        stats.temp_size_in_bytes + stats.output_size_in_bytes - stats.alias_size_in_bytes
    )
    return {"step_rss": step_rss, "estimated_rss": estimated, "loss": float(metrics["loss"])}


def device_mesh(platform: str, num_devices: int):
    """A 1-D data mesh of ``num_devices``: host devices, or the chips of a TPU
    topology (``TPU_TOPOLOGIES``) for ahead-of-time compilation."""
    import jax
    import numpy as np
    from jax.sharding import Mesh

    from faceloss_jax.train_lib import run_state, train_step

    if platform == "tpu":
        from jax.experimental import topologies

        topology = topologies.get_topology_desc(
            platform="tpu", topology_name=TPU_TOPOLOGIES[num_devices]
        )
        return Mesh(np.array(topology.devices), (run_state.DATA_AXIS,))
    return train_step.data_mesh(jax.devices()[:num_devices])


def _worker(spec: dict) -> None:
    config = step_config(
        spec["model"],
        spec["layout"],
        num_devices=spec["devices"],
        batch_per_device=spec["batch_per_device"],
        chunk_size=spec["chunk_size"],
    )
    mesh = device_mesh(spec["platform"], spec["devices"])
    result = compiled_memory(config, mesh, num_classes=spec["classes"])
    print("RESULT " + json.dumps(spec | result | provenance()), flush=True)


def _run_row(spec: dict) -> dict:
    """Compiles one row in a fresh process with ``spec["devices"]`` host devices."""
    env = dict(os.environ)
    if spec["platform"] == "cpu":
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={spec['devices']}"
        env["JAX_PLATFORMS"] = "cpu"
    try:
        proc = subprocess.run(
            [sys.executable, __file__, "--worker=" + json.dumps(spec)],
            capture_output=True,
            timeout=_TIMEOUT.value,
            env=env,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return spec | {"error": f"compile timed out after {_TIMEOUT.value:.0f} s"}
    for line in proc.stdout.decode().splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    tail = (proc.stderr.decode(errors="replace").strip().splitlines() or [""])[-1]
    return spec | {"error": f"exit {proc.returncode}: {tail[:200]}"}


def _key(row: dict) -> tuple:
    """A row's identity: platform, model, devices, classes, layout."""
    return (row["platform"], row["model"], row["devices"], row["classes"], row["layout"])


def _load(path: str) -> list[dict]:
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _count(c: int) -> str:
    return f"{c / 1e6:g}M" if c >= 10**6 else f"{c / 1e3:g}k"


def _out_of_memory(row: dict) -> bool:
    """The TPU compiler refused the program: larger than the chip's HBM."""
    return "RESOURCE_EXHAUSTED" in row.get("error", "")


def _settled(row: dict) -> bool:
    return "error" not in row or _out_of_memory(row)


def _gb(row: dict | None) -> str:
    if row is None:
        return "—"
    if "error" in row:
        return "OOM" if _out_of_memory(row) else "error"
    return f"{row['peak'] / GB:.1f}"


def _arcface_torch(model: str, devices: int, classes: int, layout: str) -> str:
    """arcface_torch's GB per GPU for the same row (iResNet-50 on 8 GPUs), or ""."""
    column = ARCFACE_TORCH_COLUMN.get(layout)
    if model != "iresnet50" or devices != 8 or column is None or classes not in ARCFACE_TORCH_MB:
        return ""
    value = ARCFACE_TORCH_MB[classes][column]
    return " (OOM)" if value is None else f" ({value / 1000:.1f})"


def linear_fit(rows: list[dict]) -> tuple[float, float, float | None] | None:
    """Least-squares ``peak = a + b·C`` over ``rows`` (two or more C): ``(a, b, the
    largest relative residual)``, the residual None with only two C (the line passes
    through both); None with fewer than two."""
    ok = [r for r in rows if "error" not in r]
    if len({r["classes"] for r in ok}) < 2:
        return None
    c = np.array([r["classes"] for r in ok], float)
    peak = np.array([r["peak"] for r in ok], float)
    b, a = np.polyfit(c, peak, 1)
    residual = float(np.max(np.abs(a + b * c - peak) / peak)) if len(set(c)) > 2 else None
    return a, b, residual


def _largest_fitting(rows: list[dict], budget_gb: float) -> str:
    """The largest C whose peak fits ``budget_gb`` per device, on the line through the
    measured rows; ``—`` where even the constant part does not fit."""
    fit = linear_fit(rows)
    if fit is None:
        return "—"
    a, b, _ = fit
    largest = (budget_gb * GB - a) / b
    return "none" if largest < 1e4 else _count(int(largest // 1e4 * 1e4))


HEADER = """# Per-device memory of the whole train step at arcface_torch's scale

`python experiments/bench_scale_memory.py` (rows in `bench_scale_memory.json`). The face
recipe's step (`configs/arcface.py:face`: bfloat16 backbone, float32 master weights, head
and loss, SGD momentum 0.9 + weight decay on every parameter, the backbone's gradient
clipped; ArcFace s 64, m 0.5), batch 128 per device, 112×112, compiled on abstract inputs
and read from `compiled.memory_analysis()`: peak = arguments + outputs − aliased (the
donated state once) + temporaries + generated code, GB (10⁹ bytes) per device.
Chunked: `chunk_size` 8192. Images float32 (the uint8 path the trainer now uses is
0.014 GB smaller per device).

In parentheses: arcface_torch's `docs/speed_benchmark.md`, "GPU memory cost of different
parallel methods (GB per GPU), Tesla V100 32GB * 8" (iResNet-50, fp16, batch 128 per
GPU; its values are MB, so 5620 = 5.6 GB; "-" = OOM): data parallel beside our
data-parallel dense, model parallel beside class-sharded dense, Partial FC 0.1 beside
class-sharded Partial FC 0.1. Its `partial_fc/README.md` gives 10M identities on 64
RTX2080Ti: model parallel 9684 MB (batch 2048 in all, 32 per GPU), Partial FC 6722 MB
(batch 4096, 64 per GPU): other batch sizes than ours, so they are not set beside a row.

`cpu`: XLA:CPU on `--xla_force_host_platform_device_count` host devices. It keeps the
bfloat16 backbone's activations about as large as float32 ones (iResNet-50: 13.4 GB of
temporaries at batch 128, the rows at 1M), so it overstates what an accelerator needs.
(Rows before the step differentiated loss/n, 2026-12-04, also held a second (d, C/n)
float32 block beside the head's gradient, the gradient divided by n: 7.4 GB at 29M on 8
devices; the class-sharded CPU rows were recompiled after that change.) `tpu`: the same
step compiled ahead of time for a TPU v5p topology (`--platform=tpu`; jax 0.10.2, libtpu
0.0.42.1, flax 0.12.8, optax 0.2.8; no TPU needed). The TPU compiler keeps bfloat16
activations at their size, so its rows are the accelerator estimate to set beside
arcface_torch's GPU rows. Every TPU row below was compiled on 2026-12-05 (evening) and
names its commit and the hash of its optimized HLO; a row compiled twice gave the same
hash and the same bytes (8M chunked three times, 1M Partial FC twice, with and without
other compiles beside it). The TPU rows of the previous report (2026-12-05, afternoon:
chunked 4.0 / 5.0 / 7.1 / 11.2 / 27.6 / 32.7 GB at 1M–29M) are replaced: they held one
more (d, C/n) block than these, which this session could not reproduce, neither at the
same commit nor at the commit before the loss/n change (023418a~1 gives 9.24 GB at 8M,
as the head does); the compiling environment of those rows was not recorded, which is
why each row now records it. A first TPU attempt for v5e (16 GB chips) was refused by
the compiler, which reported 22.46 GB of temporaries for iResNet-50, 8 chips, C = 29M,
chunked. A cell "—" was not compiled: each compile took 1–5 minutes (TPU: 2–4; the
64-chip 29M compile of the earlier set took 31 and was not repeated) on the shared
2-core machine, so the grid was cut to the rows below.
"""


def report(rows: list[dict], checks: list[dict] = ()) -> str:
    """The Markdown report of ``rows``: per platform and model, GB per device (peak),
    the largest C that fits each budget, and the parts of each row; ``checks``: the
    ``--check`` runs to cite."""
    lines = [HEADER]
    for check in checks:
        lines.append(
            f"Cross-check (`--check`, run for real on 8 host devices: LeNets++ backbone, "
            f"batch 16 per device, float32, chunked head, C = {_count(check['classes'])}): "
            f"the process's resident memory grew by {check['step_rss'] / 2**20:.0f} MiB "
            f"during the step; the compiled estimate of what the step allocates, 8 × "
            f"(temporaries + outputs − aliased), is {check['estimated_rss'] / 2**20:.0f} MiB "
            f"(ratio {check['step_rss'] / check['estimated_rss']:.3f}). "
            "`tests/test_bench_scale_memory.py` asserts it within 10 %."
        )
    for platform in sorted({r["platform"] for r in rows}):
        for model in sorted({r["model"] for r in rows if r["platform"] == platform}):
            mine = {_key(r): r for r in rows if r["platform"] == platform and r["model"] == model}
            layouts = [k for k in LAYOUTS if any(key[4] == k for key in mine)]
            cells = sorted({(key[2], key[3]) for key in mine})
            topology = f" ({', '.join(TPU_TOPOLOGIES.values())})" if platform == "tpu" else ""
            lines += [
                f"\n## {model}, {platform}{topology}: GB per device",
                "",
                "| devices | C | " + " | ".join(LAYOUT_NAMES[k] for k in layouts) + " |",
                "|---|---|" + "---|" * len(layouts),
            ]
            for devices, classes in cells:
                values = [
                    _gb(mine.get((platform, model, devices, classes, k)))
                    + _arcface_torch(model, devices, classes, k)
                    for k in layouts
                ]
                lines.append(f"| {devices} | {_count(classes)} | " + " | ".join(values) + " |")
            lines += [
                "",
                "Largest C that fits (peak ≤ budget per device), on the line a + b·C through "
                "the measured rows of each layout (the state and the head's gradient are "
                "linear in C; the largest relative residual of the line where three or more "
                "C were measured):",
                "",
                "| devices | layout | rows | "
                + " | ".join(f"{b} GB" for b in BUDGETS_GB)
                + " | residual |",
                "|---|---|---|" + "---|" * (len(BUDGETS_GB) + 1),
            ]
            for devices in sorted({key[2] for key in mine}):
                for k in layouts:
                    subset = [r for key, r in mine.items() if key[2] == devices and key[4] == k]
                    if not subset:
                        continue
                    fit = linear_fit(subset)
                    values = [_largest_fitting(subset, b) for b in BUDGETS_GB]
                    lines.append(
                        f"| {devices} | {LAYOUT_NAMES[k]} | {len(subset)} | "
                        + " | ".join(values)
                        + f" | {'—' if fit is None or fit[2] is None else f'{fit[2]:.1%}'} |"
                    )
            lines += [
                "",
                "| devices | C | layout | arguments | outputs − aliased | temporaries | code "
                "| compile s | commit | HLO |",
                "|---|---|---|---|---|---|---|---|---|---|",
            ]
            for key in sorted(mine):
                r = mine[key]
                if "error" in r:
                    continue
                lines.append(
                    f"| {r['devices']} | {_count(r['classes'])} | {LAYOUT_NAMES[r['layout']]} | "
                    f"{r['arguments'] / GB:.2f} | {(r['outputs'] - r['aliased']) / GB:.3f} | "
                    f"{r['temporaries'] / GB:.2f} | {r['code'] / GB:.2f} | {r['compile_s']:.0f} | "
                    f"{r.get('commit', '—')} | {r.get('hlo_sha256', '—')} |"
                )
    return "\n".join(lines) + "\n"


def check_row(
    model: str,
    *,
    num_classes: int,
    image_shape: tuple[int, int, int],
    batch_per_device: int,
    chunk_size: int,
) -> dict[str, float]:
    """The chunked face-recipe step of ``model`` (float32) on 8 host devices, run for
    real: ``measured_step_memory``'s figures."""
    import jax

    config = step_config(
        model, "chunked", num_devices=8, batch_per_device=batch_per_device, chunk_size=chunk_size
    )
    config.half_precision = False
    mesh = device_mesh("cpu", 8)
    if jax.device_count() < 8:
        raise RuntimeError(f"needs 8 host devices, have {jax.device_count()}")
    return measured_step_memory(config, mesh, num_classes=num_classes, image_shape=image_shape)


def _check() -> None:
    """The --check row (the test's: LeNets++ backbone, batch 16 per device, float32,
    chunked head, C = --check_classes on 8 host devices), appended to --json."""
    result = check_row(
        "lenet_pp",
        num_classes=_CHECK_CLASSES.value,
        image_shape=(28, 28, 1),
        batch_per_device=16,
        chunk_size=2048,
    )
    row = {"check": True, "classes": _CHECK_CLASSES.value} | result
    print(json.dumps(row))
    with open(_JSON.value, "a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")


def main(argv) -> None:
    del argv
    if _WORKER.value:
        _worker(json.loads(_WORKER.value))
        return
    if _CHECK.value:
        _check()
        return
    rows = _load(_JSON.value)
    checks = [r for r in rows if r.get("check")]
    # A row the compiler refused for want of memory is a result; other errors are retried.
    done = {_key(r): r for r in rows if not r.get("check") and _settled(r)}
    if not _REPORT_ONLY.value:
        for devices, classes in parse_grid(_GRID.value):
            for model in _MODELS.value:
                for layout in _LAYOUTS.value:
                    spec = {
                        "platform": _PLATFORM.value,
                        "model": model,
                        "devices": devices,
                        "classes": classes,
                        "layout": layout,
                        "batch_per_device": _BATCH.value,
                        "chunk_size": _CHUNK.value,
                    }
                    if _key(spec) in done:
                        continue
                    row = _run_row(spec)
                    print(json.dumps(row), flush=True)
                    with open(_JSON.value, "a", encoding="utf-8") as f:
                        f.write(json.dumps(row) + "\n")
                    done[_key(row)] = row
    text = report(list(done.values()), checks[-1:])
    print(text)
    with open(_MARKDOWN.value, "w", encoding="utf-8") as f:
        f.write(text)


if __name__ == "__main__":
    if "--worker" not in " ".join(sys.argv) and "--check" in sys.argv:
        os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    app.run(main)
