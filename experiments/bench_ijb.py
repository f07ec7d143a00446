r"""IJB-C scoring at the real counts: pooling, pair scores, ROC and TAR@FAR, time and memory.

Synthetic face embeddings stand in for a model's (the embedding pass is the model's
cost, not the protocol's): 469,375 faces, 23,124 templates of 3,531 subjects,
15,658,489 template pairs of which 19,557 mated — the counts of IJB-C's 1:1 protocol.
Times ``evaluation.ijb.pool_templates`` (media then template pooling, detector-score
weights), ``score_pairs`` (chunked cosines), ``roc_curve`` + ``tar_at_nearest_far``, and reports
the peak memory allocated by them beside the embeddings (tracemalloc, which sees
NumPy's and SciPy's arrays) and the process' peak RSS:

  python experiments/bench_ijb.py --out=experiments/results/bench_ijb.md

Targets (issue 17): under a minute and under 4 GiB, embeddings aside.
"""

import json
import resource
import time
import tracemalloc

import numpy as np
from absl import app, flags

from faceloss_jax import evaluation
from faceloss_jax.evaluation import ijb

_FACES = flags.DEFINE_integer("num_faces", 469_375, "Faces (IJB-C: 469,375).")
_TEMPLATES = flags.DEFINE_integer("num_templates", 23_124, "Templates (IJB-C: 23,124).")
_SUBJECTS = flags.DEFINE_integer("num_subjects", 3_531, "Subjects (IJB-C: 3,531).")
_PAIRS = flags.DEFINE_integer("num_pairs", 15_658_489, "Pairs (IJB-C: 15,658,489).")
_MATED = flags.DEFINE_integer("num_mated", 19_557, "Mated pairs (IJB-C: 19,557).")
_MEDIA = flags.DEFINE_integer("faces_per_media", 4, "Mean faces per media (video frames).")
_DIM = flags.DEFINE_integer("dim", 512, "Embedding dimension.")
_CHUNK = flags.DEFINE_integer("chunk_size", 1 << 16, "Pairs scored per chunk.")
_METHOD = flags.DEFINE_enum("method", "auto", ["auto", "gather", "gram"], "score_pairs method.")
_OUT = flags.DEFINE_string("out", None, "Markdown file for the result table (and .json).")


def synthetic_release(rng: np.random.Generator) -> tuple[dict, np.ndarray]:
    """Metadata with the IJB-C counts and embeddings clustered by subject."""
    n, t, s, d = _FACES.value, _TEMPLATES.value, _SUBJECTS.value, _DIM.value
    template_subject = np.r_[np.arange(s), rng.integers(0, s, t - s)]
    templates = np.r_[np.arange(t), rng.integers(0, t, n - t)]
    templates.sort()
    medias = templates * 1000 + rng.integers(0, max(1, n // t // _MEDIA.value), n)
    centers = rng.standard_normal((s, d), np.float32)
    features = centers[template_subject[templates]]
    features += 1.5 * rng.standard_normal((n, d), np.float32)
    # Mated pairs: two templates of one subject; the rest random (nearly all non-mated).
    by_subject = np.argsort(template_subject, kind="stable")
    starts = np.searchsorted(template_subject[by_subject], np.arange(s))
    counts = np.bincount(template_subject, minlength=s)
    multi = np.flatnonzero(counts >= 2)
    subject = rng.choice(multi, _MATED.value)
    first = rng.integers(0, counts[subject])
    second = (first + rng.integers(1, counts[subject])) % counts[subject]
    mated_a = by_subject[starts[subject] + first]
    mated_b = by_subject[starts[subject] + second]
    other = _PAIRS.value - _MATED.value
    pair_a = np.r_[mated_a, rng.integers(0, t, other)]
    pair_b = np.r_[mated_b, rng.integers(0, t, other)]
    labels = template_subject[pair_a] == template_subject[pair_b]
    meta = {
        "templates": templates,
        "medias": medias,
        "scores": rng.uniform(0.5, 1.0, n).astype(np.float32),
        "pair_a": pair_a,
        "pair_b": pair_b,
        "labels": labels,
    }
    return meta, features


def main(argv):
    del argv
    meta, features = synthetic_release(np.random.default_rng(0))
    tracemalloc.start()
    cpu_start = time.process_time()
    timings = {}
    start = time.perf_counter()
    unique, pooled = ijb.pool_templates(
        features, meta["templates"], meta["medias"], weights=meta["scores"]
    )
    timings["pool_s"] = time.perf_counter() - start
    start = time.perf_counter()
    scores = ijb.score_pairs(
        unique, pooled, meta["pair_a"], meta["pair_b"], chunk_size=_CHUNK.value
    )
    timings["score_s"] = time.perf_counter() - start
    start = time.perf_counter()
    fpr, tpr, _ = evaluation.roc_curve(scores, meta["labels"], drop_intermediate=True)
    tars = ijb.tar_at_nearest_far(fpr, tpr)
    timings["roc_s"] = time.perf_counter() - start
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    result = {
        "faces": _FACES.value,
        "templates": len(unique),
        "pairs": len(scores),
        "media": len(np.unique(meta["medias"])),
        **{k: round(v, 2) for k, v in timings.items()},
        "total_s": round(sum(timings.values()), 2),
        "cpu_s": round(time.process_time() - cpu_start, 2),
        "peak_alloc_gib": round(peak / 2**30, 3),
        "embeddings_gib": round(features.nbytes / 2**30, 3),
        "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3),
        **{k: round(v, 4) for k, v in tars.items()},
    }
    columns = [
        "faces",
        "templates",
        "pairs",
        "pool_s",
        "score_s",
        "roc_s",
        "total_s",
        "cpu_s",
        "peak_alloc_gib",
        "embeddings_gib",
        "peak_rss_gib",
    ]
    table = "\n".join(
        [
            "| " + " | ".join(columns) + " |",
            "|" + "---|" * len(columns),
            "| "
            + " | ".join(
                f"{result[c]:,}" if isinstance(result[c], int) else str(result[c]) for c in columns
            )
            + " |",
        ]
    )
    print(table)
    print(json.dumps(result))
    if _OUT.value:
        with open(_OUT.value, "w", encoding="utf-8") as f:
            f.write(
                "IJB-C scoring at the real counts (synthetic embeddings), "
                "`python experiments/bench_ijb.py`; wall seconds per stage, cpu_s the "
                "process CPU time, peak_alloc_gib the peak of the arrays allocated while "
                "scoring (tracemalloc), beside the embeddings (embeddings_gib); peak_rss_gib "
                "includes generating the synthetic data:\n\n" + table + "\n"
            )
        with open(_OUT.value.rsplit(".", 1)[0] + ".json", "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    app.run(main)
