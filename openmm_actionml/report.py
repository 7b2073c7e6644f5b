"""Tables and plots of NVE ensemble results (:mod:`openmm_actionml.ensemble`): a markdown table, a JSON file
and PNG plots of the total energy, the per-element kinetic temperature, the velocity autocorrelation and, when
measured, the radial distribution function.
The first result is the reference the others are read against."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from .atomic import atomic_path
from .ensemble import EnsembleResult


def curve_deviation(curve: np.ndarray, error: np.ndarray, reference: np.ndarray,
                    reference_error: np.ndarray) -> tuple[float, float]:
    """RMS over points of a curve's difference from the reference curve, and the RMS of the two standard errors
    combined (the statistical floor below which differences are noise); NaN if the curves do not compare."""
    if curve.shape != reference.shape or not curve.size or not np.isfinite(curve).all():
        return float("nan"), float("nan")
    difference = float(np.sqrt(np.mean((curve - reference) ** 2)))
    floor = float(np.sqrt(np.mean(error ** 2 + reference_error ** 2)))
    return difference, floor


def vacf_deviation(result: EnsembleResult, reference: EnsembleResult) -> tuple[float, float]:
    """:func:`curve_deviation` of the velocity autocorrelation over its lags."""
    return curve_deviation(result.vacf, result.vacf_error, reference.vacf, reference.vacf_error)


def rdf_deviation(result: EnsembleResult, reference: EnsembleResult,
                  at_temperature: bool = False) -> tuple[float, float]:
    """:func:`curve_deviation` of the radial distribution function over its bins: the ensemble means, or each
    bin's value at the bath's temperature (see :class:`EnsembleResult`)."""
    if at_temperature:
        return curve_deviation(result.rdf_at_temperature, result.rdf_at_temperature_error,
                               reference.rdf_at_temperature, reference.rdf_at_temperature_error)
    return curve_deviation(result.rdf, result.rdf_error, reference.rdf, reference.rdf_error)


def equipartition_cell(result: EnsembleResult) -> str:
    """Each element's temperature over its trajectory's, in per cent (mean ± s.e. over trajectories)."""
    return ", ".join(f"{e} {100 * m:.1f}±{100 * s:.1f}" for e, (m, s) in result.equipartition.items())


def markdown_table(results: Sequence[EnsembleResult]) -> str:
    """One row per result: stable fraction, drift, E RMS, T, the potential energy (and its value at the bath's
    temperature, see :class:`EnsembleResult`) and each element's T over its trajectory's (mean ± s.e. over
    trajectories),
    reversibility, VACF deviation from the first (reference) row, the RDF's deviation when measured (of the means,
    and of the values at the bath's temperature), cost and speed; then any row's notes (the scheme-B solver's
    statistics)."""
    reference = results[0]
    with_rdf = bool(reference.rdf.size)
    rdf_header = f" g({reference.rdf_label}) deviation (noise) | at the bath's T (noise) |" if with_rdf else ""
    header = ("| integrator | h (fs) | stable | drift (kT/DOF/ns) | drift (kJ/mol/ns) | E RMS (kJ/mol) | T (K) | "
              "potential energy (kJ/mol) | at the bath's T (kJ/mol) | per-element T / T (%) | reversibility (nm) | "
              "symplecticity defect | VACF deviation (noise) |"
              f"{rdf_header} evaluations/fs | ps/s |")
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for result in results:
        elements = equipartition_cell(result)
        deviation, floor = vacf_deviation(result, reference)
        symplecticity = "n/a" if np.isnan(result.symplecticity) else f"{result.symplecticity:.1e}"
        vacf = "reference" if result is reference else f"{deviation:.4f} ({floor:.4f})"
        rdf_cell = ""
        if with_rdf:
            cells = [" reference |"] * 2 if result is reference else [
                " {:.4f} ({:.4f}) |".format(*rdf_deviation(result, reference, at_temperature))
                for at_temperature in (False, True)]
            rdf_cell = "".join(cells)
        stable = f"{result.stable}/{result.n_trajectories}" + (
            f"; unstable ones fail at {result.failure_time:.2g} ps" if result.stable < result.n_trajectories else "")
        lines.append(f"| {result.name} | {result.step_fs:g} | {stable} | "
                     f"{result.drift:+.3f} ± {result.drift_error:.3f} | {result.drift_kj:+.3g} | "
                     f"{result.energy_rms:.3f} | {result.temperature:.1f} ± {result.temperature_error:.1f} | "
                     f"{result.potential_energy:.1f} ± {result.potential_energy_error:.1f} | "
                     f"{result.potential_energy_at_temperature:.1f} ± "
                     f"{result.potential_energy_at_temperature_error:.1f} | {elements} | "
                     f"{result.reversibility:.2e} | {symplecticity} | {vacf} |{rdf_cell} "
                     f"{result.evaluations_per_fs:.3g} | "
                     f"{result.ps_per_second:.3g} |")
    notes = [f"- {result.name}: {result.notes}" for result in results if result.notes]
    return "\n".join(lines + ([""] + notes if notes else []))


def write_json(results: Sequence[EnsembleResult], path: str | Path, settings: dict) -> None:
    """The scalar figures and the run's settings, written atomically."""
    reference = results[0]
    rows = [{**r.to_dict(), "vacf_deviation": vacf_deviation(r, reference),
             **({"rdf_deviation": rdf_deviation(r, reference),
                 "rdf_deviation_at_temperature": rdf_deviation(r, reference, at_temperature=True)}
                if reference.rdf.size else {})} for r in results]
    with atomic_path(path, overwrite=True) as tmp:
        Path(tmp).write_text(json.dumps({"settings": settings, "results": rows}, indent=1, default=float))


def save_figure(figure, path: str | Path, dpi: int = 110) -> Path:
    """Write a matplotlib ``figure`` to ``path`` as PNG (atomically) and close it; returns the path."""
    import matplotlib.pyplot as plt
    path = Path(path)
    with atomic_path(path, overwrite=True) as tmp:
        figure.savefig(tmp, dpi=dpi, format="png")
    plt.close(figure)
    return path


def plot(results: Sequence[EnsembleResult], directory: str | Path, title: str) -> list[Path]:
    """``energy.png``, ``temperature.png``, ``vacf.png`` and, when measured, ``rdf.png`` in ``directory``; returns
    their paths."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directory = Path(directory)
    written = []
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]

    def save(figure, name: str, bottom: float = 0.0) -> None:
        figure.suptitle(title, fontsize=10)
        figure.tight_layout(rect=(0.0, bottom, 1.0, 1.0))
        written.append(save_figure(figure, directory / name))

    figure, axis = plt.subplots(figsize=(7.5, 4.5))
    for index, result in enumerate(results):
        stable = np.isfinite(result.energies).all(1)
        if not stable.any():
            continue
        mean = result.energies[stable].mean(0)
        error = result.energies[stable].std(0, ddof=1) / np.sqrt(stable.sum()) if stable.sum() > 1 else 0 * mean
        colour = colours[index % len(colours)]
        axis.plot(result.times, mean, color=colour, lw=1.2, label=f"{result.name} ({stable.sum()}/{len(stable)})")
        axis.fill_between(result.times, mean - error, mean + error, color=colour, alpha=0.2, lw=0)
    axis.set_xlabel("time (ps)")
    axis.set_ylabel("total energy - start (kJ/mol), ensemble mean ± s.e.")
    axis.set_yscale("symlog", linthresh=1.0)  # linear within ±1 kJ/mol, logarithmic beyond
    axis.legend(fontsize=7)
    save(figure, "energy.png")

    elements = list(results[0].element_temperatures)
    legend_height = 0.2 + 0.17 * len(results)  # inches: one line per row, below the panels
    figure, axes = plt.subplots(2, len(elements), figsize=(max(3.2 * len(elements), 7.5), 7.0 + legend_height),
                                squeeze=False)
    for axis, element in zip(axes[1], elements):
        for index, result in enumerate(results):
            series = result.element_series[element]
            running = np.cumsum(series) / np.arange(1, len(series) + 1)
            axis.plot(result.times, running, color=colours[index % len(colours)], lw=1.0)
        axis.set_xlabel("time (ps)")
        axis.set_ylabel(f"{element}: running mean T (K), ensemble")
    for axis, element in zip(axes[0], elements):
        for index, result in enumerate(results):
            mean, error = result.equipartition.get(element, (np.nan, np.nan))
            axis.errorbar([index], [100 * mean], yerr=[100 * error], fmt="o", color=colours[index % len(colours)],
                          label=result.name)
        reference = results[0].equipartition[element]
        axis.axhspan(100 * (reference[0] - reference[1]), 100 * (reference[0] + reference[1]), color="grey",
                     alpha=0.3, lw=0)
        axis.set_title(f"{element}")
        axis.set_xticks([])
        axis.set_ylabel("T(element) / T(trajectory) (%), mean ± s.e.")
    figure.legend(*axes[0][0].get_legend_handles_labels(), loc="lower center", fontsize=7, frameon=False)
    save(figure, "temperature.png", bottom=legend_height / figure.get_figheight())

    figure, axis = plt.subplots(figsize=(7.5, 4.5))
    for index, result in enumerate(results):
        if not np.isfinite(result.vacf).all():
            continue
        lags = result.times[: len(result.vacf)]
        axis.plot(lags, result.vacf, color=colours[index % len(colours)], lw=1.2, label=result.name)
    axis.set_xlabel("lag (ps)")
    axis.set_ylabel("mass-weighted velocity autocorrelation")
    axis.axhline(0.0, color="black", lw=0.5)
    axis.legend(fontsize=7)
    save(figure, "vacf.png")

    if results[0].rdf.size:
        reference = results[0]
        # The curves read at the bath's temperature (EnsembleResult.rdf_at_temperature) where the reference has them:
        # a row whose trajectories run warmer or cooler is then compared at the same temperature.
        panels = [("rdf", "rdf_error", "minus reference (± s.e.)")]
        if np.isfinite(reference.rdf_at_temperature).all():
            panels.append(("rdf_at_temperature", "rdf_at_temperature_error", "at the bath's T,\nminus reference's"))
        figure, axes = plt.subplots(1 + len(panels), 1, figsize=(7.5, 4.5 + 2 * len(panels)), sharex=True,
                                    gridspec_kw={"height_ratios": [2] + [1] * len(panels)})
        axis = axes[0]
        for index, result in enumerate(results):
            if result.rdf.shape != reference.rdf.shape or not np.isfinite(result.rdf).all():
                continue
            colour = colours[index % len(colours)]
            axis.plot(result.rdf_radii, result.rdf, color=colour, lw=1.2, label=result.name)
            for difference, (curve, error, _) in zip(axes[1:], panels):
                difference.errorbar(result.rdf_radii, getattr(result, curve) - getattr(reference, curve),
                                    yerr=getattr(result, error), color=colour, lw=0.8, elinewidth=0.5)
        for difference, (_, error, label) in zip(axes[1:], panels):
            difference.fill_between(reference.rdf_radii, -getattr(reference, error), getattr(reference, error),
                                    color="grey", alpha=0.3, lw=0)
            difference.axhline(0.0, color="black", lw=0.5)
            difference.set_ylabel(label)
        axis.set_ylabel(f"g({reference.rdf_label}), ensemble mean")
        axis.legend(fontsize=7)
        axes[-1].set_xlabel("r (nm)")
        save(figure, "rdf.png")
    return written


def write_report(results: Sequence[EnsembleResult], directory: str | Path, title: str,
                 settings: dict, notes: str = "") -> tuple[str, list[Path]]:
    """``results.md`` (titled :func:`markdown_table`, then ``notes``), ``results.json`` (with ``settings``) and the
    plots in ``directory``, created if needed; returns the table and the plots' paths."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    table = markdown_table(results)
    with atomic_path(directory / "results.md", overwrite=True) as tmp:
        tmp.write_text(f"# {title}\n\n{table}\n" + (f"\n{notes}\n" if notes else ""))
    write_json(results, directory / "results.json", settings)
    return table, plot(results, directory, title)
