"""The annotation loop's two plots (PNG, matplotlib Agg), from benchmarks/annotation_loop.py's JSON.

- ``annotation_loop_dice.png``: test Dice against labelled scans, one line per strategy/encoder
  (mean over seeds, +- std; colour: strategy, circles and solid line: pretrained encoder, squares
  and dotted line: scratch), and ``emphysema_laa``'s test Dice as the round-zero level.
- ``annotation_loop_effort.png``: test Dice against cumulative corrected voxels, the same styles;
  dashed (same colour, same markers): the same scans pre-segmented by ``emphysema_laa`` alone (same
  labels, so the same Dice; only the effort differs).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from drasclr_monailabel.utils.atomic import write_with

ARM_STYLES = {"pretrained": {"marker": "o", "linestyle": "-"}, "scratch": {"marker": "s", "linestyle": ":"}}
"""Marker and line of each encoder arm (the part of a run's name after the slash)."""


def plot_all(result: dict[str, Any], folder: Path) -> list[Path]:
    """Write both plots into ``folder`` (created); their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = {name: entry for name, entry in result["strategies"].items() if "skipped" not in entry}
    strategies = list(dict.fromkeys(name.split("/")[0] for name in runs))
    colours = {name: plt.get_cmap("tab10")(strategies.index(name.split("/")[0]) % 10) for name in runs}
    styles = {name: ARM_STYLES[name.split("/")[1]] for name in runs}
    folder.mkdir(parents=True, exist_ok=True)

    dice_figure, axis = plt.subplots(figsize=(7, 4.5))
    for name, entry in runs.items():
        labelled = np.arange(1, len(entry["dice"]) + 1)
        axis.errorbar(labelled, entry["dice"], yerr=entry["dice_std"], capsize=3, color=colours[name], label=name,
                      **styles[name])
    axis.axhline(result["baseline_laa_only"]["test_dice"], color="grey", linestyle="--", label="emphysema_laa (round zero)")
    axis.set_xlabel("labelled scans")
    axis.set_ylabel("test Dice (held-out patient)")
    axis.set_title("Annotation loop: test Dice per round")

    effort_figure, effort_axis = plt.subplots(figsize=(7, 4.5))
    laa = result["baseline_laa_only"]["strategies"]
    for name, entry in runs.items():
        effort_axis.plot(np.cumsum(entry["effort_voxels"]), entry["dice"], color=colours[name], label=name, **styles[name])
        effort_axis.plot(np.cumsum(laa[name]["effort_voxels"]), entry["dice"], color=colours[name], alpha=0.6,
                         **{**styles[name], "linestyle": "--"})
    effort_axis.plot([], [], color="grey", linestyle="--", label="dashed: the same scans, emphysema_laa pre-segmentation")
    effort_axis.set_xlabel("cumulative corrected voxels")
    effort_axis.set_ylabel("test Dice (held-out patient)")
    effort_axis.set_title("Annotation loop: effort against Dice")

    paths = []
    for figure, plot_axis, name in ((dice_figure, axis, "annotation_loop_dice.png"),
                                    (effort_figure, effort_axis, "annotation_loop_effort.png")):
        plot_axis.grid(alpha=0.3)
        plot_axis.legend(fontsize=7)
        figure.tight_layout()
        path = folder / name
        write_with(path, lambda tmp, f=figure: f.savefig(tmp, dpi=120, format="png"))
        plt.close(figure)
        paths.append(path)
    return paths
