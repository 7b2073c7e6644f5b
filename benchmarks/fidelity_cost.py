"""Fidelity against cost across benchmark tables: one picture of where each step stands on issue 6's bar.

Reads a figure spec (JSON) that names rows of ``docs/benchmarks`` tables (their ``results.json``) and plots each
row's VACF deviation from its own table's fine-step reference against its force-field evaluations per fs, one panel
per system. Marker colour says what the ensemble showed: every trajectory stable with no drift resolved (under two
standard errors), stable but drifting, or some trajectories failed; marker shape says what kind of step it is. The
shaded band is the statistical noise floor of the VACF deviation (the largest among the rows whose every trajectory
held; a row of a few survivors has a higher one), below which no two rows can be told apart. A learned network's
cost axis counts only its force-field evaluations: its network calls come on top. Also prints the plotted figures
as a markdown table.

A spec::

    {"title": "...",
     "panels": [{"title": "alanine dipeptide (HBonds), 32 x 50 ps",
                 "points": [{"table": "learned-force-constants-t3-8fs", "row": "T3 learned factors, baked 8 fs",
                             "label": "T3 8 fs, learned factors", "kind": "learned factors"}, ...]}]}

``table`` is a directory under the spec's ``benchmarks`` root (default: the spec's own directory's parent);
``kind`` is one of :data:`MARKERS`.

Usage::

    python benchmarks/fidelity_cost.py docs/benchmarks/fidelity-cost/fidelity-cost.json [--benchmarks DIR]
        [--output PNG]
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

from benchmark_log import emit
from openmm_actionml.report import save_figure

#: Marker of each kind of step.
MARKERS = {"classical": "o", "fitted factors": "s", "learned factors": "D",
           "learned network (+ its calls)": "*"}
#: A drift is resolved when it is this many standard errors from zero.
RESOLVED = 2.0


@dataclass
class Point:
    """One row of one table, as plotted."""

    label: str
    kind: str
    evaluations_per_fs: float
    vacf: float
    noise: float
    drift: float
    drift_error: float
    stable: int
    n_trajectories: int

    @property
    def verdict(self) -> str:
        if self.stable < self.n_trajectories:
            return "some trajectories failed"
        if abs(self.drift) >= RESOLVED * self.drift_error:
            return "stable, drift resolved"
        return "stable, no drift resolved"


#: Colour of each verdict.
COLOURS = {"stable, no drift resolved": "tab:green", "stable, drift resolved": "tab:orange",
           "some trajectories failed": "tab:red"}


def read_point(root: Path, entry: dict) -> Point:
    """The plotted figures of ``entry``'s row, or a SystemExit naming what is missing."""
    path = root / entry["table"] / "results.json"
    if entry.get("kind") not in MARKERS:
        raise SystemExit(f"{entry['label']}: kind must be one of {sorted(MARKERS)}, got {entry.get('kind')!r}.")
    try:
        rows = {row["name"]: row for row in json.loads(path.read_text())["results"]}
    except (OSError, ValueError, KeyError) as error:
        raise SystemExit(f"cannot read the table {path}: {error}")
    if entry["row"] not in rows:
        raise SystemExit(f"{path} has no row {entry['row']!r}; its rows: {', '.join(rows)}.")
    row = rows[entry["row"]]
    vacf, noise = row["vacf_deviation"]
    return Point(entry["label"], entry["kind"], row["evaluations_per_fs"], vacf, noise, row["drift"],
                 row["drift_error"], row["stable"], row["n_trajectories"])


def markdown(panels: list[tuple[str, list[Point]]]) -> str:
    lines = []
    for title, points in panels:
        lines += [f"## {title}", "", "| step | evaluations/fs | stable | drift (kT/DOF/ns) | VACF deviation (noise) |",
                  "|---|---|---|---|---|"]
        lines += [f"| {p.label} | {p.evaluations_per_fs:.3g} | {p.stable}/{p.n_trajectories} | "
                  f"{p.drift:+.3f} ± {p.drift_error:.3f} | {p.vacf:.4f} ({p.noise:.4f}) |" for p in points]
        lines.append("")
    return "\n".join(lines)


def plot(title: str, panels: list[tuple[str, list[Point]]], output: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    figure, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 5.5), squeeze=False)
    for axis, (panel_title, points) in zip(axes[0], panels):
        plotted = [p for p in points if math.isfinite(p.vacf)]  # a row with no survivor has no VACF
        noise = max((p.noise for p in plotted if p.stable == p.n_trajectories),
                    default=max(p.noise for p in plotted))
        axis.axhspan(0.0, noise, color="0.9", zorder=0)
        axis.text(min(p.evaluations_per_fs for p in points), noise, " noise floor", va="bottom", fontsize=8,
                  color="0.4")
        for p in plotted:
            axis.scatter(p.evaluations_per_fs, p.vacf, marker=MARKERS[p.kind], s=160 if MARKERS[p.kind] == "*" else 90,
                         color=COLOURS[p.verdict], edgecolor="black", zorder=3)
            axis.annotate(p.label, (p.evaluations_per_fs, p.vacf), textcoords="offset points", xytext=(7, 3),
                          fontsize=7.5)
        axis.set_yscale("log")
        axis.set_ylim(bottom=min(min(p.vacf for p in plotted), noise) / 1.25)
        axis.set_xlabel("force-field evaluations per fs (cost)")
        axis.set_ylabel("VACF deviation from the fine-step reference")
        axis.set_title(panel_title, fontsize=10)
        axis.grid(alpha=0.3, which="both")
        axis.set_xlim(right=max(p.evaluations_per_fs for p in points) * 1.35)
    handles = ([Line2D([], [], marker="o", linestyle="", color=colour, markeredgecolor="black", label=verdict)
                for verdict, colour in COLOURS.items()]
               + [Line2D([], [], marker=marker, linestyle="", color="white", markeredgecolor="black", label=kind)
                  for kind, marker in MARKERS.items()])
    figure.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8, frameon=False)
    figure.suptitle(title)
    figure.tight_layout(rect=(0, 0.06, 1, 1))
    save_figure(figure, output)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("spec", help="the figure's spec (JSON)")
    parser.add_argument("--benchmarks", help="directory holding the tables (default: the spec's directory's parent)")
    parser.add_argument("--output", help="PNG to write (default: the spec's name with .png)")
    args = parser.parse_args()
    spec_path = Path(args.spec)
    spec = json.loads(spec_path.read_text())
    root = Path(args.benchmarks) if args.benchmarks else spec_path.resolve().parent.parent
    panels = [(panel["title"], [read_point(root, entry) for entry in panel["points"]]) for panel in spec["panels"]]
    output = Path(args.output) if args.output else spec_path.with_suffix(".png")
    plot(spec["title"], panels, output)
    emit(f"# {spec['title']}\n\n`python benchmarks/fidelity_cost.py {' '.join(sys.argv[1:])}`\n\n"
         + markdown(panels) + f"\nwrote {output}")


if __name__ == "__main__":
    main()
