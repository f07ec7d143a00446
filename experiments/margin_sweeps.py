"""Margin and scale sweeps of the angular losses on MNIST (LeNets++, 3-D features).

Trains one loss's MNIST config for each value of one of its hyper-parameters and plots
open-set verification accuracy (pairs of the held-out digits 7, 8, 9) and closed-set
test accuracy against it; writes ``<out>.csv/.md`` and ``<out>.png``.

    python -m experiments.margin_sweeps --loss=arcface --values=0,0.1,0.2,0.3,0.4,0.5,0.6,0.7 \\
        --out=experiments/results/sweep_arcface_margin
    python -m experiments.margin_sweeps --loss=cosface --values=0,0.1,0.2,0.3,0.4,0.5 \\
        --out=experiments/results/sweep_cosface_margin
    python -m experiments.margin_sweeps --loss=sphereface --values=1,2,3,4 \\
        --out=experiments/results/sweep_sphereface_margin
    python -m experiments.margin_sweeps --loss=arcface --param=scale --values=4,8,16,32,64 \\
        --out=experiments/results/sweep_arcface_scale
"""

from experiments import common


def settings(loss: str, param: str, values: tuple[float, ...]) -> list[common.Setting]:
    """``loss``'s MNIST config with ``loss.<param>`` set to each value (cast to the
    field's type, so SphereFace's integer m stays an integer)."""
    base = common.experiment_config(loss)
    if param not in base.loss:
        raise KeyError(f"the {loss} config has no loss.{param}; it has {sorted(base.loss)}")
    cast = type(base.loss[param])
    return [
        common.Setting(
            f"{loss} {param}={cast(v)}", common.override(base, {f"loss.{param}": cast(v)})
        )
        for v in values
    ]


def main(argv: list[str] | None = None) -> None:
    parser = common.parser(__doc__.splitlines()[0], out="experiments/results/sweep_arcface_margin")
    parser.add_argument("--loss", default="arcface")
    parser.add_argument("--param", default="margin", help="the loss hyper-parameter swept")
    parser.add_argument(
        "--values", type=common.floats, default=(0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
    )
    args = common.parse_args(parser, argv, module=__spec__.name)

    sweep = settings(args.loss, args.param, args.values)
    rows, _ = common.run_settings(
        sweep,
        seeds=args.seeds,
        steps=args.steps,
        runs=args.runs,
        overrides=dict(args.set),
        jobs=args.jobs,
    )
    for row, setting in zip(rows, sweep):
        row[args.param] = setting.config.loss[args.param]
    common.write_table(
        rows,
        args.out,
        command=args.command,
        title=f"{args.loss}: sweep of {args.param}, LeNets++ 3-D on MNIST",
        notes=f"Figure: `{args.out}.png`.",
    )
    x = [row[args.param] for row in rows]
    common.plot_curves(
        {
            f"open-set verification ({args.loss})": (
                x,
                [r["verification_accuracy"] for r in rows],
                [r["verification_accuracy_std"] for r in rows],
            ),
            f"closed-set accuracy ({args.loss})": (
                x,
                [r["closed_set_accuracy"] for r in rows],
                [r["closed_set_accuracy_std"] for r in rows],
            ),
        },
        f"{args.out}.png",
        xlabel=f"{args.param}",
        ylabel="accuracy",
    )


if __name__ == "__main__":
    main()
