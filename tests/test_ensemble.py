"""NVE ensembles in OpenMM (ensemble.py), the evaluation's rows (evaluate.py) and the report (report.py)."""
from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import openmm as mm
import openmm.unit as u

from openmm_actionml.ensemble import Candidate, EnsembleOptions, Starts, equilibrated_starts, failure_samples, \
    read_starts, resumable_starts, run_ensemble, run_ensembles, set_start, summarise_ensemble, thermalised_starts, \
    velocity_autocorrelation
from openmm_actionml.diagnostics import element_temperature_series, element_temperatures
from openmm_actionml.errors import InputError
from openmm_actionml.evaluate import verlet_candidate
from openmm_actionml.integrator import SplittingIntegrator
from openmm_actionml.report import markdown_table, plot, vacf_deviation, write_json
from openmm_actionml.systems import particle_masses, with_hydrogen_mass
from openmm_actionml.units import BOLTZMANN

OPTIONS = EnsembleOptions(n_trajectories=2, duration=0.2, sample_interval=0.004, reversibility_time=0.1,
                          correlation_time=0.05)


@pytest.fixture(scope="module")
def starts(alanine_hbonds):
    return equilibrated_starts(alanine_hbonds.system, alanine_hbonds.positions, 300.0, 2, spacing=0.05,
                               equilibration=0.05, platform="Reference")


@pytest.fixture(scope="module")
def elements(alanine_hbonds):
    return [atom.element.symbol for atom in alanine_hbonds.topology.atoms()]


def test_starts_have_no_centre_of_mass_motion(starts):
    momentum = (starts.masses[None, :, None] * starts.velocities).sum(1)
    assert np.abs(momentum).max() < 1e-12 * np.abs(starts.masses[:, None] * starts.velocities[0]).max() * 22


def test_vacf_of_a_rotating_velocity_is_its_cosine():
    """v(t) = (cos wt, sin wt): v(0).v(t) = cos(wt) for every time origin, so the estimate is exact."""
    times = np.arange(200) * 0.01
    omega = 7.0
    velocities = np.stack([np.cos(omega * times), np.sin(omega * times), 0 * times], -1)[None, :, None, :]
    vacf, _ = velocity_autocorrelation(np.repeat(velocities, 2, 0), np.array([2.0]), times, 0.5)
    assert np.allclose(vacf, np.cos(omega * times[: len(vacf)]), atol=1e-12) and len(vacf) == 51


def test_element_temperature_series_averages_to_the_whole_run():
    """Each sample's per-element temperature is the trajectory-averaged m v^2 of that element over its degrees of
    freedom, and the series' mean is the run's per-element temperature (the same sums in another order)."""
    rng = np.random.default_rng(0)
    masses = np.array([12.0, 1.0, 1.0, 16.0])
    elements = ["C", "H", "H", "O"]
    dof = np.array([2.5, 2.0, 2.0, 2.9])
    velocities = rng.normal(size=(3, 5, 4, 3))
    series = element_temperature_series(velocities, masses, elements, dof)
    for sample in range(5):
        expected = element_temperatures(velocities[:, sample], masses, elements, dof)
        assert {e: series[e][sample] for e in expected} == pytest.approx(expected, rel=1e-12)
    whole = element_temperatures(velocities, masses, elements, dof)
    assert {e: series[e].mean() for e in whole} == pytest.approx(whole, rel=1e-12)
    hydrogen = (masses[1:3, None] * velocities[:, 2, 1:3] ** 2).sum() / 3 / (BOLTZMANN * 4.0)
    assert series["H"][2] == pytest.approx(hydrogen, rel=1e-12)


def test_potential_energy_is_total_minus_kinetic_averaged_per_trajectory():
    """Total energies built as U_b(t) + sum m v^2 / 2 give back U: its mean over each stable trajectory's samples,
    then the mean and standard error over trajectories; an unstable trajectory (NaN after its failure) is left out."""
    rng = np.random.default_rng(1)
    masses = np.array([16.0, 1.0, 1.0])
    times = np.arange(6) * 0.01
    velocities = rng.normal(size=(4, 6, 3, 3))
    potentials = rng.normal(-40.0, 3.0, size=(4, 6))
    energies = potentials + 0.5 * (masses[:, None] * velocities ** 2).sum((-1, -2))
    energies[3, 2:] = np.nan
    stable = np.array([True, True, True, False])
    unconserved = replace(OPTIONS, runaway_factor=np.inf)  # random totals: no runaway criterion
    result = summarise_ensemble("synthetic", 0.001, times, energies, velocities, stable, masses,
                                np.zeros((0, 2), dtype=int), ["O", "H", "H"], 300.0, unconserved, float("nan"), 1.0,
                                1.0)
    per_trajectory = potentials[:3].mean(-1)
    assert result.potential_energy == pytest.approx(per_trajectory.mean(), rel=1e-12)
    assert result.potential_energy_error == pytest.approx(per_trajectory.std(ddof=1) / np.sqrt(3), rel=1e-10)


def test_a_trajectory_that_runs_away_and_levels_off_counts_as_unstable_from_its_crossing():
    """Three atoms without constraints have n_dof = 6; at 300 K half an n_dof kT is 7.48 kJ/mol. A trajectory whose
    energy rises by 10 kJ/mol at its fourth sample and stays there fails there, one stopped after its third sample
    fails at its last, one rising by 5 kJ/mol is stable; the potential energy is the stable one's alone."""
    rng = np.random.default_rng(4)
    masses = np.array([16.0, 1.0, 1.0])
    times = np.arange(8) * 0.01
    velocities = rng.normal(size=(3, 8, 3, 3))
    kinetic = 0.5 * (masses[:, None] * velocities ** 2).sum((-1, -2))
    rise = np.array([0.0, 0.0, 0.0, 10.0, 10.0, 10.0, 10.0, 10.0])
    energies = -40.0 + np.stack([rise / 2, rise, np.zeros(8)])
    energies[2, 3:] = np.nan
    limit = 0.5 * 6 * BOLTZMANN * 300.0
    assert failure_samples(energies, limit).tolist() == [-1, 3, 2]
    assert failure_samples(energies, 2 * limit).tolist() == [-1, -1, 2]
    ran_to_the_end = np.isfinite(energies).all(1)
    result = summarise_ensemble("synthetic", 0.001, times, energies, velocities, ran_to_the_end, masses,
                                np.zeros((0, 2), dtype=int), ["O", "H", "H"], 300.0, OPTIONS, float("nan"), 1.0, 1.0)
    assert (result.stable, result.n_trajectories) == (1, 3)
    assert result.failure_time == pytest.approx((times[3] + times[2]) / 2)
    assert result.potential_energy == pytest.approx((energies[0] - kinetic[0]).mean(), rel=1e-12)


def test_potential_energy_at_the_bath_temperature_follows_the_virial_theorem():
    """Independent harmonic oscillators in NVE, started from a canonical draw at 300 K and sampled over many
    periods: by the virial theorem each trajectory's mean U equals its mean K = n_dof k T_b / 2 up to the
    finite-time average, so the line through the (T_b, U_b) means reads n_dof k T / 2 at 300 K within its standard
    error (4 s.e.), an error below the plain mean's, which carries the spread of the start energies (here by
    9x)."""
    rng = np.random.default_rng(7)
    n_trajectories, n_atoms, temperature = 16, 8, 300.0
    masses = rng.uniform(1.0, 16.0, n_atoms)
    omega = rng.uniform(50.0, 300.0, (n_atoms, 3))  # rad/ps
    times = np.sort(rng.uniform(0.0, 2.0, 400))
    kt = BOLTZMANN * temperature
    x0 = rng.normal(size=(n_trajectories, n_atoms, 3)) * np.sqrt(kt / masses[:, None]) / omega
    v0 = rng.normal(size=(n_trajectories, n_atoms, 3)) * np.sqrt(kt / masses[:, None])
    phase = omega * times[:, None, None]  # [T, N, 3]
    velocities = -x0[:, None] * omega * np.sin(phase) + v0[:, None] * np.cos(phase)
    energies = 0.5 * (masses[:, None] * (v0 ** 2 + (omega * x0) ** 2)).sum((-1, -2))[:, None].repeat(len(times), 1)
    options = replace(OPTIONS, n_trajectories=n_trajectories)
    result = summarise_ensemble("oscillators", 0.001, times, energies, velocities, np.ones(n_trajectories, bool),
                                masses, np.zeros((0, 2), dtype=int), ["C"] * n_atoms, temperature, options,
                                float("nan"), 1.0, 1.0)
    expected = (3 * n_atoms - 3) * kt / 2  # the summary's n_dof leaves out the centre of mass's three
    assert abs(result.potential_energy_at_temperature - expected) < 4 * result.potential_energy_at_temperature_error
    assert result.potential_energy_at_temperature_error < result.potential_energy_error


def test_rdf_is_read_over_the_kept_trajectories_and_at_the_bath_temperature():
    """Per-trajectory curves that lie exactly on a line in each trajectory's kinetic temperature read back that
    line's value at 300 K (to round-off, with a zero standard error), and their plain mean is the kept trajectories'
    mean; a trajectory that ran away (its energy rose by more than the runaway limit) is left out of both, whatever
    its curve."""
    rng = np.random.default_rng(3)
    masses = np.array([16.0, 1.0, 1.0])
    times = np.arange(8) * 0.01
    velocities = rng.normal(size=(5, 8, 3, 3)) * np.sqrt(BOLTZMANN * 300.0 / masses[:, None])
    temperatures = (masses[:, None] * velocities ** 2).sum((-1, -2)).mean(-1) / (BOLTZMANN * 6)
    base, slope = rng.uniform(0.5, 2.0, 10), rng.normal(size=10) * 0.01
    curves = base + slope * (temperatures[:, None] - 300.0)
    curves[4] = 1e3
    energies = np.full((5, 8), -40.0)
    energies[4, 3:] += 100.0  # runs away: more than half an n_dof kT (7.5 kJ/mol) from its start
    result = summarise_ensemble("synthetic", 0.001, times, energies, velocities, np.ones(5, bool), masses,
                                np.zeros((0, 2), dtype=int), ["O", "H", "H"], 300.0, OPTIONS, float("nan"), 1.0, 1.0,
                                rdf_curves=curves)
    assert result.stable == 4
    np.testing.assert_allclose(result.rdf, curves[:4].mean(0), rtol=1e-12)
    np.testing.assert_allclose(result.rdf_at_temperature, base, rtol=1e-10)
    assert np.all(result.rdf_at_temperature_error < 1e-10)


def test_ensemble_figures_and_reversibility(alanine_hbonds, starts, elements):
    """T3 at 4 fs with HBonds on Reference: stable; reversible to round-off amplified over 25 steps (measured
    ~1e-12 nm; the bound 1e-8 nm sits far below what an irreversible map gives, checked with Langevin
    half-steps, whose random kicks do not run backwards: > 1e-4 nm)."""
    system = alanine_hbonds.system
    nve = run_ensemble(Candidate("T3", 0.004, system, lambda: SplittingIntegrator("T3", 0.004)), starts, 300.0,
                       OPTIONS, elements, "Reference")
    assert nve.stable == 2 and nve.reversibility < 1e-8 and nve.evaluations_per_fs == pytest.approx(3 / 4)
    assert np.isfinite([nve.drift, nve.drift_error, nve.energy_rms, nve.temperature]).all()
    assert set(nve.equipartition) == {"C", "H", "N", "O"} and nve.energies.shape == (2, 51)
    assert nve.energies[:, 0].tolist() == [0.0, 0.0] and np.isclose(nve.vacf[0], 1.0)
    langevin = run_ensemble(Candidate("T3 NVT", 0.004, system,
                                      lambda: SplittingIntegrator("T3", 0.004, temperature=300, friction=50.0)),
                            starts, 300.0, OPTIONS, elements, "Reference")
    assert langevin.reversibility > 1e-4 and langevin.stable == 2  # a thermostat's energy changes are no runaway


@pytest.mark.parametrize("platform", ["Reference", "CPU"])
def test_an_unstable_integrator_is_counted_not_raised(alanine_hbonds, starts, elements, platform):
    """Reference's VerletIntegrator runs on through NaN, so its speed is timed; CPU's raises, and the speed is
    timed over the chunks finished before it (or NaN): neither may abort the ensemble."""
    result = run_ensemble(verlet_candidate("Verlet 8 fs", alanine_hbonds.system, 0.008), starts, 300.0,
                          EnsembleOptions(n_trajectories=2, duration=1.0, sample_interval=0.008), elements, platform)
    assert result.stable == 0 and np.isnan(result.drift) and np.isnan(result.reversibility)
    assert result.ps_per_second > 0 if platform == "Reference" else not result.ps_per_second <= 0


def test_other_masses_get_velocities_of_the_same_temperature(alanine_hbonds, starts, elements):
    """HMR: the start's velocities rescaled to the new masses keep the start's kinetic energy exactly (so, with
    the same constraints, its temperature), satisfy the velocity constraints and leave the centre of mass at
    rest."""
    hmr = with_hydrogen_mass(alanine_hbonds.system, alanine_hbonds.topology, 1.5)
    context = mm.Context(hmr, mm.VerletIntegrator(0.001), mm.Platform.getPlatformByName("Reference"))
    masses = particle_masses(hmr)
    set_start(context, starts, 0, masses)
    v = context.getState(getVelocities=True).getVelocities(asNumpy=True).value_in_unit(u.nanometer / u.picosecond)
    assert np.abs((masses[:, None] * v).sum(0)).max() < 1e-10
    start_twice_kinetic = (starts.masses[:, None] * starts.velocities[0] ** 2).sum()
    assert (masses[:, None] * v ** 2).sum() == pytest.approx(start_twice_kinetic, rel=1e-12)
    bonds = [hmr.getConstraintParameters(k)[:2] for k in range(hmr.getNumConstraints())]
    positions = context.getState(getPositions=True).getPositions(asNumpy=True).value_in_unit(u.nanometer)
    assert max(abs(np.dot(v[i] - v[j], positions[i] - positions[j])) for i, j in bonds) < 1e-9
    assert not np.allclose(v, starts.velocities[0])
    result = run_ensemble(verlet_candidate("HMR", hmr, 0.004), starts, 300.0, OPTIONS, elements, "Reference")
    assert result.stable == 2


def test_parallel_ensembles_equal_serial_ones(alanine_hbonds, starts, elements):
    """Forked workers run the same deterministic (Reference) trajectories as one process does, in order."""
    candidates = [verlet_candidate(f"Verlet {h * 1000:g} fs", alanine_hbonds.system, h) for h in (0.001, 0.002)]
    serial = run_ensembles(candidates, starts, 300.0, OPTIONS, elements, "Reference")
    parallel = run_ensembles(candidates, starts, 300.0, OPTIONS, elements, "Reference", jobs=2)
    assert [r.name for r in parallel] == ["Verlet 1 fs", "Verlet 2 fs"]
    for one, other in zip(serial, parallel):
        assert np.array_equal(one.energies, other.energies) and one.reversibility == other.reversibility
    with pytest.raises(InputError, match="jobs must be a positive integer"):
        run_ensembles(candidates, starts, 300.0, OPTIONS, elements, jobs=0)


def test_a_cached_run_resumes_with_the_figures_of_an_uninterrupted_one(tmp_path, alanine_hbonds, starts, elements):
    """Trajectories read back from the cache (stable or not) give the figures of the run that wrote them; one
    missing is run again; a row labelled otherwise reads them; other settings get files of their own; a corrupt
    file is named, not read."""
    options = replace(OPTIONS, duration=1.0, sample_interval=0.008)
    for step in (0.002, 0.008):  # Verlet at 8 fs is unstable here
        candidate = verlet_candidate(f"Verlet {step * 1000:g} fs", alanine_hbonds.system, step)
        directory = tmp_path / str(step)
        fresh = run_ensemble(candidate, starts, 300.0, options, elements, "Reference", cache_dir=directory)
        files = sorted(directory.glob("*.npz"))
        assert len(files) == len(starts)
        files[0].unlink()
        messages = []
        resumed = run_ensemble(candidate, starts, 300.0, options, elements, "Reference", messages.append, directory)
        assert sum("read from" in line for line in messages) == len(starts) - 1
        assert resumed.stable == fresh.stable
        assert np.array_equal(resumed.energies, fresh.energies, equal_nan=True)
        for key in ("drift", "energy_rms", "temperature", "equipartition", "reversibility"):
            np.testing.assert_equal(getattr(resumed, key), getattr(fresh, key), err_msg=key)
    assert fresh.stable == 0 and resumed.stable == 0
    messages = []  # the same row labelled otherwise reads the same files
    run_ensemble(replace(candidate, name="Verlet, labelled otherwise"), starts, 300.0, options, elements, "Reference",
                 messages.append, directory)
    assert sum("read from" in line for line in messages) == len(starts)
    run_ensemble(candidate, starts, 300.0, replace(options, duration=0.5), elements, "Reference", cache_dir=directory)
    assert len(list(directory.glob("*.npz"))) == 2 * len(starts)
    files[1].write_bytes(b"not an npz file")
    with pytest.raises(InputError, match=f"{files[1].name} is unreadable.*delete it"):
        run_ensemble(candidate, starts, 300.0, options, elements, "Reference", cache_dir=directory)


def test_parallel_ensembles_refuse_what_a_fork_cannot_run(alanine_hbonds, starts, elements):
    """Forked workers hang on the CPU platform's PME (observed: every child waits in its FFT pool) and cannot
    inherit a GPU context, so those parallel runs are refused before any work, with the fix named."""
    candidates = [verlet_candidate("Verlet 2 fs", alanine_hbonds.system, 0.002)] * 2
    with pytest.raises(InputError, match="OpenCL platform does not survive"):
        run_ensembles(candidates, starts, 300.0, OPTIONS, elements, "OpenCL", jobs=2)
    with pytest.raises(InputError, match="name platform 'CPU' or 'Reference'"):
        run_ensembles(candidates, starts, 300.0, OPTIONS, elements, None, jobs=2)
    periodic = mm.XmlSerializer.clone(alanine_hbonds.system)
    periodic.setDefaultPeriodicBoxVectors(mm.Vec3(3, 0, 0), mm.Vec3(0, 3, 0), mm.Vec3(0, 0, 3))
    next(f for f in periodic.getForces() if isinstance(f, mm.NonbondedForce)).setNonbondedMethod(mm.NonbondedForce.PME)
    pme = [verlet_candidate("Verlet 2 fs, PME", periodic, 0.002)] * 2
    with pytest.raises(InputError, match="PME system on the CPU platform hang"):
        run_ensembles(pme, starts, 300.0, OPTIONS, elements, "CPU", jobs=2)


def test_sample_interval_must_be_whole_steps(alanine_hbonds, starts, elements):
    with pytest.raises(InputError, match="common multiple"):
        run_ensemble(verlet_candidate("V", alanine_hbonds.system, 0.003), starts, 300.0, OPTIONS, elements)
    with pytest.raises(InputError, match="at least 2"):
        EnsembleOptions(n_trajectories=1)


def test_report_table_json_and_plots(tmp_path, alanine_hbonds, starts, elements):
    results = [run_ensemble(verlet_candidate(f"Verlet {h * 1000:g} fs", alanine_hbonds.system, h), starts, 300.0,
                            OPTIONS, elements, "Reference") for h in (0.001, 0.002)]
    assert vacf_deviation(results[0], results[0]) == (0.0, pytest.approx(np.sqrt(2) * np.sqrt(
        np.mean(results[0].vacf_error ** 2))))
    table = markdown_table(results).splitlines()
    assert len(table) == 4 and "| reference |" in table[2] and table[3].startswith("| Verlet 2 fs | 2 | 2/2 |")
    assert (f"| {results[1].potential_energy:.1f} ± {results[1].potential_energy_error:.1f} | nan ± nan |"
            in table[3])  # two trajectories draw no line through their (T, U) means
    write_json(results, tmp_path / "r.json", {"note": "test"})
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["settings"] == {"note": "test"} and data["results"][1]["stable"] == 2
    paths = plot(results, tmp_path, "test")
    assert [p.name for p in paths] == ["energy.png", "temperature.png", "vacf.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in paths)


def test_scheme_b_rows_report_their_solver(alanine, elements):
    """The shipped scheme-B model: its row carries the solver's statistics, and its cost counts the iterations
    (three nodes per iteration, plus the predictor's kicks), so it is far above the three evaluations of T3."""
    from openmm_actionml.cli import MODELS_DIR
    from openmm_actionml.integrator import ActionMLIntegrator, add_learned_force
    from openmm_actionml.modelfile import load_model
    model = load_model(MODELS_DIR / "alanine-b-gauss3-2fs.pt")
    starts = equilibrated_starts(alanine.system, alanine.positions, 300.0, 2, spacing=0.05, equilibration=0.05,
                                 platform="Reference")
    options = EnsembleOptions(n_trajectories=2, duration=0.02, sample_interval=0.002, reversibility_time=0.004,
                              correlation_time=0.01, symplecticity_max_atoms=0)
    result = run_ensemble(Candidate("B", 0.002, add_learned_force(alanine.system, model),
                                    lambda: ActionMLIntegrator(model)), starts, 300.0, options, elements, "Reference")
    assert result.stable == 2 and "solver iterations per step, 0 unconverged" in result.notes
    assert result.evaluations_per_fs > 3 * 3 / 2  # at least three iterations of three nodes per 2 fs step
    assert result.notes in markdown_table([result])


def test_thermalised_starts_are_states_of_the_thermostatted_integrator(alanine_hbonds, starts):
    """Each start after Langevin dynamics with the given integrator: moved, on the constraints to the integrator's
    tolerance, without centre-of-mass motion, and the same for the same seed."""
    def thermalise(seed):
        return thermalised_starts(alanine_hbonds.system, SplittingIntegrator("T3", 0.004, temperature=300.0), starts,
                                  0.04, "Reference", seed)
    moved, again = thermalise(3), thermalise(3)
    np.testing.assert_array_equal(moved.positions, again.positions)
    np.testing.assert_array_equal(moved.masses, starts.masses)
    assert np.abs(moved.positions - starts.positions).max() > 1e-3  # 10 steps of 4 fs move atoms by ~0.01 nm
    for index in range(alanine_hbonds.system.getNumConstraints()):
        i, j, length = alanine_hbonds.system.getConstraintParameters(index)
        distances = np.linalg.norm(moved.positions[:, i] - moved.positions[:, j], axis=-1)
        np.testing.assert_allclose(distances, length.value_in_unit(u.nanometer), rtol=1e-10)  # its tolerance
    atom_momenta = moved.masses[None, :, None] * moved.velocities
    rounding = 4 * len(moved.masses) * np.finfo(float).eps * np.abs(atom_momenta).sum(1)  # of a sum of n terms
    assert np.all(np.abs(atom_momenta.sum(1)) <= rounding)
    hmr = with_hydrogen_mass(alanine_hbonds.system, alanine_hbonds.topology, 1.5)
    with pytest.raises(InputError, match="other masses"):  # the result would carry the starts' masses, not hmr's
        thermalised_starts(hmr, SplittingIntegrator("T3", 0.004, temperature=300.0), starts, 0.04, "Reference", 3)


def test_starts_are_kept_and_read_back(tmp_path, starts):
    """The first call draws and keeps the starts; the next reads the very same arrays without drawing; a corrupt
    file is named with the fix."""
    path = tmp_path / "starts.npz"
    kept = resumable_starts(path, lambda: starts)
    again = resumable_starts(path, lambda: pytest.fail("the kept starts must be read, not drawn again"))
    for name in ("positions", "velocities", "masses"):
        np.testing.assert_array_equal(getattr(again, name), getattr(starts, name))
        np.testing.assert_array_equal(getattr(kept, name), getattr(starts, name))
    path.write_bytes(b"not an npz file")
    with pytest.raises(InputError, match="starts.npz is unreadable.*delete it"):
        resumable_starts(path, lambda: starts)


def test_starts_kept_by_another_process_during_the_draw_win(tmp_path, starts):
    """Two processes sharing a cache both draw when neither finds the file; the later one returns the starts the
    first kept instead of failing on the existing file, so both run from the same starts."""
    path = tmp_path / "starts.npz"
    other = Starts(starts.positions + 1.0, starts.velocities, starts.masses)

    def draw_while_another_keeps() -> Starts:
        resumable_starts(path, lambda: other)
        return starts

    got = resumable_starts(path, draw_while_another_keeps)
    np.testing.assert_array_equal(got.positions, other.positions)
    np.testing.assert_array_equal(read_starts(path, "").positions, other.positions)
