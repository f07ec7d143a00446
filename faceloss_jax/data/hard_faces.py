"""Hard synthetic faces: fine-grained identities under nuisance, with LFW/CFP-FP/AgeDB-like
pair sets of held-out identities, written as an InsightFace folder.

``data.synthetic`` draws identities far apart (every loss reaches 0.98 on them). Here the
difficulty is a set of knobs (``HardFacesConfig``):

* **Identities** are points ``z_k`` of a ``latent_dim``-dimensional latent, drawn from
  ``N(0, I)`` by dart throwing (a candidate closer than ``min_distance`` to an accepted one
  is rejected), so neighbours are close but never closer than ``min_distance``
  (fine-grained). The image of a latent ``z`` is a face template (an oval, eyes, mouth)
  plus an identity texture ``identity_contrast · Σ_r (M z)_{c,r} cos(ω_r·p + φ_r)`` inside
  the face, a fixed random linear map ``M`` onto a bank of low-frequency cosines.
* **A long tail of images per identity**, as MS1M: ``n_k = min(max_images,
  ⌊min_images·(1 − u)^(−1/tail)⌋)``, ``u ~ U(0, 1)`` (a Pareto law of index ``tail``).
* **Nuisance**, each with a strength knob (0 turns it off):
  ``pose`` (yaw on a cylinder, ``asin``-warped columns, plus roll, scale and shift),
  ``illumination`` (gain, per-channel colour gain, a directional light gradient),
  ``occlusion`` (probability of a random rectangle), ``blur`` (Gaussian σ in pixels),
  ``noise`` (pixel noise σ, image range [0, 1]), ``ageing`` (latent drift
  ``z + ageing·t·d_k`` with age ``t ∈ [0, 1]`` along a direction ``d_k`` shared in part by
  every identity) and ``expression`` (per-image latent jitter).
* **Three pair sets** of held-out identities, each ``num_pairs`` pairs in ``n_folds``
  folds of disjoint identities (contiguous, so the 10-fold protocol tests on unseen
  people, as LFW's folds do), half same, half different: ``lfw`` (mixed: any two images),
  ``cfp_fp`` (a frontal image against a strongly turned one, ``|yaw| ≥ 0.8·pose``) and
  ``agedb_30`` (a young image, ``t ≤ 0.15``, against an old one, ``t ≥ 0.85``).

Everything is a pure function of the config (its ``seed`` included).

Example:
  >>> config = HardFacesConfig(num_identities=1000, held_out_identities=400)
  >>> write_hard_faces_folder("/tmp/hard_faces", config)   # train.rec, lfw.bin, …
"""

import dataclasses
import functools
import json
import os
import pathlib
from collections.abc import Sequence

import numpy as np

from faceloss_jax.data import images, recordio, verification_bin

# Seed-sequence domains: every random quantity has its own stream.
_LATENT, _DECODER, _COUNTS, _TRAIN, _POOL, _PAIRS, _AGEING = range(7)
_NUM_FREQUENCIES = 48  # the cosine bank of the identity texture
_FACE_RADIUS = 0.72  # the face cylinder's radius, in units of the half image width
_MAX_YAW = np.pi / 3  # the yaw of pose = 1 (60°)
# The pair sets: name -> (condition of the first image, of the second image).
PAIR_SETS = {"lfw": ("any", "any"), "cfp_fp": ("frontal", "profile"), "agedb_30": ("young", "old")}
# Images per held-out identity and condition; LFW-like pairs take any two of them.
_POOL_CONDITIONS = {"frontal": 4, "profile": 3, "young": 3, "old": 4}


@dataclasses.dataclass(frozen=True)
class HardFacesConfig:
    """The benchmark's knobs (see the module docstring for each formula).

    Attributes:
      num_identities: training identities (labels ``0 … num_identities − 1``).
      held_out_identities: identities of the pair sets, never in training; a multiple
        of ``n_folds``.
      latent_dim: dimension of the identity latent.
      min_distance: the smallest distance between two identities' latents.
      identity_contrast: amplitude of the identity texture (smaller: more alike faces).
      min_images, max_images, tail: the long tail of training images per identity.
      image_size: side of the square images.
      pose, illumination, occlusion, blur, noise, ageing, expression: nuisance strengths.
      num_pairs: pairs per set (balanced, ``num_pairs / n_folds`` per fold).
      n_folds: folds of the pair sets.
      seed: the seed of everything.
    """

    num_identities: int = 1000
    held_out_identities: int = 400
    latent_dim: int = 16
    min_distance: float = 1.0
    identity_contrast: float = 0.08
    min_images: int = 4
    max_images: int = 60
    tail: float = 1.5
    image_size: int = 16
    pose: float = 1.0
    illumination: float = 1.0
    occlusion: float = 0.3
    blur: float = 0.6
    noise: float = 0.03
    ageing: float = 1.5
    expression: float = 0.3
    num_pairs: int = 6000
    n_folds: int = 10
    seed: int = 0

    def __post_init__(self):
        if self.held_out_identities % self.n_folds:
            raise ValueError(
                f"held_out_identities ({self.held_out_identities}) must be a multiple of "
                f"n_folds ({self.n_folds})"
            )
        if self.num_pairs % (2 * self.n_folds):
            raise ValueError(f"num_pairs ({self.num_pairs}) must be a multiple of 2·n_folds")
        if not 1 <= self.min_images <= self.max_images:
            raise ValueError(f"need 1 <= min_images <= max_images, got {self}")


@dataclasses.dataclass(frozen=True)
class Nuisance:
    """The nuisance of one image: yaw in [−1, 1] (fraction of 60°), roll (radians),
    scale, shift (2,), illumination (gain, colour gains (3,), light (2,)), occluder
    (x0, y0, x1, y1, or None) and its colour, blur σ (pixels), noise σ, age t, and the
    expression offset of the latent."""

    yaw: float
    roll: float
    scale: float
    shift: np.ndarray
    gain: float
    colour: np.ndarray
    light: np.ndarray
    occluder: tuple[float, float, float, float] | None
    occluder_colour: np.ndarray
    blur: float
    noise: float
    age: float
    expression: np.ndarray


def identity_latents(config: HardFacesConfig) -> np.ndarray:
    """The ``(num_identities + held_out_identities, latent_dim)`` latents: dart throwing
    in ``N(0, I)`` with every pair at least ``min_distance`` apart (training identities
    first, then the held-out ones).

    Raises:
      ValueError: ``min_distance`` is too large to place them (1,000 rejections in a row).
    """
    rng = np.random.default_rng([config.seed, _LATENT])
    total = config.num_identities + config.held_out_identities
    accepted = np.empty((total, config.latent_dim))
    count, rejections = 0, 0
    while count < total:
        candidate = rng.standard_normal(config.latent_dim)
        distances = np.linalg.norm(accepted[:count] - candidate, axis=1)
        if count and distances.min() < config.min_distance:
            rejections += 1
            if rejections >= 1000:
                raise ValueError(
                    f"min_distance={config.min_distance} is too large for {total} identities "
                    f"in {config.latent_dim} dimensions (placed {count})"
                )
            continue
        accepted[count], count, rejections = candidate, count + 1, 0
    return accepted


@functools.lru_cache(maxsize=4)
def _decoder(config: HardFacesConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The fixed texture decoder: frequencies ``ω (R, 2)``, phases ``φ (R,)``, the map
    ``M (3, R, latent_dim)`` and the ageing direction shared by all identities."""
    rng = np.random.default_rng([config.seed, _DECODER])
    radius = rng.uniform(0.5, 3.0, _NUM_FREQUENCIES) * np.pi  # ½ to 3 cycles per face
    angle = rng.uniform(0, 2 * np.pi, _NUM_FREQUENCIES)
    omega = radius[:, None] * np.stack([np.cos(angle), np.sin(angle)], axis=1)
    phase = rng.uniform(0, 2 * np.pi, _NUM_FREQUENCIES)
    mixing = rng.standard_normal((3, _NUM_FREQUENCIES, config.latent_dim))
    mixing /= np.sqrt(config.latent_dim * _NUM_FREQUENCIES / 8)
    shared_ageing = rng.standard_normal(config.latent_dim)
    return omega, phase, mixing, shared_ageing / np.linalg.norm(shared_ageing)


def ageing_direction(config: HardFacesConfig, identity: int, shared: np.ndarray) -> np.ndarray:
    """``d_k``: the unit direction identity ``k`` ages along, half ``shared`` (everyone
    ages alike) and half its own."""
    own = np.random.default_rng([config.seed, _AGEING, identity]).standard_normal(shared.shape)
    direction = shared + own / np.linalg.norm(own)
    return direction / np.linalg.norm(direction)


def images_per_identity(config: HardFacesConfig) -> np.ndarray:
    """``(num_identities,)`` training images per identity: the Pareto long tail."""
    u = np.random.default_rng([config.seed, _COUNTS]).uniform(size=config.num_identities)
    counts = np.floor(config.min_images * (1 - u) ** (-1 / config.tail))
    return np.minimum(counts, config.max_images).astype(np.int64)


def draw_nuisance(
    config: HardFacesConfig,
    rng: np.random.Generator,
    *,
    yaw: float | None = None,
    age: float | None = None,
) -> Nuisance:
    """The nuisance of one image at the config's strengths; ``yaw`` and ``age`` fix
    those two (the pair-set conditions), else they are uniform (yaw in ``±pose``, age in
    [0, 1]). Every draw is made whatever the strengths, so a knob changes only its own
    factor of an image."""
    p, light, occ = config.pose, config.illumination, config.occlusion
    draws = rng.uniform(-1, 1, size=16)
    occluder_size = rng.uniform(0.25, 0.5, size=2)
    occluder_corner = rng.uniform(-1, 1 - occluder_size * 2)
    occluded = rng.uniform() < occ
    blur, noise = rng.uniform(0, config.blur), rng.uniform(0.5, 1.0) * config.noise
    expression = rng.standard_normal(config.latent_dim) / np.sqrt(config.latent_dim)
    return Nuisance(
        yaw=p * draws[0] if yaw is None else yaw,
        roll=0.25 * p * draws[1],
        scale=1 + 0.1 * p * draws[2],
        shift=0.1 * p * draws[3:5],
        gain=float(np.exp(0.4 * light * draws[5])),
        colour=np.exp(0.15 * light * draws[6:9]),
        light=0.35 * light * draws[9:11],
        occluder=(*occluder_corner, *(occluder_corner + 2 * occluder_size)) if occluded else None,
        occluder_colour=(draws[11:14] + 1) / 2,
        blur=blur,
        noise=noise,
        age=(draws[14] + 1) / 2 if age is None else age,
        expression=config.expression * expression,
    )


def render(
    config: HardFacesConfig,
    latent: np.ndarray,
    ageing: np.ndarray,
    nuisance: Nuisance,
    rng: np.random.Generator,
) -> np.ndarray:
    """The uint8 ``(image_size, image_size, 3)`` face of ``latent`` under ``nuisance``.

    Image coordinates ``(x, y) ∈ [−1, 1]²`` are mapped back to the face: undo the
    shift, scale and roll, then the yaw ``Y``: a column at ``x`` shows the face column
    ``u = R·sin(asin(x/R) − Y)`` of a cylinder of radius ``R`` (hidden when the angle
    leaves ``[−π/2, π/2]``). The face is the template plus the identity texture of
    ``latent + age·ageing + expression``; then light, occluder, blur and noise.
    ``rng`` draws the pixel noise.
    """
    omega, phase, mixing, _ = _decoder(config)
    n = config.image_size
    axis = (np.arange(n) + 0.5) / n * 2 - 1
    x, y = np.meshgrid(axis, axis)
    x, y = (x - nuisance.shift[0]) / nuisance.scale, (y - nuisance.shift[1]) / nuisance.scale
    cos_r, sin_r = np.cos(nuisance.roll), np.sin(nuisance.roll)
    x, y = cos_r * x + sin_r * y, -sin_r * x + cos_r * y
    inside = np.abs(x) < _FACE_RADIUS
    angle = np.arcsin(np.clip(x / _FACE_RADIUS, -1, 1)) - nuisance.yaw * _MAX_YAW
    visible = inside & (np.abs(angle) <= np.pi / 2)
    u = _FACE_RADIUS * np.sin(angle)

    z = latent + config.ageing * nuisance.age * ageing + nuisance.expression
    coefficients = mixing @ z  # (3, R)
    waves = np.cos(np.tensordot(np.stack([u, y], -1), omega.T, axes=1) + phase)  # (n, n, R)
    texture = config.identity_contrast * np.tensordot(waves, coefficients.T, axes=1)
    oval = ((u / 0.62) ** 2 + (y / 0.85) ** 2 < 1) & visible
    face = _template(u, y) + texture
    image = np.where(oval[..., None], face, np.array([0.25, 0.3, 0.35]))

    ramp = nuisance.light[0] * x + nuisance.light[1] * y
    image = nuisance.gain * nuisance.colour * image + ramp[..., None]
    if nuisance.occluder is not None:
        x0, y0, x1, y1 = nuisance.occluder
        grid_x, grid_y = np.meshgrid(axis, axis)
        box = (grid_x >= x0) & (grid_x <= x1) & (grid_y >= y0) & (grid_y <= y1)
        image = np.where(box[..., None], nuisance.occluder_colour, image)
    if nuisance.blur > 0:
        image = _gaussian_blur(image, nuisance.blur)
    if nuisance.noise > 0:
        image = image + nuisance.noise * rng.standard_normal(image.shape)
    return np.clip(np.rint(image * 255), 0, 255).astype(np.uint8)


def _template(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """The mean face in face coordinates: skin, two eyes, a nose shadow, a mouth."""
    skin = np.array([0.72, 0.55, 0.45])
    dark = 0.0
    for cx, cy, sx, sy, depth in (
        (-0.28, -0.2, 0.12, 0.07, 0.45),
        (0.28, -0.2, 0.12, 0.07, 0.45),
        (0.0, 0.12, 0.06, 0.15, 0.15),
        (0.0, 0.45, 0.22, 0.06, 0.35),
    ):
        dark = dark + depth * np.exp(-(((u - cx) / sx) ** 2) - ((v - cy) / sy) ** 2)
    return skin * (1 - dark[..., None])


def _gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of an ``(H, W, C)`` float image, edges replicated."""
    radius = max(1, int(np.ceil(2.5 * sigma)))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps /= taps.sum()
    padded = np.pad(image, ((radius, radius), (radius, radius), (0, 0)), mode="edge")
    n = image.shape[0]
    rows = sum(w * padded[i : i + n] for i, w in enumerate(taps))
    return sum(w * rows[:, i : i + n] for i, w in enumerate(taps))


def _identity_renderer(config: HardFacesConfig):
    """``(identity, rng, yaw, age) -> uint8 image`` for the config's identities."""
    latents = identity_latents(config)
    shared = _decoder(config)[3]

    def draw(identity: int, rng: np.random.Generator, **condition) -> np.ndarray:
        nuisance = draw_nuisance(config, rng, **condition)
        ageing = ageing_direction(config, identity, shared)
        return render(config, latents[identity], ageing, nuisance, rng)

    return draw


def training_set(config: HardFacesConfig) -> tuple[np.ndarray, np.ndarray]:
    """The training images ``(N, S, S, 3)`` uint8 and labels, identity-major; image
    ``j`` of identity ``k`` draws its nuisance from ``rng([seed, TRAIN, k, j])``."""
    draw = _identity_renderer(config)
    faces, labels = [], []
    for identity, count in enumerate(images_per_identity(config)):
        for j in range(count):
            faces.append(draw(identity, np.random.default_rng([config.seed, _TRAIN, identity, j])))
            labels.append(identity)
    return np.stack(faces), np.array(labels, np.int64)


def _condition(name: str, config: HardFacesConfig, rng: np.random.Generator) -> dict[str, float]:
    """The fixed nuisance of a pool condition: frontal (yaw 0), profile
    (``|yaw| ∈ [0.8, 1]·pose``), young (age ≤ 0.15), old (age ≥ 0.85)."""
    if name == "frontal":
        return {"yaw": 0.0}
    if name == "profile":
        return {"yaw": float(rng.choice([-1, 1]) * rng.uniform(0.8, 1.0) * config.pose)}
    if name == "young":
        return {"age": float(rng.uniform(0.0, 0.15))}
    return {"age": float(rng.uniform(0.85, 1.0))}


def held_out_pool(config: HardFacesConfig) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The held-out identities' images: per identity, ``_POOL_CONDITIONS`` images of
    each condition. Returns images ``(M, S, S, 3)``, identities ``(M,)`` (ids from
    ``num_identities`` on) and each image's condition."""
    draw = _identity_renderer(config)
    faces, identities, conditions = [], [], []
    first = config.num_identities
    for identity in range(first, first + config.held_out_identities):
        for name, count in _POOL_CONDITIONS.items():
            for j in range(count):
                rng = np.random.default_rng([config.seed, _POOL, identity, len(conditions)])
                faces.append(draw(identity, rng, **_condition(name, config, rng)))
                identities.append(identity)
                conditions.append(name)
    return np.stack(faces), np.array(identities), conditions


def make_pair_set(
    config: HardFacesConfig,
    identities: np.ndarray,
    conditions: Sequence[str],
    *,
    first: str,
    second: str,
    set_index: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Pool indices ``(num_pairs, 2)`` and ``issame`` of a set of ``(first, second)``
    condition pairs (``"any"``: every image).

    Fold ``f`` uses only the ``f``-th block of held-out identities and holds
    ``num_pairs / n_folds`` pairs, alternating same / different; same pairs are drawn
    without repetition among the identity's (first, second) image pairs, different
    pairs join a ``first`` image and a ``second`` image of two identities of the fold.

    Raises:
      ValueError: a fold has too few distinct same pairs.
    """
    rng = np.random.default_rng([config.seed, _PAIRS, set_index])
    conditions = np.asarray(conditions)
    per_fold = config.num_pairs // config.n_folds
    blocks = np.array_split(np.unique(identities), config.n_folds)
    pairs, issame = [], []
    for fold_ids in blocks:
        same = []
        for identity in fold_ids:
            a = _images_of(identities, conditions, identity, first)
            b = _images_of(identities, conditions, identity, second)
            same += [(i, j) for i in a for j in b if i < j or (first != second and i != j)]
        if len(same) < per_fold // 2:
            raise ValueError(
                f"a fold of {len(fold_ids)} identities has {len(same)} distinct same pairs "
                f"for ({first}, {second}), fewer than {per_fold // 2}: add held-out identities"
            )
        chosen = [same[i] for i in rng.choice(len(same), per_fold // 2, replace=False)]
        different: set[tuple[int, int]] = set()
        while len(different) < per_fold // 2:
            id_a, id_b = rng.choice(fold_ids, 2, replace=False)
            i = rng.choice(_images_of(identities, conditions, id_a, first))
            j = rng.choice(_images_of(identities, conditions, id_b, second))
            different.add((int(i), int(j)))
        for s, d in zip(chosen, sorted(different, key=lambda _: rng.uniform())):
            pairs += [s, d]
            issame += [True, False]
    return np.array(pairs, np.int64), np.array(issame)


def _images_of(identities: np.ndarray, conditions: np.ndarray, identity: int, name: str):
    mask = identities == identity
    if name != "any":
        mask &= conditions == name
    return np.flatnonzero(mask)


def write_hard_faces_folder(
    directory: str | os.PathLike, config: HardFacesConfig, *, targets: Sequence[str] = ()
) -> pathlib.Path:
    """Writes the benchmark as an InsightFace folder: ``train.rec``/``train.idx``/
    ``property`` (``recordio.write_insightface_recordio``), one ``<name>.bin`` per pair
    set (``verification_bin.write_verification_bin``) and ``hard_faces.json`` (the
    config).

    Args:
      directory: the folder (created).
      config: the knobs.
      targets: pair sets to write (names of ``PAIR_SETS``; default: all three).

    Returns:
      The folder.
    """
    directory = pathlib.Path(directory)
    train_images, train_labels = training_set(config)
    recordio.write_insightface_recordio(
        directory, [images.encode_image(image) for image in train_images], train_labels
    )
    pool, identities, conditions = held_out_pool(config)
    for name in targets or PAIR_SETS:
        first, second = PAIR_SETS[name]
        index = list(PAIR_SETS).index(name)
        pairs, issame = make_pair_set(
            config, identities, conditions, first=first, second=second, set_index=index
        )
        verification_bin.write_verification_bin(
            directory / f"{name}.bin", pool[pairs.reshape(-1)], issame
        )
    (directory / "hard_faces.json").write_text(
        json.dumps(dataclasses.asdict(config), indent=2, sort_keys=True), encoding="utf-8"
    )
    return directory
