r"""Input-pipeline throughput (images/s) of faceloss_jax.data on this machine.

Times the training iterator (shuffle, read, augment, normalize, batch) after a
warm-up, for each requested source and setting, and prints a Markdown table:

  python experiments/bench_input.py --sources=mnist,synthetic,recordio \
      --read_threads=1,4 --worker_counts=0,2

Sources: ``mnist`` (the embedded digits, 28×28×1), ``synthetic`` (faces rendered
on the fly at --image_size), ``recordio`` (the same synthetic faces stored once as
JPEG in a temporary InsightFace train.rec, so the timing includes JPEG decoding).

``--decode_limit`` instead compares the recordio face pipeline with the decode limit
in one run: rounds that alternate a bare loop on one core (``os.pread`` of each record
+ Pillow decode to a uint8 array, nothing else) with the training iterator of each
setting (uint8 to the devices or float32 normalized on the host; read threads; grain
worker processes; timed from the iterator's creation, so that its read-ahead gets no
head start), so that other load on the machine slows both alike. It prints
each setting's median images/s, its ratio to the bare loop's of the same rounds, the
process CPU seconds per image (all threads; without worker processes), its inverse
(images/s per core) and the cores the process got (CPU seconds per wall second: on a
shared machine, the share the scheduler gave it):

  python experiments/bench_input.py --decode_limit --read_threads=1,2,4 \
      --worker_counts=0,2 --rounds=5
"""

import io
import itertools
import os
import statistics
import tempfile
import time

import numpy as np
import PIL
import PIL.Image
from absl import app, flags

from faceloss_jax import data
from faceloss_jax.data import images as images_lib
from faceloss_jax.data import recordio, synthetic

_SOURCES = flags.DEFINE_list("sources", ["mnist", "synthetic", "recordio"], "Sources to time.")
_BATCH = flags.DEFINE_integer("batch_size", 256, "Global batch size.")
_STEPS = flags.DEFINE_integer("steps", 20, "Timed batches per setting.")
_WARMUP = flags.DEFINE_integer("warmup", 3, "Untimed batches first (fills the buffers).")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 112, "Face image size.")
_READ_THREADS = flags.DEFINE_list("read_threads", ["4"], "grain read threads to try.")
_WORKERS = flags.DEFINE_list("worker_counts", ["0"], "grain worker processes to try.")
_NUM_RECORDS = flags.DEFINE_integer("num_records", 2000, "Faces in the temporary .rec.")
_DECODE_LIMIT = flags.DEFINE_bool(
    "decode_limit", False, "Compare the recordio pipeline with a bare decode loop."
)
_ROUNDS = flags.DEFINE_integer("rounds", 5, "--decode_limit: interleaved rounds.")


def _config_and_source(name: str, workdir: str):
    if name == "mnist":
        config = data.default_config("mnist")
    else:
        config = data.default_config("synthetic" if name == "synthetic" else "recordio")
        config.image_size = _IMAGE_SIZE.value
    if name == "synthetic":
        config.num_identities = 1000
    if name == "recordio":
        n = _NUM_RECORDS.value
        faces = [
            synthetic.render_sample(0, i // 20, i % 20, image_size=_IMAGE_SIZE.value)
            for i in range(n)
        ]
        data.write_insightface_recordio(
            workdir, [images_lib.encode_image(f) for f in faces], [i // 20 for i in range(n)]
        )
        config.path = workdir
    return config, data.create_source(config, "train")


def _iterator(source, config, *, normalize_images: bool = True):
    return data.create_iterator(
        source,
        config,
        global_batch_size=_BATCH.value,
        seed=0,
        train=True,
        process_index=0,
        process_count=1,
        normalize_images=normalize_images,
    )


def _images_per_second(source, config) -> float:
    iterator = _iterator(source, config)
    try:
        for _ in range(_WARMUP.value):
            next(iterator)
        start = time.perf_counter()
        for _ in range(_STEPS.value):
            next(iterator)
        return _STEPS.value * _BATCH.value / (time.perf_counter() - start)
    finally:
        iterator.close()


def bare_decode(rec: recordio.IndexedRecordIO, keys: np.ndarray) -> tuple[float, float]:
    """Wall and CPU seconds of one core reading the records ``keys`` (``os.pread``) and
    decoding their JPEGs with Pillow into uint8 arrays: the decode limit of one core."""
    start, start_cpu = time.perf_counter(), time.process_time()
    for key in keys:
        _, payload = recordio.unpack(rec.read_idx(int(key)))
        with PIL.Image.open(io.BytesIO(payload)) as image:
            np.asarray(image.convert("RGB"))
    return time.perf_counter() - start, time.process_time() - start_cpu


def _decode_limit(config, source, workdir: str) -> None:
    """Interleaved rounds of the bare loop and each pipeline setting (see the docstring)."""
    rec = recordio.IndexedRecordIO(f"{workdir}/train.idx", f"{workdir}/train.rec")
    images = _STEPS.value * _BATCH.value
    keys = np.random.default_rng(0).permutation(np.arange(1, len(source) + 1))
    keys = np.resize(keys, images)
    settings = [
        (normalize, int(threads), int(workers))
        for normalize in (False, True)
        for threads, workers in itertools.product(_READ_THREADS.value, _WORKERS.value)
    ]
    bare, piped = [], {s: [] for s in settings}
    for _ in range(_ROUNDS.value):
        for setting in settings:
            wall, cpu = bare_decode(rec, keys)
            bare.append((images / wall, cpu / images, cpu / wall))
            normalize, config.read_threads, config.worker_count = setting
            # Timed from the iterator's creation: no head start for its read-ahead.
            start, start_cpu = time.perf_counter(), time.process_time()
            iterator = _iterator(source, config, normalize_images=normalize)
            try:
                for _ in range(_STEPS.value):
                    next(iterator)
                wall, cpu = time.perf_counter() - start, time.process_time() - start_cpu
            finally:
                iterator.close()
            piped[setting].append((images / wall, cpu / images, cpu / wall, bare[-1][0]))
    bare_rate, bare_cpu, bare_cores = (statistics.median(column) for column in zip(*bare))
    decoder = images_lib.simplejpeg
    decoder = f"simplejpeg {decoder.__version__}" if decoder else f"Pillow {PIL.__version__}"
    print(
        f"\n{os.cpu_count()} CPUs, 1-min load average {os.getloadavg()[0]:.1f}; "
        f"the pipeline's JPEG decoder: {decoder}; "
        f"{_ROUNDS.value} rounds of {images} images ({_IMAGE_SIZE.value}×{_IMAGE_SIZE.value} "
        f"JPEG, batch {_BATCH.value}, flip); medians\n"
    )
    print(
        "| setting | images to the device | read threads | workers | images/s | "
        "÷ bare loop (same rounds) | CPU ms/image | images/s per core | cores used |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    print(
        f"| bare loop: pread + Pillow, 1 core | uint8 | — | — | {bare_rate:,.0f} | 1.00 | "
        f"{1e3 * bare_cpu:.3f} | {1 / bare_cpu:,.0f} | {bare_cores:.2f} |"
    )
    for (normalize, threads, workers), runs in piped.items():
        rate = statistics.median(r for r, _, _, _ in runs)
        ratio = statistics.median(r / b for r, _, _, b in runs)
        # Worker processes' CPU time is not this process's: no CPU columns for them.
        cpu = statistics.median(c for _, c, _, _ in runs)
        cores = statistics.median(n for _, _, n, _ in runs)
        cpu_columns = "— | — | —" if workers else f"{1e3 * cpu:.3f} | {1 / cpu:,.0f} | {cores:.2f}"
        kind = "float32 (host-normalized)" if normalize else "uint8"
        print(
            f"| face pipeline | {kind} | {threads} | {workers} | {rate:,.0f} | "
            f"{ratio:.2f} | {cpu_columns} |",
            flush=True,
        )


def main(argv):
    del argv
    if _DECODE_LIMIT.value:
        with tempfile.TemporaryDirectory() as workdir:
            _decode_limit(*_config_and_source("recordio", workdir), workdir)
        return
    print("| source | image | batch | read threads | workers | images/s |")
    print("|---|---|---|---|---|---|")
    for name in _SOURCES.value:
        with tempfile.TemporaryDirectory() as workdir:
            config, source = _config_and_source(name, workdir)
            shape = f"{config.image_size}×{config.image_size}×{config.channels}"
            for threads, workers in itertools.product(_READ_THREADS.value, _WORKERS.value):
                config.read_threads, config.worker_count = int(threads), int(workers)
                rate = _images_per_second(source, config)
                print(
                    f"| {name} | {shape} | {_BATCH.value} | {threads} | {workers} | {rate:,.0f} |",
                    flush=True,
                )


if __name__ == "__main__":
    app.run(main)
