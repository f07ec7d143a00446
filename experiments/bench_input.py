r"""Input-pipeline throughput (images/s) of faceloss_jax.data on this machine.

Times the training iterator (shuffle, read, augment, normalize, batch) after a
warm-up, for each requested source and setting, and prints a Markdown table:

  python experiments/bench_input.py --sources=mnist,synthetic,recordio \
      --read_threads=1,4 --worker_counts=0,2

Sources: ``mnist`` (the embedded digits, 28×28×1), ``synthetic`` (faces rendered
on the fly at --image_size), ``recordio`` (the same synthetic faces stored once as
JPEG in a temporary InsightFace train.rec, so the timing includes JPEG decoding).
"""

import itertools
import tempfile
import time

from absl import app, flags

from faceloss_jax import data
from faceloss_jax.data import images as images_lib
from faceloss_jax.data import synthetic

_SOURCES = flags.DEFINE_list("sources", ["mnist", "synthetic", "recordio"], "Sources to time.")
_BATCH = flags.DEFINE_integer("batch_size", 256, "Global batch size.")
_STEPS = flags.DEFINE_integer("steps", 20, "Timed batches per setting.")
_WARMUP = flags.DEFINE_integer("warmup", 3, "Untimed batches first (fills the buffers).")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 112, "Face image size.")
_READ_THREADS = flags.DEFINE_list("read_threads", ["4"], "grain read threads to try.")
_WORKERS = flags.DEFINE_list("worker_counts", ["0"], "grain worker processes to try.")
_NUM_RECORDS = flags.DEFINE_integer("num_records", 2000, "Faces in the temporary .rec.")


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


def _images_per_second(source, config) -> float:
    iterator = data.create_iterator(
        source,
        config,
        global_batch_size=_BATCH.value,
        seed=0,
        train=True,
        process_index=0,
        process_count=1,
    )
    try:
        for _ in range(_WARMUP.value):
            next(iterator)
        start = time.perf_counter()
        for _ in range(_STEPS.value):
            next(iterator)
        return _STEPS.value * _BATCH.value / (time.perf_counter() - start)
    finally:
        iterator.close()


def main(argv):
    del argv
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
