"""The figures of the papers, as PNG files: ROC curves, angle histograms, 2-D/3-D features.

Figures are drawn on ``matplotlib.figure.Figure`` objects with the Agg canvas (no
pyplot state, no display needed) and saved at ``figsize * dpi`` pixels.
"""

import os
from collections.abc import Mapping

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure

from faceloss_jax.evaluation.extract import l2_normalize
from faceloss_jax.evaluation.verification import auc

Size = tuple[float, float]


def _save(fig: Figure, path: str, dpi: int) -> str:
    directory = os.path.dirname(path)
    if directory:
        os.makedirs(directory, exist_ok=True)
    fig.savefig(path, dpi=dpi, format="png")
    return path


def _scatter_by_class(ax, points: np.ndarray, labels: np.ndarray, **kwargs) -> None:
    """One scatter per class: tab10 colours and a legend up to 10 classes, else the
    classes spread evenly over the turbo colour map."""
    classes = np.unique(labels)
    few = len(classes) <= 10
    if few:
        colors = colormaps["tab10"].colors
    else:
        colors = colormaps["turbo"](np.linspace(0, 1, len(classes)))
    for label, color in zip(classes, colors):
        ax.scatter(
            *points[labels == label].T, color=color, s=2, linewidths=0, label=str(label), **kwargs
        )
    if few:
        ax.legend(markerscale=4, fontsize="small", loc="upper right")


def plot_roc(
    curves: Mapping[str, tuple[np.ndarray, np.ndarray]],
    path: str,
    *,
    log_scale: bool = True,
    figsize: Size = (5.0, 5.0),
    dpi: int = 100,
) -> str:
    """ROC curves of several runs on one plot (TAR against FAR, FAR on a log axis).

    Args:
      curves: run name -> ``(fpr, tpr)``, e.g. from ``roc_curve``.
      path: the PNG file to write.
      log_scale: FAR on a logarithmic axis (the face-recognition convention).

    Returns:
      ``path``.
    """
    if not curves:
        raise ValueError("plot_roc needs at least one curve")
    fig = Figure(figsize=figsize)
    ax = fig.add_subplot()
    for name, (fpr, tpr) in curves.items():
        ax.plot(fpr, tpr, label=f"{name} (AUC {auc(fpr, tpr):.4f})")
    if log_scale:
        smallest = min(np.min(fpr[fpr > 0], initial=1.0) for fpr, _ in curves.values())
        ax.set_xscale("log")
        ax.set_xlim(smallest, 1.0)
    ax.set_ylim(0.0, 1.0)
    ax.set_xlabel("False accept rate")
    ax.set_ylabel("True accept rate")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right", fontsize="small")
    fig.tight_layout()
    return _save(fig, path, dpi)


def plot_angle_histograms(
    positive_angles: np.ndarray,
    negative_angles: np.ndarray,
    path: str,
    *,
    bins: int = 90,
    figsize: Size = (6.0, 4.0),
    dpi: int = 100,
) -> str:
    """Histograms of the angles (radians, shown in degrees) of positive and negative pairs.

    The ArcFace paper's figure of the angle distributions: a margin shows as a
    gap between the two modes.
    """
    fig = Figure(figsize=figsize)
    ax = fig.add_subplot()
    edges = np.linspace(0.0, 180.0, bins + 1)
    for angles, name, color in (
        (positive_angles, "positive pairs", "tab:blue"),
        (negative_angles, "negative pairs", "tab:red"),
    ):
        ax.hist(np.degrees(angles), bins=edges, density=True, alpha=0.6, color=color, label=name)
    ax.set_xlim(0.0, 180.0)
    ax.set_xlabel("Angle between the pair (degrees)")
    ax.set_ylabel("Density")
    ax.legend(fontsize="small")
    fig.tight_layout()
    return _save(fig, path, dpi)


def plot_features_2d(
    features: np.ndarray,
    labels: np.ndarray,
    path: str,
    *,
    figsize: Size = (5.0, 5.0),
    dpi: int = 100,
) -> str:
    """2-D features on the plane, coloured by class (the center-loss paper's Fig. 2)."""
    features = np.asarray(features)
    if features.ndim != 2 or features.shape[1] != 2 or len(labels) != len(features):
        raise ValueError(
            f"need features (N, 2) and N labels, got {features.shape} and {len(labels)}"
        )
    fig = Figure(figsize=figsize)
    ax = fig.add_subplot()
    _scatter_by_class(ax, features, np.asarray(labels))
    ax.set_aspect("equal", adjustable="datalim")
    fig.tight_layout()
    return _save(fig, path, dpi)


def plot_features_3d(
    features: np.ndarray,
    labels: np.ndarray,
    path: str,
    *,
    figsize: Size = (5.0, 5.0),
    dpi: int = 100,
) -> str:
    """3-D features projected on the unit sphere, coloured by class (SphereFace's Fig. 1)."""
    features = np.asarray(features)
    if features.ndim != 2 or features.shape[1] != 3 or len(labels) != len(features):
        raise ValueError(
            f"need features (N, 3) and N labels, got {features.shape} and {len(labels)}"
        )
    points = l2_normalize(features)
    fig = Figure(figsize=figsize)
    ax = fig.add_axes((0.0, 0.0, 1.0, 1.0), projection="3d")
    u, v = np.meshgrid(np.linspace(0, 2 * np.pi, 25), np.linspace(0, np.pi, 13))
    ax.plot_wireframe(
        np.cos(u) * np.sin(v), np.sin(u) * np.sin(v), np.cos(v), color="0.8", linewidth=0.3
    )
    _scatter_by_class(ax, points, np.asarray(labels), depthshade=False)
    for set_limits in (ax.set_xlim, ax.set_ylim, ax.set_zlim):
        set_limits(-1.0, 1.0)
    ax.set_box_aspect((1, 1, 1), zoom=1.3)
    ax.set_axis_off()
    return _save(fig, path, dpi)
