"""IJB-B/C: the release reader, media-then-template pooling, pair scores, ROC and
TAR@FAR on a tiny generated folder in the exact release layout, against values
computed by hand; 1:N; and the documented commands (evaluate --ijb/--bins, embed,
the benchmark) through the command line.

The generated faces are uniformly coloured and a stand-in embedding (the mean colour)
makes every number below computable by hand. Their files are losslessly encoded (PNG
content under the release's ``.jpg`` names; Pillow decodes by content).
"""

import itertools
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from faceloss_jax import data, evaluation, weights
from faceloss_jax.evaluation import ijb
from faceloss_jax.weights import arcface_torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REF = data.ARCFACE_REFERENCE
# Face i: colour, detector score, template, media. Templates 1, 2: subject A; 3, 4: B; 5: C.
COLOURS = [
    (250, 130, 128),
    (240, 140, 120),
    (230, 120, 140),
    (245, 135, 125),
    (128, 250, 128),
    (130, 240, 135),
    (170, 240, 160),
    (175, 232, 175),
]
SCORES = [0.9, 0.8, 0.95, 0.7, 0.85, 0.6, 0.99, 0.75]
TEMPLATES = [1, 1, 1, 2, 3, 3, 4, 5]
MEDIAS = [11, 11, 12, 13, 14, 14, 15, 16]
SUBJECT = {1: 100, 2: 100, 3: 200, 4: 200, 5: 300}
PAIRS = [(a, b, int(SUBJECT[a] == SUBJECT[b])) for a, b in itertools.combinations(range(1, 6), 2)]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(XLA_FLAGS="", JAX_PLATFORMS="cpu")
    return env


def write_release(root, name: str = "IJBC", *, one_n: bool = False) -> None:
    """The tiny release: faces 0–6 are 112×112 crops (landmarks = the template), face 7
    a 230×230 photo at twice the scale (landmarks = 2 × the template)."""
    meta, crops = root / "meta", root / "loose_crop"
    meta.mkdir(parents=True)
    crops.mkdir()
    stem = name.lower()
    face_lines, tm_lines = [], []
    for i, colour in enumerate(COLOURS):
        size, points = (230, 2 * REF) if i == 7 else (112, REF)
        image = np.broadcast_to(np.array(colour, np.uint8), (size, size, 3))
        Image.fromarray(np.ascontiguousarray(image)).save(crops / f"{i + 1}.jpg", format="PNG")
        coords = " ".join(f"{v:.4f}" for v in points.ravel())
        face_lines.append(f"{i + 1}.jpg {coords} {SCORES[i]}")
        tm_lines.append(f"{i + 1}.jpg {TEMPLATES[i]} {MEDIAS[i]}")
    (meta / f"{stem}_name_5pts_score.txt").write_text(
        "\n".join(face_lines) + "\n", encoding="utf-8"
    )
    (meta / f"{stem}_face_tid_mid.txt").write_text("\n".join(tm_lines) + "\n", encoding="utf-8")
    (meta / f"{stem}_template_pair_label.txt").write_text(
        "".join(f"{a} {b} {label}\n" for a, b, label in PAIRS), encoding="utf-8"
    )
    if one_n:
        header = "TEMPLATE_ID,SUBJECT_ID,FILENAME\n"
        g1, g2 = ("G1", "G2") if name == "IJBC" else ("S1", "S2")
        (meta / f"{stem}_1N_gallery_{g1}.csv").write_text(
            header + "1,100,img/1.jpg\n1,100,img/2.jpg\n", encoding="utf-8"
        )
        (meta / f"{stem}_1N_gallery_{g2}.csv").write_text(
            header + "3,200,img/5.jpg\n", encoding="utf-8"
        )
        (meta / f"{stem}_1N_probe_mixed.csv").write_text(
            header + "2,100,img/4.jpg\n4,200,f/7.jpg\n", encoding="utf-8"
        )


def mean_colour(images):
    """The stand-in embedding: the mean of each channel (mirror-invariant)."""
    return images.mean(axis=(1, 2))


def preprocess(crops):
    return (np.asarray(crops, np.float32) - 127.5) / 127.5


def eval_ijbc_reference(features, templates, medias, scores, pairs):
    """arcface_torch eval_ijbc.py's loops (image2template_feature, verification)."""
    features = features * scores[:, None]
    out = {}
    for t in np.unique(templates):
        idx = np.flatnonzero(templates == t)
        media_feats = []
        for m in np.unique(medias[idx]):
            media_feats.append(features[idx[medias[idx] == m]].mean(0))
        v = np.sum(media_feats, 0)
        out[t] = v / np.linalg.norm(v)
    return np.array([out[a] @ out[b] for a, b in pairs])


def test_reader_reads_the_release_layout(tmp_path):
    write_release(tmp_path / "IJBC")
    # The folder above IJBC/ works too.
    release = ijb.read_ijb(tmp_path, "IJBC")
    assert release.image_names.tolist() == [f"{i}.jpg" for i in range(1, 9)]
    # The landmarks are written with 4 decimals (±0.5e-4) and read as float32 (≤ u·100
    # ≈ 6e-6 at these coordinates): ≤ 5.6e-5. The scores' decimals are exact, read as
    # float32: ≤ u/2 relative.
    np.testing.assert_allclose(release.landmarks[0], REF, atol=1e-4)
    np.testing.assert_allclose(release.detector_scores, SCORES, rtol=2.0**-24)
    assert release.templates.tolist() == TEMPLATES and release.medias.tolist() == MEDIAS
    assert release.pair_labels.tolist() == [bool(p[2]) for p in PAIRS]
    assert release.gallery is None


def test_hand_computed_scores_roc_and_tar_at_far(tmp_path):
    write_release(tmp_path, one_n=True)
    release = ijb.read_ijb(tmp_path, "IJBC")
    features = ijb.face_features(release, mean_colour, preprocess=preprocess, batch_size=4)
    # Mean colour of a uniform crop, flip TTA adds the mirror: 2 (c − 127.5) / 127.5.
    expected_features = 2 * (np.array(COLOURS) - 127.5) / 127.5
    # float32 means of n = 112² equal values (PNG is lossless, the warp of a uniform
    # colour is that colour), each off by ≤ √n·u of its value (Higham & Mary's
    # probabilistic bound; measured 4e-7), two of them (the flip): √n·u·|feature|.
    # A wrong colour is ≥ 2/127.5 off.
    atol = 112 * 2.0**-24 * np.abs(expected_features).max()
    np.testing.assert_allclose(features, expected_features, atol=atol)

    metrics = ijb.evaluate_ijb(release, features, out_dir=tmp_path / "out")
    # Pair scores by eval_ijbc.py's loops (detector-score weights, media means, sums):
    # (1,2) .9954 mated > (4,5) .9899 non-mated > (3,4) .9140 mated > the 7 other
    # non-mated pairs. ROC of sklearn (collinear points dropped): (FAR, TAR) = (0, 0),
    # (0, .5), (1/8, .5), (1/8, 1), (1, 1).
    unique, pooled = ijb.pool_templates(
        features, release.templates, release.medias, weights=release.detector_scores
    )
    scores = ijb.score_pairs(unique, pooled, release.pair_a, release.pair_b)
    # The loops on the same features in float64: the float32 pooling (≤ 3 faces weighted,
    # media means, their sum and its normalization) and a 3-term dot round by ≲ 12·u ≈
    # 7e-7 of the unit cosines. The hand-computed scores are given to 4 decimals
    # (±0.5e-4), the features within 3e-5 of the exact colours (above).
    reference = eval_ijbc_reference(
        features.astype(np.float64),
        np.array(TEMPLATES),
        np.array(MEDIAS),
        np.array(SCORES),
        [p[:2] for p in PAIRS],
    )
    np.testing.assert_allclose(scores, reference, atol=1e-6)
    np.testing.assert_allclose(
        sorted(scores, reverse=True)[:4], [0.9954, 0.9899, 0.9140, 0.8560], atol=1e-4
    )
    fpr, tpr, _ = evaluation.roc_curve(scores, release.pair_labels, drop_intermediate=True)
    # Fractions of counted pairs and TARs read off them: exact up to float64 rounding,
    # the default tolerances (rtol 1e-7, approx's 1e-6); one pair is ≥ 1/8.
    np.testing.assert_allclose(fpr, [0, 0, 0.125, 0.125, 1])
    np.testing.assert_allclose(tpr, [0, 0.5, 0.5, 1, 1])
    # FAR 1e-6 … 1e-2: nearest ROC FAR is 0 → TAR .5; FAR 1e-1: nearest is 1/8, where
    # the highest TAR is 1.
    assert metrics == pytest.approx(
        {
            "tar_at_far_1e-6": 0.5,
            "tar_at_far_1e-5": 0.5,
            "tar_at_far_1e-4": 0.5,
            "tar_at_far_1e-3": 0.5,
            "tar_at_far_1e-2": 0.5,
            "tar_at_far_1e-1": 1.0,
            "auc": 0.125 * 0.5 + 0.875,
            "num_pairs": 10,
            "use_detector_score": True,
            # 1:N: probes 2 (A), 4 (B) against gallery 1 (A), 3 (B): both rank 1; the
            # threshold at FPIR .01 and .1 is the top non-mated score (4 vs 1: .3482).
            "rank_1": 1.0,
            "rank_5": 1.0,
            "rank_10": 1.0,
            "tpir_at_fpir_1e-2": 1.0,
            "tpir_at_fpir_1e-1": 1.0,
        }
    )
    assert (
        json.loads((tmp_path / "out" / "ijbc.json").read_text(encoding="utf-8"))["tar_at_far_1e-1"]
        == 1.0
    )
    assert (tmp_path / "out" / "ijbc_roc.png").exists()
    assert np.load(tmp_path / "out" / "ijbc_scores.npy").shape == (10,)


def test_roc_equals_sklearn_and_pooling_equals_the_loops():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    labels = rng.random(3000) < 0.1
    scores = np.round(rng.normal(labels * 1.5, 1.0), 2)  # many ties
    fpr, tpr, thresholds = evaluation.roc_curve(scores, labels, drop_intermediate=True)
    ref_fpr, ref_tpr, ref_thresholds = sklearn_metrics.roc_curve(labels, scores)
    # Fractions of counts and the scores themselves: equal to float64 rounding, the
    # default rtol 1e-7; one pair counted otherwise is ≥ 1/2700.
    np.testing.assert_allclose(fpr, ref_fpr)
    np.testing.assert_allclose(tpr, ref_tpr)
    np.testing.assert_allclose(thresholds[1:], ref_thresholds[1:])

    features = rng.normal(size=(200, 16)).astype(np.float32)
    templates = rng.integers(0, 30, 200)
    medias = templates * 10 + rng.integers(0, 3, 200)
    weights_ = rng.uniform(0.5, 1, 200)
    pairs = [(a, b) for a, b in itertools.combinations(np.unique(templates), 2)]
    unique, pooled = ijb.pool_templates(features, templates, medias, weights=weights_)
    a, b = np.array(pairs).T
    gather = ijb.score_pairs(unique, pooled, a, b, method="gather", chunk_size=64)
    gram = ijb.score_pairs(unique, pooled, a, b, method="gram", block_size=7)
    reference = eval_ijbc_reference(features, templates, medias, weights_, pairs)
    # float32 against the float64 loops: pooling sums ≤ 14 weighted faces (≤ 14·u of
    # Σ|w·f|), the normalization (≤ 10·u) and a 16-term dot of unit vectors (16·u):
    # ≲ 40·u·Σ|w·f|/‖Σ w·f‖ ≈ 1e-5 of a cosine at worst, ~√n·u in practice (measured
    # below 1e-6). A face in the wrong template or media moves a cosine by ≥ 1e-2.
    np.testing.assert_allclose(gather, reference, atol=1e-5)
    np.testing.assert_allclose(gram, reference, atol=1e-5)


def test_tar_at_nearest_far_takes_the_nearest_far_and_the_highest_tar():
    fpr = np.array([0, 0, 2e-6, 1e-3, 0.2, 1])
    tpr = np.array([0, 0.3, 0.6, 0.7, 0.9, 1])
    got = ijb.tar_at_nearest_far(fpr, tpr, (1e-4, 1e-1))
    # 1e-4: nearest 2e-6 (TAR .6); 1e-1: |1e-3 − .1| = .099 < |.2 − .1| = .1, so TAR .7.
    assert got["tar_at_far_1e-4"] == 0.6 and got["tar_at_far_1e-1"] == 0.7
    # An exact tie (FAR .25 between 0 and .5): the highest TAR among the nearest points.
    fpr, tpr = np.array([0, 0, 0.5, 0.5, 1]), np.array([0, 0.3, 0.6, 0.8, 1])
    assert ijb.tar_at_nearest_far(fpr, tpr, (0.25,)) == {"tar_at_far_2.5e-1": 0.8}


def test_reader_errors_name_the_problem(tmp_path):
    with pytest.raises(ijb.IJBFormatError, match="does not exist"):
        ijb.read_ijb(tmp_path, "IJBB")
    write_release(tmp_path)
    path = tmp_path / "meta" / "ijbc_face_tid_mid.txt"
    lines = path.read_text(encoding="utf-8").splitlines()
    path.write_text("\n".join([lines[1], lines[0], *lines[2:]]) + "\n", encoding="utf-8")
    with pytest.raises(ijb.IJBFormatError, match="differ at line 1"):
        ijb.read_ijb(tmp_path)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    pairs = tmp_path / "meta" / "ijbc_template_pair_label.txt"
    pairs.write_text("1 2 1\n1 x 0\n", encoding="utf-8")
    with pytest.raises(ijb.IJBFormatError, match="not a table of integers"):
        ijb.read_ijb(tmp_path)
    pairs.write_text("1 99 0\n", encoding="utf-8")
    with pytest.raises(ijb.IJBFormatError, match=r"templates without faces, e.g. \[99\]"):
        ijb.read_ijb(tmp_path)
    landmarks = tmp_path / "meta" / "ijbc_name_5pts_score.txt"
    landmarks.write_text("1.jpg 1 2 3\n", encoding="utf-8")
    with pytest.raises(ijb.IJBFormatError, match=r"ijbc_name_5pts_score.txt:1: .*12 fields"):
        ijb.read_ijb(tmp_path)
    with pytest.raises(ValueError, match="unknown IJB set"):
        ijb.read_ijb(tmp_path, "IJBA")


def _random_backbone(directory) -> None:
    """A random iResNet-18 backbone directory, as faceloss_jax.convert writes."""
    rng = np.random.default_rng(0)
    shapes = arcface_torch.abstract_variables("iresnet18", embedding_dim=64)

    def fill(path, leaf):
        name = path[-1].key
        if name == "var":
            return np.ones(leaf.shape, np.float32)
        if name in ("mean", "bias"):
            return np.zeros(leaf.shape, np.float32)
        if name == "scale":
            return np.ones(leaf.shape, np.float32)
        if name == "negative_slope":
            return np.full(leaf.shape, 0.25, np.float32)
        fan_in = int(np.prod(leaf.shape[:-1]))
        return rng.normal(0, (1 / fan_in) ** 0.5, leaf.shape).astype(np.float32)

    import jax  # noqa: PLC0415

    variables = jax.tree_util.tree_map_with_path(fill, shapes)
    weights.save_backbone(directory, variables, {"name": "iresnet18", "embedding_dim": 64})


@pytest.mark.slow
def test_evaluate_ijb_bins_and_embed_commands(tmp_path):
    """``evaluate --ijb --bins`` and ``embed`` as documented, on a backbone directory."""
    release, backbone = tmp_path / "IJB_release" / "IJBC", tmp_path / "r18"
    write_release(release, one_n=True)
    _random_backbone(backbone)
    images = [np.asarray(Image.open(release / "loose_crop" / f"{i}.jpg")) for i in range(1, 9)]
    data.write_verification_bin(tmp_path / "lfw.bin", images, [True, False, True, False])
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "faceloss_jax.evaluate",
            f"--workdir={backbone}",
            f"--ijb={release}",
            "--ijb_set=IJBC",
            f"--bins={tmp_path / 'lfw.bin'}",
            "--n_folds=2",
        ],
        env=_env(),
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "IJBC TAR@FAR" in result.stdout and "[lfw]XNorm: " in result.stdout
    assert "(2-fold, insightface thresholds)" in result.stdout
    metrics = json.loads((backbone / "eval" / "ijb" / "ijbc.json").read_text(encoding="utf-8"))
    assert metrics["num_pairs"] == 10 and "rank_1" in metrics
    bins = json.loads((backbone / "eval" / "verification_bins.json").read_text(encoding="utf-8"))
    threshold = bins["lfw"]["threshold"]

    landmark_file = tmp_path / "points.txt"
    lines = (release / "meta" / "ijbc_name_5pts_score.txt").read_text(encoding="utf-8").splitlines()
    landmark_file.write_text("\n".join([lines[0], lines[7]]) + "\n", encoding="utf-8")
    out = tmp_path / "emb.npy"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "faceloss_jax.embed",
            f"--workdir={backbone}",
            str(release / "loose_crop" / "1.jpg"),
            str(release / "loose_crop" / "8.jpg"),
            f"--landmarks={landmark_file}",
            f"--output={out}",
        ],
        env=_env(),
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"threshold {threshold:.4f}" in result.stdout
    emb = np.load(out)
    assert emb.shape == (2, 64)
    # float32 unit vectors of 64 elements: the normalization's norm and this one each
    # ≤ (64/2 + 1)·u: 66·u ≈ 4e-6.
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1, rtol=1e-5)
    similarity = float(emb[0] @ emb[1])
    decision = "same" if similarity >= threshold else "different"
    assert f"cosine {similarity:.4f}  {decision}" in result.stdout


@pytest.mark.slow
def test_bench_ijb_script_runs_at_small_counts(tmp_path):
    out = tmp_path / "bench.md"
    result = subprocess.run(
        [
            sys.executable,
            "experiments/bench_ijb.py",
            "--num_faces=3000",
            "--num_templates=400",
            "--num_subjects=80",
            "--num_pairs=20000",
            "--num_mated=500",
            "--dim=32",
            f"--out={out}",
        ],
        env=_env(),
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "bench.json").read_text(encoding="utf-8"))
    assert report["pairs"] == 20000 and report["templates"] == 400
    assert "peak_alloc_gib" in out.read_text(encoding="utf-8")


def test_embed_library_functions_align_and_compare():
    """``embed.embed_faces`` / ``compare_faces`` on arrays, with a stand-in backbone whose
    embedding is the mean colour of the aligned crop."""
    import flax.linen as nn  # noqa: PLC0415

    from faceloss_jax import embed  # noqa: PLC0415

    class MeanColour(nn.Module):
        @nn.compact
        def __call__(self, images, train):
            return images.mean(axis=(1, 2))

    backbone = weights.Backbone(
        model=MeanColour(),
        variables={},
        model_config={"name": "stub"},
        shift=127.5,
        scale=127.5,
        info={},
    )
    red = np.zeros((230, 230, 3), np.uint8)
    red[..., 0] = 250
    green = np.zeros((112, 112, 3), np.uint8)
    green[..., 1] = 250
    # The red photo at twice the scale, aligned by its landmarks; the green one is a crop.
    emb = embed.embed_faces(backbone, [red, green], np.stack([2 * REF, REF]))
    expected = 2 * (np.array([[250, 0, 0], [0, 250, 0]]) - 127.5) / 127.5
    # float32 means of 112² equal values, ≤ √n·u = 112·u of each (Higham & Mary's
    # probabilistic bound), and the normalization: ≤ 2·112·u ≈ 1.3e-5 of a unit vector.
    # The wrong colour or scale is ≥ 1e-2 off.
    np.testing.assert_allclose(
        emb, expected / np.linalg.norm(expected, axis=1, keepdims=True), atol=2 * 112 * 2.0**-24
    )
    result = embed.compare_faces(
        backbone, red, green, landmarks_a=2 * REF, landmarks_b=REF, threshold=0.0
    )
    # The same embeddings (same inputs, same function), a 3-term float32 dot either
    # side: ≤ 2·3·u ≈ 4e-7.
    assert result["similarity"] == pytest.approx(float(emb[0] @ emb[1]), abs=1e-6)
    assert result["same"] is (result["similarity"] >= 0.0)
    with pytest.raises(ValueError, match="both faces or for neither"):
        embed.compare_faces(backbone, red, green, landmarks_a=REF)
