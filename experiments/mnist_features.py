"""LeNets++ features on MNIST for every loss: the center-loss / SphereFace figures.

Trains LeNets++ on the embedded MNIST digits 0-6 with each loss's
``configs/<loss>.py`` — 2-D features for the losses on raw features (softmax,
DeepID2, center loss), 3-D ones for those that normalize x (or, with ``--dims``, all
in 2-D or 3-D) — and writes

* ``<out>.png``: a grid of the learned test features, one panel per loss (2-D: on the
  plane, as in Wen et al., ECCV 2016, Fig. 2; 3-D: on the unit sphere, as in Liu et al.,
  CVPR 2017, Fig. 1);
* ``<out>.csv`` / ``<out>.md``: closed-set test accuracy, open-set verification
  accuracy on pairs of the held-out digits 7, 8, 9, L_Intra, L_Inter and wall time.

    python -m experiments.mnist_features --out=experiments/results/mnist
    python -m experiments.mnist_features --dims=2 --out=experiments/results/mnist_2d \\
        --losses=softmax,contrastive,center,lsoftmax,sphereface,normface,cosface,arcface
"""

from experiments import common
from faceloss_jax.train_lib import objectives

# Every registered loss, core then successors (the registry's order).
LOSSES = objectives.loss_names()


def settings(losses: tuple[str, ...], *, dims: int | None) -> list[common.Setting]:
    """One setting per loss: its MNIST config, with ``dims``-dimensional features
    unless None."""
    overrides = {} if dims is None else {"model.embedding_dim": dims}
    return [common.Setting(loss, common.experiment_config(loss, overrides)) for loss in losses]


def main(argv: list[str] | None = None) -> None:
    parser = common.parser(__doc__.splitlines()[0], out="experiments/results/mnist")
    parser.add_argument("--losses", type=common.names, default=LOSSES)
    parser.add_argument(
        "--dims",
        type=int,
        choices=(2, 3),
        default=None,
        help="feature dimension of every loss (default: each config's own)",
    )
    args = common.parse_args(parser, argv, module=__spec__.name)

    features = "each config's features" if args.dims is None else f"{args.dims}-D features"
    common.run_table_and_features(
        settings(args.losses, dims=args.dims),
        args,
        title=f"LeNets++ with {features} on MNIST (digits 0-6; open set 7, 8, 9)",
        columns=5,
    )


if __name__ == "__main__":
    main()
