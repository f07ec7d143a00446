"""λ annealing ablation of L-Softmax and SphereFace on MNIST (LeNets++, 3-D features).

Both papers train the margin loss through the blend
``f_y = (λ‖W‖‖x‖cos θ + ‖W‖‖x‖ψ(θ)) / (1 + λ)`` with λ annealed from a large value
(``max(λ_min, base·(1 + γ·step)^−power)``, ``losses.lambda_schedule``), because the
m = 4 margin alone is hard to optimize from a random start. This runner compares the
configs' annealing with no annealing (λ = 0: the margin from the first step), and writes
the table ``<out>.csv/.md`` and the features ``<out>.png``.

    python -m experiments.lambda_ablation --out=experiments/results/lambda_ablation
"""

from experiments import common

NO_ANNEALING = {"loss.lambda_base": 0.0, "loss.lambda_min": 0.0}


def settings(losses: tuple[str, ...]) -> list[common.Setting]:
    """Each loss with its config's λ annealing and without (λ = 0 throughout)."""
    return [
        common.Setting(f"{loss} {name}", common.experiment_config(loss, overrides))
        for loss in losses
        for name, overrides in (("annealed λ", {}), ("λ = 0", NO_ANNEALING))
    ]


def main(argv: list[str] | None = None) -> None:
    parser = common.parser(__doc__.splitlines()[0], out="experiments/results/lambda_ablation")
    parser.add_argument("--losses", type=common.names, default=("lsoftmax", "sphereface"))
    args = common.parse_args(parser, argv, module=__spec__.name)
    common.run_table_and_features(
        settings(args.losses),
        args,
        title="λ annealing of L-Softmax and SphereFace (m = 4), LeNets++ 3-D features on MNIST",
        columns=2,
    )


if __name__ == "__main__":
    main()
