"""Open-set verification on synthetic identities: does the literature's ordering hold?

The papers report margin-based losses above the softmax, and ArcFace ≈ CosFace ≥
SphereFace (ArcFace, Deng et al., CVPR 2019, Tables 2 and 8). This runner trains a small
backbone on the synthetic identities (``faceloss_jax.data.synthetic``) with each loss's
face config (the papers' s and m), scaled down to run on a CPU: LeNets++ with 128-d
embeddings on 24×24 images, AdamW with a short cosine schedule (iResNet-18 on 32×32
did not reach 50 steps in 9 minutes on a 2-core CPU; use ``--set=model.name=iresnet18
--set=dataset.image_size=112`` where there is a GPU). It reports closed-set accuracy and
10-fold verification accuracy on pairs of held-out identities, mean ± std over seeds;
writes ``<out>.csv/.md/.png``.

    python -m experiments.synthetic_openset --steps=120 --seeds=0,1 --jobs=2 \\
        --out=experiments/results/synthetic_openset
"""

from experiments import common

LOSSES = ("softmax", "sphereface", "cosface", "arcface")

# The face recipe scaled down for a CPU: every config gets the same backbone, data and
# optimizer; the losses keep their face hyper-parameters (s = 64, m of the papers).
CPU_RECIPE = {
    "model.name": "lenet_pp",
    "model.embedding_dim": 128,
    "dataset.image_size": 24,
    "half_precision": False,
    "batch_size": 64,
    "optimizer.name": "adamw",
    "optimizer.schedule": "cosine",
    "optimizer.learning_rate": 1e-3,
    "eval.num_pairs": 2000,
}


def settings(losses: tuple[str, ...], *, steps: int) -> list[common.Setting]:
    """Each loss's face config with ``CPU_RECIPE``; the λ annealing of L-Softmax and
    SphereFace is compressed so that λ_min is reached halfway through ``steps``."""
    result = []
    for loss in losses:
        config = common.experiment_config(loss, CPU_RECIPE, variant="face")
        if "lambda_gamma" in config.loss:
            ratio = config.loss.lambda_base / config.loss.lambda_min
            gamma = (ratio ** (1 / config.loss.lambda_power) - 1) / (steps / 2)
            config = common.override(config, {"loss.lambda_gamma": gamma})
        result.append(common.Setting(loss, config))
    return result


def main(argv: list[str] | None = None) -> None:
    parser = common.parser(__doc__.splitlines()[0], out="experiments/results/synthetic_openset")
    parser.add_argument("--losses", type=common.names, default=LOSSES)
    parser.set_defaults(steps=120, seeds=(0, 1))
    args = common.parse_args(parser, argv, module=__spec__.name)

    rows, _ = common.run_settings(
        settings(args.losses, steps=args.steps),
        seeds=args.seeds,
        steps=args.steps,
        runs=args.runs,
        overrides=dict(args.set),
        jobs=args.jobs,
    )
    common.write_table(
        rows,
        args.out,
        command=args.command,
        title="Open-set verification on synthetic identities (LeNets++ 128-d, 24×24, CPU recipe)",
        notes=f"Figure: `{args.out}.png`.",
    )
    common.plot_bars(rows, f"{args.out}.png")


if __name__ == "__main__":
    main()
