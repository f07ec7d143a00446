"""The input bench's decode-limit table at a toy size (the README's Scale numbers)."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow  # 9 s with grain's worker processes (--durations, 2026-12-05)
def test_decode_limit_table_has_the_bare_loop_and_each_setting():
    command = [
        sys.executable,
        "experiments/bench_input.py",
        "--decode_limit",
        "--read_threads=2,1",
        "--worker_counts=0,2",
        "--rounds=1",
        "--steps=2",
        "--batch_size=16",
        "--num_records=40",
    ]
    out = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert "1-min load average" in out and "the pipeline's JPEG decoder: " in out
    header = next(line for line in out.splitlines() if line.startswith("| setting"))
    assert header.endswith("| CPU ms/image | images/s per core | cores used |")
    rows = [
        line.split(" | ")
        for line in out.splitlines()
        if line.startswith("| ") and "|---" not in line
    ]
    assert [r[0] for r in rows[1:]] == ["| bare loop: pread + Pillow, 1 core"] + [
        "| face pipeline"
    ] * 8
    assert [(r[1], r[2], r[3]) for r in rows[2:]] == [
        (images, threads, workers)
        for images in ("uint8", "float32 (host-normalized)")
        for threads in "21"
        for workers in "02"
    ]
    # The CPU columns measure this process's threads: none for worker processes.
    assert all(r[6:8] == ["—", "—"] for r in rows[2:] if r[3] == "2")
    for row in [r for r in rows[1:] if r[3] != "2"]:
        per_image_ms, per_core, cores = (
            float(v.replace(",", "")) for v in row[6:8] + [row[8][:-2]]
        )
        assert per_image_ms > 0 and 0 < cores < os.cpu_count() + 1
        assert abs(per_core * per_image_ms / 1e3 - 1) < 0.01
