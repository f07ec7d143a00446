"""IJB-B / IJB-C 1:1 verification (and 1:N identification) from the official release.

The release layout read here is the one of InsightFace's ``IJB_release`` archive, used
by arcface_torch's ``eval_ijbc.py``::

    <root>/loose_crop/<image>                    the face photos ("1.jpg", ...)
    <root>/meta/ijbc_face_tid_mid.txt            "<image> <template id> <media id>"
    <root>/meta/ijbc_name_5pts_score.txt         "<image> x1 y1 … x5 y5 <detector score>"
    <root>/meta/ijbc_template_pair_label.txt     "<template 1> <template 2> <1 same | 0>"
    <root>/meta/ijbc_1N_gallery_G1.csv, _G2.csv  optional 1:N (IJB-B: _S1.csv, _S2.csv)
    <root>/meta/ijbc_1N_probe_mixed.csv          "TEMPLATE_ID,SUBJECT_ID,…" with a header

(``ijbb_*`` for IJB-B; ``<root>`` may also be the folder holding ``IJBC/``). The protocol
is ``eval_ijbc.py``'s: every face is aligned from its 5 landmarks (``data.align_face``),
embedded with flip test-time augmentation ``f(x) + f(mirror(x))``, kept unnormalized
(its norm is a quality weight, "N1") and multiplied by its detector score ("D1"); the
faces of one media (a photo, or the frames of one video) are averaged, the media of a
template summed, and the template L2-normalized; a pair's score is the cosine of its
two templates; TAR at FAR = 1e-6 … 1e-1 is read off sklearn's ROC (the point of the
nearest FAR, the highest TAR among ties) — the numbers of the literature's tables.

The pooling is one sparse ``(templates × faces)`` product and the pair scores are
computed in chunks, so the full IJB-C (469,375 faces, 23,124 templates, 15,658,489
pairs) takes seconds and a few hundred MB beside the embeddings
(``experiments/bench_ijb.py``).
"""

import concurrent.futures
import dataclasses
import functools
import json
import math
import os
import time
import warnings
from collections.abc import Callable, Sequence

import numpy as np
import scipy.sparse
from absl import logging
from etils import epath
from PIL import Image

from faceloss_jax import errors
from faceloss_jax.data import align
from faceloss_jax.evaluation import plots
from faceloss_jax.evaluation.extract import extract_embeddings, l2_normalize
from faceloss_jax.evaluation.identification import probe_ranks
from faceloss_jax.evaluation.verification import auc, far_key, roc_curve

IJB_SETS = ("IJBB", "IJBC")
IJB_FARS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
# The 1:N gallery files of each set (eval ijb_1n.py); the probe file is "_1N_probe_mixed".
_GALLERIES = {"IJBB": ("S1", "S2"), "IJBC": ("G1", "G2")}


class IJBFormatError(errors.DataError):
    """A file of the release is missing or malformed (the message names file and line)."""


@dataclasses.dataclass(frozen=True)
class IJBRelease:
    """The metadata of an IJB-B/C release.

    Attributes:
      root: the folder holding ``meta/`` and ``loose_crop/``.
      name: "IJBB" or "IJBC".
      image_names: ``(N,)`` face image paths relative to ``loose_crop/``.
      landmarks: ``(N, 5, 2)`` float32 pixel coordinates.
      detector_scores: ``(N,)`` float32 face detector scores.
      templates, medias: ``(N,)`` int64 template and media id of each face.
      pair_a, pair_b: ``(P,)`` int64 template ids of the 1:1 pairs.
      pair_labels: ``(P,)`` bool, True for a mated pair.
      gallery: ``(template ids, subject ids)`` of the 1:N gallery, or None.
      probes: ``(template ids, subject ids)`` of the 1:N probes, or None.
    """

    root: epath.Path
    name: str
    image_names: np.ndarray
    landmarks: np.ndarray
    detector_scores: np.ndarray
    templates: np.ndarray
    medias: np.ndarray
    pair_a: np.ndarray
    pair_b: np.ndarray
    pair_labels: np.ndarray
    gallery: tuple[np.ndarray, np.ndarray] | None = None
    probes: tuple[np.ndarray, np.ndarray] | None = None


def _meta_path(root: epath.Path, name: str, suffix: str) -> epath.Path:
    return root / "meta" / f"{name.lower()}_{suffix}"


def _read_lines(path: epath.Path) -> list[list[str]]:
    if not path.exists():
        raise IJBFormatError(f"{path} does not exist: is this an IJB release folder?")
    return [line.split() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _read_int_table(path: epath.Path, columns: int) -> np.ndarray:
    """A whitespace-separated integer table, parsed by NumPy without Python objects per
    value (the IJB-C pair file has 15.7M rows)."""
    if not path.exists():
        raise IJBFormatError(f"{path} does not exist: is this an IJB release folder?")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # NumPy warns (and stops) at a non-integer token.
        try:
            values = np.fromfile(path, dtype=np.int64, sep=" ")
        except (ValueError, DeprecationWarning) as error:
            raise IJBFormatError(f"{path}: not a table of integers ({error})") from None
    if values.size % columns:
        raise IJBFormatError(f"{path}: expected {columns} integers per line")
    return values.reshape(-1, columns)


def _read_faces(path: epath.Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    names, landmarks, scores = [], [], []
    for number, fields in enumerate(_read_lines(path), 1):
        if len(fields) != 12:
            raise IJBFormatError(
                f"{path}:{number}: expected '<image> x1 y1 … x5 y5 <score>' (12 fields), "
                f"got {len(fields)}"
            )
        try:
            values = [float(v) for v in fields[1:]]
        except ValueError as error:
            raise IJBFormatError(f"{path}:{number}: {error}") from None
        names.append(fields[0])
        landmarks.append(values[:10])
        scores.append(values[10])
    return (
        np.array(names),
        np.array(landmarks, np.float32).reshape(-1, 5, 2),
        np.array(scores, np.float32),
    )


def _read_template_media(path: epath.Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    names, templates, medias = [], [], []
    for number, fields in enumerate(_read_lines(path), 1):
        if len(fields) != 3 or not (fields[1].isdigit() and fields[2].isdigit()):
            raise IJBFormatError(f"{path}:{number}: expected '<image> <template id> <media id>'")
        names.append(fields[0])
        templates.append(int(fields[1]))
        medias.append(int(fields[2]))
    return np.array(names), np.array(templates, np.int64), np.array(medias, np.int64)


def _read_1n(path: epath.Path) -> tuple[np.ndarray, np.ndarray]:
    """``(template ids, subject ids)``, one row per template, of a 1:N csv file."""
    lines = path.read_text(encoding="utf-8").splitlines()[1:]
    rows = [line.split(",") for line in lines if line.strip()]
    try:
        table = np.array([[int(r[0]), int(r[1])] for r in rows], np.int64).reshape(-1, 2)
    except (ValueError, IndexError):
        raise IJBFormatError(f"{path}: expected 'TEMPLATE_ID,SUBJECT_ID,…' rows") from None
    templates, first = np.unique(table[:, 0], return_index=True)
    return templates, table[first, 1]


def _check_pairs(path: epath.Path, pairs: np.ndarray, templates: np.ndarray) -> None:
    """Refuses a pair list that TAR@FAR cannot be read from: no pairs, unknown
    templates, labels other than 0/1, or only mated or only non-mated pairs."""
    if not len(pairs):
        raise IJBFormatError(f"{path} lists no pairs: TAR@FAR needs mated and non-mated pairs")
    unknown = np.setdiff1d(pairs[:, :2], templates)
    if unknown.size:
        raise IJBFormatError(f"pairs name templates without faces, e.g. {unknown[:5].tolist()}")
    if not np.isin(pairs[:, 2], (0, 1)).all():
        raise IJBFormatError("pair labels must be 0 or 1")
    mated = int(pairs[:, 2].sum())
    if mated in (0, len(pairs)):
        kind = "mated (label 1)" if mated else "non-mated (label 0)"
        raise IJBFormatError(
            f"{path}: all {len(pairs)} pairs are {kind}: TAR@FAR needs both mated (1) "
            "and non-mated (0) pairs"
        )


def _warn_if_scores_are_zero(path: epath.Path, scores: np.ndarray) -> None:
    """Warns of all-zero detector scores, which would zero every template (``evaluate_ijb``
    then pools without them)."""
    if len(scores) and not np.any(scores):
        logging.warning(
            "every detector score in %s (its last column) is 0: weighing faces by them "
            "would make every template zero and TAR 0 at every FAR, so evaluate_ijb pools "
            "without detector scores (arcface_torch's use_detector_score=False); give the "
            "release's real scores for the published protocol",
            path,
        )


def read_ijb(root: epath.PathLike, name: str = "IJBC") -> IJBRelease:
    """Reads the metadata of an IJB-B or IJB-C release (see the module docstring).

    All-zero detector scores are warned of (naming the file) and not used by
    ``evaluate_ijb``.

    Raises:
      IJBFormatError: a missing file, a malformed line, face lists that disagree,
        pairs naming templates without faces, or a pair list that is empty or holds
        only mated or only non-mated pairs (refused before any face is embedded).
    """
    if name not in IJB_SETS:
        raise errors.ConfigError(f"unknown IJB set {name!r}; valid: {', '.join(IJB_SETS)}")
    root = epath.Path(root)
    if not (root / "meta").exists() and (root / name / "meta").exists():
        root = root / name
    face_names, landmarks, scores = _read_faces(_meta_path(root, name, "name_5pts_score.txt"))
    tm_path = _meta_path(root, name, "face_tid_mid.txt")
    tm_names, templates, medias = _read_template_media(tm_path)
    if len(tm_names) != len(face_names) or np.any(tm_names != face_names):
        first = next(
            (i for i, (a, b) in enumerate(zip(tm_names, face_names)) if a != b),
            min(len(tm_names), len(face_names)),
        )
        raise IJBFormatError(
            f"{tm_path.name} ({len(tm_names)} faces) and the landmark file "
            f"({len(face_names)} faces) must list the same images in the same order; "
            f"they differ at line {first + 1}"
        )
    pair_path = _meta_path(root, name, "template_pair_label.txt")
    pairs = _read_int_table(pair_path, 3)
    _check_pairs(pair_path, pairs, templates)
    _warn_if_scores_are_zero(_meta_path(root, name, "name_5pts_score.txt"), scores)
    gallery = probes = None
    gallery_paths = [_meta_path(root, name, f"1N_gallery_{g}.csv") for g in _GALLERIES[name]]
    probe_path = _meta_path(root, name, "1N_probe_mixed.csv")
    if probe_path.exists() and all(p.exists() for p in gallery_paths):
        parts = [_read_1n(p) for p in gallery_paths]
        gallery = tuple(np.concatenate(x) for x in zip(*parts))
        probes = _read_1n(probe_path)
    return IJBRelease(
        root=root,
        name=name,
        image_names=face_names,
        landmarks=landmarks,
        detector_scores=scores,
        templates=templates,
        medias=medias,
        pair_a=pairs[:, 0],
        pair_b=pairs[:, 1],
        pair_labels=pairs[:, 2].astype(bool),
        gallery=gallery,
        probes=probes,
    )


def load_aligned_face(
    path: epath.PathLike, landmarks: np.ndarray, image_size: int = align.ARCFACE_SIZE
) -> np.ndarray:
    """The ``image_size``² uint8 RGB ArcFace crop of one photo (decoded by its content)."""
    try:
        with Image.open(path) as image:
            rgb = np.asarray(image.convert("RGB"))
    except (OSError, ValueError) as error:
        raise IJBFormatError(f"cannot decode {path}: {error}") from None
    return align.align_face(rgb, landmarks, output_size=image_size)


def face_features(
    release: IJBRelease,
    embed_fn: Callable,
    *,
    preprocess: Callable[[np.ndarray], np.ndarray],
    batch_size: int = 128,
    chunk_size: int = 4096,
    flip: bool = True,
    workers: int | None = None,
    log: Callable[[str], None] | None = None,
    image_size: int = align.ARCFACE_SIZE,
) -> np.ndarray:
    """The unnormalized embedding of every face: aligned to ``image_size``² (the
    backbone's input), ``f(x) + f(mirror(x))``.

    Faces are decoded and aligned by a thread pool ``chunk_size`` at a time, so memory
    holds one chunk of crops.

    Returns:
      float32 ``(N, d)``.
    """
    workers = workers or min(8, os.cpu_count() or 1)
    paths = [release.root / "loose_crop" / n for n in release.image_names]
    outputs = []
    start_time = time.time()
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        for start in range(0, len(paths), chunk_size):
            stop = min(start + chunk_size, len(paths))
            crops = np.stack(
                list(
                    pool.map(
                        functools.partial(load_aligned_face, image_size=image_size),
                        paths[start:stop],
                        release.landmarks[start:stop],
                    )
                )
            )
            outputs.append(
                extract_embeddings(
                    embed_fn, preprocess(crops), batch_size=batch_size, flip=flip, normalize=False
                )
            )
            if log is not None:
                log(f"embedded {stop}/{len(paths)} faces ({time.time() - start_time:.0f} s)")
    return np.concatenate(outputs)


def pool_templates(
    features: np.ndarray,
    templates: np.ndarray,
    medias: np.ndarray,
    *,
    weights: np.ndarray | None = None,
    normalize_faces: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Media-then-template pooling of ``eval_ijbc.py`` (``image2template_feature``).

    ``t = normalize(Σ_media mean_{faces i of the media} w_i·x_i)``, i.e. one sparse
    product ``W·X`` with ``W[t, i] = w_i / |media(i)|`` — no copy of the features.

    Args:
      features: ``(N, d)`` face embeddings (unnormalized: their norm weighs them).
      templates, medias: ``(N,)`` template and media id of each face.
      weights: ``(N,)`` per-face weights (the detector scores), or None for 1.
      normalize_faces: L2-normalize each face first (the "N0" mode).

    Returns:
      ``(template ids (T,) sorted, features (T, d) float32 L2-normalized)``.
    """
    features = np.asarray(features)
    templates, medias = np.asarray(templates), np.asarray(medias)
    if features.ndim != 2 or templates.shape != (len(features),) or medias.shape != templates.shape:
        raise ValueError(
            f"need features (N, d), templates (N,), medias (N,); got {features.shape}, "
            f"{templates.shape}, {medias.shape}"
        )
    if normalize_faces:
        features = l2_normalize(features)
    unique_templates, template_index = np.unique(templates, return_inverse=True)
    _, media_index, media_counts = np.unique(
        np.stack([templates, medias], 1), axis=0, return_inverse=True, return_counts=True
    )
    values = 1.0 / media_counts[media_index.ravel()]
    if weights is not None:
        values = values * np.asarray(weights, np.float64)
    pooling = scipy.sparse.csr_matrix(
        (values.astype(np.float32), (template_index.ravel(), np.arange(len(features)))),
        shape=(len(unique_templates), len(features)),
    )
    pooled = np.asarray(pooling @ features.astype(np.float32, copy=False))
    return unique_templates, l2_normalize(pooled).astype(np.float32)


def _template_rows(unique_templates: np.ndarray, ids: np.ndarray) -> np.ndarray:
    rows = np.searchsorted(unique_templates, ids).clip(0, len(unique_templates) - 1)
    if not np.array_equal(unique_templates[rows], ids):
        missing = np.setdiff1d(ids, unique_templates)[:5]
        raise ValueError(f"templates without features, e.g. {missing.tolist()}")
    return rows


def score_pairs(
    unique_templates: np.ndarray,
    template_features: np.ndarray,
    pair_a: np.ndarray,
    pair_b: np.ndarray,
    *,
    chunk_size: int = 1 << 16,
    block_size: int = 2048,
    method: str = "auto",
) -> np.ndarray:
    """Cosine scores of template pairs (float32 ``(P,)``), chunked.

    Two exact ways, chosen by cost: ``"gather"`` takes ``chunk_size`` pairs at a time
    and sums ``a·b`` over their gathered rows (memory-bound, ``P·d``); ``"gram"`` takes
    ``block_size`` first templates at a time, computes their scores against all templates
    with one matrix product (``block × T``, BLAS) and reads off the pairs whose first
    template is in the block (``T²·d`` flops, fast when pairs are dense: IJB-C has 15.7M
    pairs of 23k templates). ``"auto"`` picks ``"gram"`` when ``64·P > T²``. Memory
    beyond the output is ``2·chunk_size·d`` or ``block_size·T`` floats. The features are
    expected L2-normalized (``pool_templates``).
    """
    if method not in ("auto", "gather", "gram"):
        raise ValueError(f"unknown method {method!r}; valid: auto, gather, gram")
    rows_a = _template_rows(unique_templates, np.asarray(pair_a))
    rows_b = _template_rows(unique_templates, np.asarray(pair_b))
    feats = np.asarray(template_features, np.float32)
    scores = np.empty(len(rows_a), np.float32)
    if method == "gram" or (method == "auto" and 64 * len(rows_a) > len(feats) ** 2):
        buffer = np.empty((min(block_size, len(feats)), len(feats)), np.float32)
        for lo in range(0, len(feats), block_size):
            (index,) = np.nonzero((rows_a >= lo) & (rows_a < lo + block_size))
            if len(index):
                block = feats[lo : lo + block_size]
                gram = np.matmul(block, feats.T, out=buffer[: len(block)])
                scores[index] = gram[rows_a[index] - lo, rows_b[index]]
        return scores
    for start in range(0, len(rows_a), chunk_size):
        a = feats[rows_a[start : start + chunk_size]]
        b = feats[rows_b[start : start + chunk_size]]
        scores[start : start + chunk_size] = np.einsum("ij,ij->i", a, b)
    return scores


def tar_at_nearest_far(
    fpr: np.ndarray, tpr: np.ndarray, fars: Sequence[float] = IJB_FARS
) -> dict[str, float]:
    """TAR at each FAR as ``eval_ijbc.py`` reads it from the ROC: the point whose FAR
    is nearest the target (above it or not), the highest TAR among equally near points
    (``verification.tar_at_far`` reads the largest FAR not above the target).

    Returns:
      ``{"tar_at_far_1e-6": …, …}``.
    """
    fpr_desc, tpr_desc = np.asarray(fpr)[::-1], np.asarray(tpr)[::-1]
    return {
        f"tar_at_far_{far_key(far)}": float(tpr_desc[np.argmin(np.abs(fpr_desc - far))])
        for far in fars
    }


def identification_1n(
    unique_templates: np.ndarray,
    template_features: np.ndarray,
    gallery: tuple[np.ndarray, np.ndarray],
    probes: tuple[np.ndarray, np.ndarray],
    *,
    fpirs: Sequence[float] = (0.01, 0.1),
    chunk_size: int = 4096,
) -> dict[str, float]:
    """1:N (closed-set, mixed probes) as InsightFace's ``ijb_1n.py``: rank-1/5/10 and
    TPIR at FPIR, the threshold being the ⌈P·FPIR⌉-th highest non-mated probe–gallery
    score over all P probes, a probe counted when its mated score is above it.

    Returns:
      ``{"rank_1", "rank_5", "rank_10", "tpir_at_fpir_1e-2", …}``.
    """
    gallery_feats = template_features[_template_rows(unique_templates, gallery[0])]
    probe_feats = template_features[_template_rows(unique_templates, probes[0])]
    ranks = probe_ranks(gallery_feats, gallery[1], probe_feats, probes[1])
    metrics = {f"rank_{k}": float(np.mean(ranks <= k)) for k in (1, 5, 10)}
    order = np.argsort(gallery[1])
    mated_column = order[np.searchsorted(gallery[1][order], probes[1])]
    top = max(math.ceil(len(probe_feats) * f) for f in fpirs)
    largest = np.full(0, -np.inf, np.float32)
    mated = np.empty(len(probe_feats), np.float32)
    for start in range(0, len(probe_feats), chunk_size):
        sims = probe_feats[start : start + chunk_size] @ gallery_feats.T
        rows = np.arange(len(sims))
        mated[start : start + len(sims)] = sims[rows, mated_column[start : start + len(sims)]]
        sims[rows, mated_column[start : start + len(sims)]] = -np.inf
        candidates = np.concatenate([largest, sims.ravel()])
        keep = min(top, len(candidates))
        largest = np.partition(candidates, len(candidates) - keep)[len(candidates) - keep :]
    largest = np.sort(largest)[::-1]
    for fpir in fpirs:
        threshold = largest[min(math.ceil(len(probe_feats) * fpir), len(largest)) - 1]
        metrics[f"tpir_at_fpir_{far_key(fpir)}"] = float(np.mean(mated > threshold))
    return metrics


def evaluate_ijb(
    release: IJBRelease,
    features: np.ndarray,
    *,
    use_detector_score: bool = True,
    normalize_faces: bool = False,
    fars: Sequence[float] = IJB_FARS,
    out_dir: epath.PathLike | None = None,
    label: str = "model",
) -> dict[str, float]:
    """1:1 verification (and 1:N when the release has it) from the face embeddings.

    Args:
      release: ``read_ijb(...)``.
      features: ``(N, d)`` flip-summed, unnormalized face embeddings (``face_features``).
      use_detector_score: weigh each face by its detector score ("D1"); ignored when
        every score is 0 (``read_ijb`` warns of it), which would zero every template.
      normalize_faces: drop the embedding norm before pooling ("N0"; default "N1").
      fars: the FARs of the TAR table.
      out_dir: where to write ``<set>_scores.npy``, ``<set>.json`` and ``<set>_roc.png``.
      label: the curve's name on the ROC figure.

    Returns:
      ``tar_at_far_*``, ``auc``, ``num_pairs``, ``use_detector_score`` (whether the
      scores weighed the faces), and ``rank_*``, ``tpir_at_fpir_*`` (1:N).
    """
    if len(features) != len(release.templates):
        raise ValueError(f"{len(features)} features for {len(release.templates)} faces")
    use_detector_score = use_detector_score and bool(np.any(release.detector_scores))
    weights = release.detector_scores if use_detector_score else None
    unique, pooled = pool_templates(
        features,
        release.templates,
        release.medias,
        weights=weights,
        normalize_faces=normalize_faces,
    )
    scores = score_pairs(unique, pooled, release.pair_a, release.pair_b)
    fpr, tpr, _ = roc_curve(scores, release.pair_labels, drop_intermediate=True)
    metrics = {
        **tar_at_nearest_far(fpr, tpr, fars),
        "auc": auc(fpr, tpr),
        "num_pairs": len(scores),
        "use_detector_score": use_detector_score,
    }
    if release.gallery is not None:
        metrics |= identification_1n(unique, pooled, release.gallery, release.probes)
    if out_dir is not None:
        out_dir = epath.Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        stem = release.name.lower()
        np.save(out_dir / f"{stem}_scores.npy", scores)
        (out_dir / f"{stem}.json").write_text(json.dumps(metrics, indent=2), encoding="utf-8")
        plots.plot_roc({label: (fpr, tpr)}, str(out_dir / f"{stem}_roc.png"))
    return metrics


def format_table(metrics: dict[str, float], name: str, fars: Sequence[float] = IJB_FARS) -> str:
    """The TAR@FAR row of the literature's tables (percent), e.g. for the README."""
    header = " | ".join(f"{far:.0e}" for far in fars)
    row = " | ".join(f"{100 * metrics[f'tar_at_far_{far_key(far)}']:.2f}" for far in fars)
    lines = [f"{name} TAR@FAR | {header}", f"{'':>{len(name)}}  (%)   | {row}"]
    if "rank_1" in metrics:
        lines.append(
            f"{name} 1:N rank-1 {100 * metrics['rank_1']:.2f}  rank-5 {100 * metrics['rank_5']:.2f}"
        )
    return "\n".join(lines)
