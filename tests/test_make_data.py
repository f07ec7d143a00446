"""The data tools (``data.make_recordio``, ``data.make_bin``) read back through the
project's own readers (``data.recordio.RecordIOSource``, ``data.read_verification_bin``)."""

import pathlib
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from faceloss_jax import data, errors
from faceloss_jax.data import make_bin, make_recordio, recordio

REPO = pathlib.Path(__file__).resolve().parents[1]
SIZE = 12
IDENTITIES = {"alice": 3, "bob": 1, "carol": 2}  # sorted: labels 0, 1, 2


def _image(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8)


@pytest.fixture
def folder(tmp_path) -> pathlib.Path:
    """``root/<name>/<name>_<i:04d>.png`` (lossless, so pixels compare exactly)."""
    root = tmp_path / "faces"
    for k, (name, count) in enumerate(IDENTITIES.items()):
        (root / name).mkdir(parents=True)
        for i in range(1, count + 1):
            Image.fromarray(_image(10 * k + i)).save(root / name / f"{name}_{i:04d}.png")
    return root


def _cli(module: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", f"faceloss_jax.data.{module}", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_make_recordio_round_trips_through_the_reader(folder, tmp_path):
    out = tmp_path / "set"
    result = _cli("make_recordio", f"--images={folder}", f"--out={out}")
    assert result.returncode == 0, result.stderr
    assert f"wrote 6 images of 3 identities to {out}" in result.stdout
    assert sorted(p.name for p in out.iterdir()) == ["property", "train.idx", "train.rec"]
    assert recordio.read_property(out / "property") == (3, SIZE, SIZE)
    source = recordio.RecordIOSource(out, image_size=SIZE)
    assert source.num_classes == 3 and len(source) == 6
    expected = [(k, i) for k, count in enumerate(IDENTITIES.values()) for i in range(1, count + 1)]
    for index, (label, i) in enumerate(expected):
        record = source[index]
        assert record["label"] == label
        np.testing.assert_array_equal(record["image"], _image(10 * label + i))
    assert [list(keys) for keys in source.identity_index()] == [[0, 1, 2], [3], [4, 5]]


def test_make_recordio_names_a_bad_image_and_writes_nothing(folder, tmp_path):
    (folder / "bob" / "bob_0002.png").write_bytes(b"not a png")
    out = tmp_path / "set"
    result = _cli("make_recordio", f"--images={folder}", f"--out={out}")
    assert result.returncode == 1
    assert (
        result.stderr.strip().splitlines()[-1].startswith("FATAL data error: cannot read the image")
    )
    assert "bob_0002.png" in result.stderr and not out.exists()
    assert list(tmp_path.iterdir()) == [folder.parent / "faces"]  # no staging left
    count, identities, skipped = make_recordio.make_recordio(folder, out, on_error="skip")
    assert (count, identities, [pathlib.Path(p).name for p, _ in skipped]) == (
        6,
        3,
        ["bob_0002.png"],
    )
    with pytest.raises(errors.ConfigError, match="holds train.rec, train.idx, property already"):
        make_recordio.make_recordio(folder, out)


def test_make_bin_round_trips_lfw_pairs(folder, tmp_path):
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("1 2\nalice 1 3\ncarol 1 2\nalice 2 bob 1\nbob 1 carol 2\n", encoding="utf-8")
    out = tmp_path / "bins" / "mine.bin"
    result = _cli("make_bin", f"--pairs={pairs}", f"--root={folder}", f"--out={out}")
    assert result.returncode == 0, result.stderr
    assert f"wrote 4 pairs to {out}" in result.stdout
    read = data.read_verification_bin(out, image_size=SIZE)
    assert list(read.issame) == [True, True, False, False]
    # alice = 0, bob = 1, carol = 2; image i of identity k was drawn with seed 10k + i.
    seeds = [1, 3, 21, 22, 2, 11, 11, 22]
    for image, seed in zip(read.images, seeds):
        np.testing.assert_array_equal(image, _image(seed))


def test_make_bin_reads_path_pairs_and_names_bad_lines(folder, tmp_path):
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("alice/alice_0001.png bob/bob_0001.png 0\n", encoding="utf-8")
    assert make_bin.make_bin(pairs, folder, tmp_path / "x.bin") == 1
    np.testing.assert_array_equal(
        data.read_verification_bin(tmp_path / "x.bin", image_size=SIZE).images[1], _image(11)
    )
    pairs.write_text("alice 1\n", encoding="utf-8")
    with pytest.raises(errors.DataError, match=r"pairs.txt:1: expected 'name i j'"):
        make_bin.make_bin(pairs, folder, tmp_path / "y.bin")
    pairs.write_text("alice 1 9\n", encoding="utf-8")
    with pytest.raises(errors.DataError, match="missing image .*alice_0009.jpg"):
        make_bin.make_bin(pairs, folder, tmp_path / "y.bin")
    assert not (tmp_path / "y.bin").exists()
