"""Does ``actionml check`` predict where a surrogate's thermostatted ensemble lies? Its first-order shift of V's
mean, from held-out reference frames, against the shift measured on each model's own-ensemble rows.

    python benchmarks/ensemble_check.py --model A.pt --model B.pt ... --data heldout.npz ... \\
        --results results/results.json [--stride 25] [--output-dir results/check]

``--results`` is the ``results.json`` of a table (``amoeba_water.py`` or ``actionml evaluate``) holding a reference
row and, for each model, a row named "... (MODEL-STEM), own-ensemble starts ..." (``--thermalise``). The measured
shift is that row's potential energy (in V) at the bath's temperature minus the reference row's (each the line
through its trajectories' temperature and potential-energy means, which removes the spread of the NVE starts'
energies; see ``EnsembleResult``). Writes ``check.md`` and ``check.png``.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch  # noqa: F401  (before openmm: openmmtorch's plugins need torch's libraries loaded)
import numpy as np

from openmm_actionml.atomic import atomic_path
from openmm_actionml.dataset import ReferenceDataset
from openmm_actionml.ensemble_check import check_model
from openmm_actionml.modelfile import load_model
from openmm_actionml.report import save_figure


def measured_shift(rows: list[dict], stem: str) -> tuple[float, float]:
    """Own-ensemble potential energy of model ``stem`` at the bath's temperature minus the reference's, with the
    combined standard error."""
    reference = next(row for row in rows if row["name"].startswith("reference"))
    own = [row for row in rows if f"({stem}), own" in row["name"]]
    if not own:
        raise SystemExit(f"no own-ensemble row of {stem} in the results; run amoeba_water.py with --thermalise.")
    return (own[0]["potential_energy_at_temperature"] - reference["potential_energy_at_temperature"],
            float(np.hypot(own[0]["potential_energy_at_temperature_error"],
                           reference["potential_energy_at_temperature_error"])))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", required=True, help="model file (repeatable)")
    parser.add_argument("--data", nargs="+", required=True, help="held-out reference data of V")
    parser.add_argument("--results", required=True, help="results.json with the reference and own-ensemble rows")
    parser.add_argument("--stride", type=int, default=25, help="every n-th frame of each segment (default 25)")
    parser.add_argument("--output-dir", default="results/check")
    args = parser.parse_args()
    dataset = ReferenceDataset.concatenate([ReferenceDataset.load(path) for path in args.data])
    rows = json.loads(Path(args.results).read_text())["results"]
    lines = ["| model | energy error | predicted shift (kJ/mol) | measured shift (kJ/mol) |", "|---|---|---|---|"]
    points = []
    for path in args.model:
        model = load_model(path)
        check = check_model(model, dataset, stride=args.stride)
        measured, error = measured_shift(rows, model.path.stem)
        points.append((model.path.stem, check.energy_shift, check.energy_shift_error, measured, error))
        lines.append(f"| {model.path.stem} | {check.energy_error:.2%} | {check.energy_shift:+.1f} ± "
                     f"{check.energy_shift_error:.1f} | {measured:+.0f} ± {error:.0f} |")
        print(lines[-1], flush=True)
    output = Path(args.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    with atomic_path(output / "check.md", overwrite=True) as tmp:
        tmp.write_text(f"{check.n_frames} held-out frames of {check.n_segments} segments "
                       f"({', '.join(Path(p).name for p in args.data)})\n\n" + "\n".join(lines) + "\n")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    figure, axes = plt.subplots(figsize=(5.5, 4.5))
    names = [p[0] for p in points]
    prefix = len(os.path.commonprefix(names)) if len(names) > 1 else 0
    suffix = len(os.path.commonprefix([n[::-1] for n in names])) if len(names) > 1 else 0
    for name, x, dx, y, dy in points:
        axes.errorbar(x, y, xerr=dx, yerr=dy, fmt="o", capsize=3)
        axes.annotate(name[prefix:len(name) - suffix] or name, (x, y), fontsize=7, xytext=(4, -3),
                      textcoords="offset points")
    low = min(min(p[1] - p[2], p[3] - p[4]) for p in points)
    top = max(max(p[1] + p[2], p[3] + p[4]) for p in points)
    axes.plot([low, top], [low, top], "k:", lw=1, label="measured = predicted")
    axes.set_xlabel("first-order shift from held-out frames, -cov(V, W - V)/kT (kJ/mol)")
    axes.set_ylabel("measured shift of V at the bath's T (kJ/mol)")
    axes.legend(fontsize=8)
    figure.tight_layout()
    save_figure(figure, output / "check.png", dpi=130)
    print(f"wrote {output / 'check.md'} and check.png")


if __name__ == "__main__":
    main()
