"""The face recipe on a synthetic InsightFace folder: LFW / CFP-FP / AgeDB-30 per loss.

Writes (once) an InsightFace dataset folder of synthetic identities
(``data.write_insightface_folder``: ``train.rec``/``train.idx``/``property`` and
``lfw.bin``, ``cfp_fp.bin``, ``agedb_30.bin`` of held-out identities), then trains each
loss's face config on it through the recordio source, as a user would with MS1MV2
(``configs/<loss>.py:face,source=recordio``). The recipe is arcface_torch's, unchanged:
SGD 0.1, momentum 0.9, weight decay 5e-4 on every parameter, the backbone's gradient
clipped to norm 5, warmup then linear decay, s = 64 and the papers' margins. Only the
sizes shrink for a 2-core CPU: iResNet-18 on 16×16 faces, 128-d embeddings, batch 32,
float32 (bfloat16 is emulated on CPUs).

The ``no clip`` rows are the same runs without the backbone clipping (``--no_ablation``
drops them): they test whether clipping is what keeps the margin losses from collapsing.
Reports the final 10-fold accuracy of each target (InsightFace's thresholds, flip TTA),
mean ± std over seeds; writes ``<out>.csv/.md/.png``.

    python -m experiments.face_recipe_synthetic --steps=120 --seeds=0,1,2 \\
        --out=experiments/results/face_recipe_synthetic
"""

import os

from experiments import common
from faceloss_jax import data

LOSSES = ("arcface", "cosface", "softmax")
TARGETS = ("lfw", "cfp_fp", "agedb_30")
METRICS = (*(f"{t}_accuracy" for t in TARGETS), "lfw_xnorm", "train_seconds")

# The folder: 200 training identities × 16 faces, 3 × 600 pairs of 50 held-out ones.
FOLDER = {
    "num_identities": 200,
    "images_per_identity": 16,
    "held_out_identities": 50,
    "num_pairs": 600,
    "image_size": 16,
}

# The face recipe's sizes for a CPU; its optimizer, schedule and loss values stay.
CPU_SIZES = {
    "model.name": "iresnet18",
    "model.embedding_dim": 128,
    "dataset.image_size": FOLDER["image_size"],
    "half_precision": False,
    "batch_size": 32,
    "eval.batch_size": 200,
}

VARIANT = "face,source=recordio"

_LEGEND = (
    "<target>_accuracy: 10-fold verification accuracy on the target's 600 pairs "
    "(InsightFace's 0.01 threshold grid on squared L2 distance, flip TTA), the number "
    "arcface_torch logs as Accuracy-Flip; lfw_xnorm: mean embedding norm on LFW; "
    "train_seconds: wall time of training + evaluation on a shared 2-core CPU. "
    "Values are mean ± std over seeds. 0.5 is chance: a collapsed run maps every face "
    "to one direction."
)


def settings(losses: tuple[str, ...], folder: str, *, ablation: bool) -> list[common.Setting]:
    """Each loss's face config on ``folder`` with ``CPU_SIZES``; with ``ablation``, the
    margin losses again without backbone clipping."""
    base = {**CPU_SIZES, "dataset.path": folder}
    rows = [(loss, loss, base) for loss in losses]
    if ablation:
        unclipped = {**base, "optimizer.grad_clip_norm": None}
        rows += [(f"{loss}, no clip", loss, unclipped) for loss in losses if loss != "softmax"]
    return [
        common.Setting(name, common.experiment_config(loss, overrides, variant=VARIANT))
        for name, loss, overrides in rows
    ]


def main(argv: list[str] | None = None) -> None:
    parser = common.parser(__doc__.splitlines()[0], out="experiments/results/face_recipe_synthetic")
    parser.add_argument("--losses", type=common.names, default=LOSSES)
    parser.add_argument("--no_ablation", dest="ablation", action="store_false")
    parser.set_defaults(steps=120, seeds=(0, 1, 2))
    args = common.parse_args(parser, argv, module=__spec__.name)

    folder = os.path.join(args.runs, "folder")
    if not os.path.exists(os.path.join(folder, "property")):
        data.write_insightface_folder(folder, **FOLDER)
    model = dict(args.set).get("model.name", CPU_SIZES["model.name"])
    rows, _ = common.run_settings(
        settings(args.losses, folder, ablation=args.ablation),
        seeds=args.seeds,
        steps=args.steps,
        runs=args.runs,
        overrides=dict(args.set),
        jobs=args.jobs,
        metrics=METRICS,
    )
    common.write_table(
        rows,
        args.out,
        command=args.command,
        title=f"The face recipe on a synthetic InsightFace folder ({model}, 16×16, CPU sizes)",
        notes=f"Figure: `{args.out}.png`.",
        metrics=METRICS,
        legend=_LEGEND,
    )
    common.plot_bars(rows, f"{args.out}.png", bars=[(f"{t}_accuracy", t) for t in TARGETS])


if __name__ == "__main__":
    main()
