"""A claim's figure: each seed's value against the published number and its tolerance."""

from __future__ import annotations

from pathlib import Path

from deepmine.figures import plt, save


def reproduction_png(name, metric, values: dict, published, tolerance, path: Path) -> Path:
    """Each seed's value, their mean ± std, and the published value with its tolerance band."""
    from deepmine.compare.stats import summarize

    fig, ax = plt.subplots(figsize=(6, 4))
    seeds = list(values)
    points = [values[s] for s in seeds]
    if points:
        ax.plot(range(len(points)), points, "o", label="seeds")
        for i, seed in enumerate(seeds):
            ax.annotate(f"seed {seed}", (i, points[i]), textcoords="offset points", xytext=(5, 5))
        stats = summarize(points)
        mean, std = stats.mean, stats.std
        ax.axhline(mean, color="C0", linestyle="--", label=f"reproduced {mean:.4f} ± {std:.4f}")
    if published is not None:
        ax.axhline(published, color="C3", label=f"published {published:.4f}")
        ax.axhspan(
            published - tolerance,
            published + tolerance,
            color="C3",
            alpha=0.12,
            label=f"tolerance ±{tolerance:g}",
        )
    ax.set_xticks(range(len(points)), [str(s) for s in seeds])
    ax.set_xlabel("seed")
    ax.set_ylabel(metric)
    ax.set_title(name)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save(fig, path)
