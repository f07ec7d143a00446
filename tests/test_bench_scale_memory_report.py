"""experiments/bench_scale_memory.py's report: rows the TPU compiler refused for want of
HBM read as OOM and are not compiled again, other failures are retried, and each row
names the commit and optimized HLO it was compiled from."""

from experiments import bench_scale_memory as bench

ROW = {
    "platform": "tpu",
    "model": "iresnet50",
    "devices": 8,
    "layout": "data_parallel",
    "batch_per_device": 128,
    "chunk_size": 8192,
}
PARTS = {"arguments": 4e9, "outputs": 1e9, "aliased": 1e9, "temporaries": 2e9, "code": 1e8}
PROVENANCE = {"commit": "3ac7b88", "hlo_sha256": "2fc39b1ab45c52e2", "libtpu": "0.0.42.1"}
REFUSED = (
    "exit 1: jax.errors.JaxRuntimeError: RESOURCE_EXHAUSTED: Ran out of memory on HBM, the "
    "total memory required for HLO temporaries (122.46G) exceeds available HBM (95.74G)."
)


def test_a_refused_row_reads_oom_and_is_settled():
    fits = ROW | {"classes": 1_000_000} | PARTS | PROVENANCE | {"peak": 6.1e9, "compile_s": 80.0}
    refused = ROW | {"classes": 29_000_000, "error": REFUSED}
    killed = ROW | {"classes": 16_000_000, "error": "exit -15: signal 15"}
    text = bench.report([fits, refused, killed])
    assert "| 8 | 1M | 6.1 (23.7) |" in text
    assert "| 8 | 29M | OOM (OOM) |" in text
    assert "| 8 | 16M | error (OOM) |" in text
    assert "| 80 | 3ac7b88 | 2fc39b1ab45c52e2 |" in text  # which code compiled the row
    assert [bench._settled(r) for r in (fits, refused, killed)] == [True, True, False]
