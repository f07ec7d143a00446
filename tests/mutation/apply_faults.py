"""Applies faults to a copy of the tree one at a time, runs the tests meant to catch each,
and reports CAUGHT / NOT CAUGHT; the scripts ``issue<N>_faults.py`` hold the faults.

A fault is ``(name, file, old text, new text, tests)``: ``old`` must occur exactly once in
``file``. The copy (faceloss_jax, configs, tests) is made in a temporary directory and
each file is restored byte for byte after its fault; the working tree is never modified.
``--control`` first runs every named test on the unmodified copy; other arguments select
the faults whose names start with them.
"""

import pathlib
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence

REPO = pathlib.Path(__file__).resolve().parents[2]


def _copy_tree() -> pathlib.Path:
    root = pathlib.Path(tempfile.mkdtemp(prefix="faults_"))
    for name in ("faceloss_jax", "configs", "tests"):
        shutil.copytree(REPO / name, root / name, ignore=shutil.ignore_patterns("__pycache__"))
    return root


def _run(root: pathlib.Path, tests: Sequence[str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-x",
            "-m",
            "slow or not slow",
            "-p",
            "no:cacheprovider",
            *tests,
        ],
        cwd=root,
        env={
            "PYTHONPATH": str(root),
            "PATH": "/usr/bin:/bin",
            "HOME": "/tmp",
            "JAX_PLATFORMS": "cpu",
        },
        capture_output=True,
        text=True,
    )


def apply_faults(faults: Sequence[tuple], argv: Sequence[str]) -> None:
    """Applies each of ``faults`` in turn (see the module docstring) and prints a line per
    fault."""
    root = _copy_tree()
    only = list(argv)
    if "--control" in only:
        r = _run(root, sorted({t for f in faults for t in f[4]}))
        print("control (no fault):", r.stdout.splitlines()[-1], flush=True)
        only = [o for o in only if o != "--control"]
    for name, rel, old, new, tests in faults:
        if only and not any(name.startswith(o) for o in only):
            continue
        path = root / rel
        original = path.read_bytes()
        text = original.decode()
        if text.count(old) != 1:
            print(f"{name}: target found {text.count(old)} times in {rel}: SKIPPED", flush=True)
            continue
        path.write_text(text.replace(old, new), encoding="utf-8")
        t = time.time()
        r = _run(root, tests)
        if "passed" not in r.stdout and "failed" not in r.stdout:
            print(f"{name}: ERROR {r.stdout[-400:]} {r.stderr[-400:]}", flush=True)
        path.write_bytes(original)
        assert path.read_bytes() == original
        errs = [line for line in r.stdout.splitlines() if line.startswith("E ")][:2]
        print(
            f"{name}: {'CAUGHT' if r.returncode else 'NOT CAUGHT'} ({time.time() - t:.0f}s) "
            f"{' | '.join(e[:160] for e in errs)}",
            flush=True,
        )
