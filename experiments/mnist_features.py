"""LeNets++ features on MNIST for every loss: the center-loss / SphereFace figures.

Trains LeNets++ with 2-D (or, with ``--dims=3``, 3-D) features on the embedded MNIST
digits 0-6 with each loss's ``configs/<loss>.py``, and writes

* ``<out>.png``: a grid of the learned test features, one panel per loss (2-D: on the
  plane, as in Wen et al., ECCV 2016, Fig. 2; 3-D: on the unit sphere, as in Liu et al.,
  CVPR 2017, Fig. 1);
* ``<out>.csv`` / ``<out>.md``: closed-set test accuracy, open-set verification
  accuracy on pairs of the held-out digits 7, 8, 9, L_Intra, L_Inter and wall time.

    python -m experiments.mnist_features --out=experiments/results/mnist_2d
    python -m experiments.mnist_features --dims=3 \\
        --losses=softmax,lsoftmax,sphereface,normface,cosface,arcface \\
        --out=experiments/results/mnist_3d
"""

from experiments import common

LOSSES = (
    "softmax",
    "contrastive",
    "triplet",
    "center",
    "lsoftmax",
    "sphereface",
    "normface",
    "cosface",
    "arcface",
)


def settings(losses: tuple[str, ...], *, dims: int) -> list[common.Setting]:
    """One setting per loss: its MNIST config with ``dims``-dimensional features."""
    return [
        common.Setting(loss, common.load_config(loss, {"model.embedding_dim": dims}))
        for loss in losses
    ]


def main(argv: list[str] | None = None) -> None:
    parser = common.parser(__doc__.splitlines()[0], out="experiments/results/mnist_2d")
    parser.add_argument("--losses", type=common.names, default=LOSSES)
    parser.add_argument("--dims", type=int, choices=(2, 3), default=2)
    args = common.parse_args(parser, argv, module=__spec__.name)

    common.run_table_and_features(
        settings(args.losses, dims=args.dims),
        args,
        title=f"LeNets++ with {args.dims}-D features on MNIST (digits 0-6; open set 7, 8, 9)",
    )


if __name__ == "__main__":
    main()
