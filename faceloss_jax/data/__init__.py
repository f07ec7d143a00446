"""Data: the embedded MNIST, face formats, synthetic identities and grain pipelines.

    from faceloss_jax import data

    config = data.default_config("mnist")           # or image_folder/recordio/synthetic
    train = data.create_source(config, "train")      # {"image": uint8, "label": int}
    it = data.create_iterator(train, config, global_batch_size=256, seed=0, train=True)
    batch = data.reshape_for_pmap(next(it), jax.local_device_count())

No TensorFlow is imported: the MNIST builder writes and reads array_record files
with TFDS's NumPy path, the face formats are parsed here and decoded with Pillow.
"""

from faceloss_jax.data.align import ARCFACE_REFERENCE
from faceloss_jax.data.align import align_face
from faceloss_jax.data.align import landmarks_68_to_5
from faceloss_jax.data.align import similarity_transform
from faceloss_jax.data.align import warp_affine
from faceloss_jax.data.config import default_config
from faceloss_jax.data.image_folder import ImageFolderSource
from faceloss_jax.data.image_folder import ScanReport
from faceloss_jax.data.images import CorruptImageError
from faceloss_jax.data.mnist import EmbeddedMnist
from faceloss_jax.data.pipeline import augment
from faceloss_jax.data.pipeline import create_iterator
from faceloss_jax.data.pipeline import normalize
from faceloss_jax.data.pipeline import reshape_for_pmap
from faceloss_jax.data.recordio import RecordIOError
from faceloss_jax.data.recordio import RecordIOSource
from faceloss_jax.data.recordio import write_insightface_recordio
from faceloss_jax.data import hard_faces
from faceloss_jax.data import sources
from faceloss_jax.data.source_base import Source
from faceloss_jax.data.sources import SOURCES
from faceloss_jax.data.sources import create_source
from faceloss_jax.data.sources import num_classes
from faceloss_jax.data.synthetic import class_directions
from faceloss_jax.data.synthetic import feature_batch
from faceloss_jax.data.synthetic import SyntheticFaces
from faceloss_jax.data.synthetic import write_insightface_folder
from faceloss_jax.data.verification_bin import PairSet
from faceloss_jax.data.verification_bin import read_verification_bin
from faceloss_jax.data.verification_bin import write_verification_bin
