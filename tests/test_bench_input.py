"""The input bench's decode-limit table at a toy size (the README's Scale numbers)."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_decode_limit_table_has_the_bare_loop_and_each_setting():
    command = [
        sys.executable,
        "experiments/bench_input.py",
        "--decode_limit",
        "--read_threads=2,1",
        "--worker_counts=0",
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
    ] * 4
    assert [(r[1], r[2]) for r in rows[2:]] == [
        ("uint8", "2"),
        ("uint8", "1"),
        ("float32 (host-normalized)", "2"),
        ("float32 (host-normalized)", "1"),
    ]
    for row in rows[1:]:
        per_image_ms, per_core, cores = (
            float(v.replace(",", "")) for v in row[6:8] + [row[8][:-2]]
        )
        assert per_image_ms > 0 and 0 < cores < os.cpu_count() + 1
        assert abs(per_core * per_image_ms / 1e3 - 1) < 0.01
