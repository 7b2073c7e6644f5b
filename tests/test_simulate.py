"""``actionml run`` / :func:`run_model`: a learned model in Simulation with reporters, and the summary."""
from __future__ import annotations

import numpy as np
import pytest

import openmm.unit as u
from openmm_actionml.cli import main
from openmm_actionml.modelfile import ModelMetadata, export_model, load_model
from openmm_actionml.network import build_network
from openmm_actionml.simulate import run_model
from openmm_actionml.splitting import SPLITTINGS


@pytest.fixture(scope="module")
def alanine_model(tmp_path_factory, alanine):
    system = alanine.system
    elements = [atom.element.symbol for atom in alanine.topology.atoms()]
    network = build_network(elements, n_heads=2, zero_init=False, hidden=[8], n_channels=4)
    masses = [system.getParticleMass(i).value_in_unit(u.dalton) for i in range(system.getNumParticles())]
    metadata = ModelMetadata(scheme="A", step=0.002, splitting=SPLITTINGS["S2"].to_dict(), anchored=True,
                             elements=elements, masses=masses, constraints=[], periodic=False,
                             network=network.config_dict(), temperature=300.0, system_name="alanine-dipeptide",
                             recipe={"system": {"input": "alanine-dipeptide", "settings": {"solvent": "vacuum"}}})
    path = tmp_path_factory.mktemp("model") / "ala.pt"
    export_model(network, metadata, path)
    return load_model(path)


def test_run_model_nve_summary(alanine, alanine_model):
    simulation, summary = run_model(alanine, alanine_model, 40, platform="Reference", report_interval=10, seed=1,
                                    equilibration=0.01, progress=False)
    assert simulation.currentStep == 40
    assert summary.simulated_ps == pytest.approx(0.08)
    assert set(summary.element_temperatures) == {"C", "H", "N", "O"}
    assert all(np.isfinite(t) and t > 0 for t in summary.element_temperatures.values())
    assert summary.drift is not None and np.isfinite(summary.drift.slope_kt_per_dof_per_ns)
    assert summary.evaluations_per_fs == pytest.approx(2 / 2.0)  # S2: two evaluations per 2 fs step


def test_cli_run_uses_the_model_training_system(alanine_model, tmp_path, capsys):
    log = tmp_path / "log.csv"
    argv = ["run", str(alanine_model.path), "--steps", "20", "--platform", "Reference", "--equilibrate", "0.01",
            "--report-interval", "10", "--seed", "2", "--log", str(log), "--temperature", "300"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "20 steps, 0.04 ps" in out and "per element" in out
    assert "energy drift" not in out  # NVT: no drift line
    assert len(log.read_text().splitlines()) == 3  # header + 2 reports


def test_cli_run_refuses_a_mismatched_system(alanine_model, capsys):
    argv = ["run", str(alanine_model.path), "alanine-dipeptide", "--constraints", "HBonds", "--steps", "2",
            "--platform", "Reference"]
    assert main(argv) == 2
    assert "constraints" in capsys.readouterr().err


def test_run_model_scheme_b_reports_solver_statistics(alanine, tmp_path):
    from openmm_actionml.implicit import IMPLICIT_SCHEMES
    from openmm_actionml.implicit_program import default_predictor_forces, predictor_splitting

    system = alanine.system
    elements = [atom.element.symbol for atom in alanine.topology.atoms()]
    network = build_network(elements, n_heads=2, zero_init=False, hidden=[8], n_channels=4)
    scheme = IMPLICIT_SCHEMES["gauss3"]
    metadata = ModelMetadata(scheme="B", step=0.001, splitting=predictor_splitting("T3", scheme).to_dict(),
                             anchored=True, elements=elements, constraints=[], periodic=False,
                             masses=[system.getParticleMass(i).value_in_unit(u.dalton)
                                     for i in range(system.getNumParticles())],
                             network=network.config_dict(), temperature=300.0,
                             implicit={**scheme.to_dict(), "predictor_forces": default_predictor_forces(True)})
    export_model(network, metadata, tmp_path / "b.pt")
    _, summary = run_model(alanine, load_model(tmp_path / "b.pt"), 10, platform="Reference", report_interval=5,
                           seed=1, equilibration=0.01, progress=False)
    assert summary.solver is not None and summary.solver.unconverged == 0
    assert summary.solver.total_iterations >= 10  # at least one iteration per step
    assert "scheme-B solver" in summary.text()


def test_cli_run_continues_from_serialized_system_and_state(alanine, alanine_model, tmp_path, capsys):
    import openmm as mm

    context = mm.Context(alanine.system, mm.VerletIntegrator(0.001), mm.Platform.getPlatformByName("Reference"))
    context.setPositions(alanine.positions)
    context.setVelocitiesToTemperature(300, 1)
    (tmp_path / "system.xml").write_text(mm.XmlSerializer.serialize(alanine.system))
    (tmp_path / "state.xml").write_text(mm.XmlSerializer.serialize(context.getState(getPositions=True,
                                                                                      getVelocities=True)))
    argv = ["run", str(alanine_model.path), "--system-xml", str(tmp_path / "system.xml"), "--state-xml",
            str(tmp_path / "state.xml"), "--steps", "10", "--report-interval", "5", "--platform", "Reference"]
    assert main(argv) == 0
    assert "10 steps" in capsys.readouterr().out
    assert main(argv[:4] + ["--steps", "2"]) == 2
    assert "go together" in capsys.readouterr().err
    (tmp_path / "bad.xml").write_text("<System")
    assert main(argv[:3] + [str(tmp_path / "bad.xml")] + argv[4:]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_a_platform_without_the_torch_plugin_gets_a_clear_error():
    """OpenMM's message for a platform lacking openmmtorch's kernels (no such platform exists on the test machine,
    so the exception is the one OpenMM's Platform::createKernel throws)."""
    import openmm as mm
    from openmm_actionml.errors import InputError
    from openmm_actionml.platforms import explain_context_error

    error = mm.OpenMMException("Called createKernel() on a Platform which does not support the requested kernel")
    explained = explain_context_error(error, mm.Platform.getPlatformByName("Reference"))
    assert isinstance(explained, InputError) and "openmmtorch[cuda12]" in str(explained)
    named = mm.OpenMMException("Specified a Platform for a Context which does not support all required kernels")
    assert isinstance(explain_context_error(named, None), InputError)
    other = mm.OpenMMException("something else")
    assert explain_context_error(other, None) is other


def test_torch_threads_follow_the_system_size():
    import torch
    from openmm_actionml.errors import InputError
    from openmm_actionml.platforms import SINGLE_THREAD_BELOW, configure_torch_threads
    before = torch.get_num_threads()
    try:
        assert configure_torch_threads(22) == 1 == torch.get_num_threads()
        assert configure_torch_threads(22, 2) == 2 == torch.get_num_threads()
        assert configure_torch_threads(SINGLE_THREAD_BELOW) == torch.get_num_threads() == 2  # kept as it was
        with pytest.raises(InputError, match="at least 1"):
            configure_torch_threads(22, 0)
    finally:
        torch.set_num_threads(before)
