"""ActionMLIntegrator: the OpenMM program reproduces the torch ground truth and behaves as a drop-in integrator."""
from __future__ import annotations

import copy
import io
import re
import tokenize
from pathlib import Path
from typing import Optional

import numpy as np
import pytest
import torch
import openmm as mm
import openmm.app as app
import openmm.unit as u

import openmm_actionml
from conftest import platform_params
from openmm_actionml.constraints import ConstraintSet
from openmm_actionml.units import BOLTZMANN
from openmm_actionml.errors import InputError, ModelFileError, ModelMismatchError, SimulationInstabilityError
from openmm_actionml.integrator import LEARNED_FORCE_GROUP, ActionMLIntegrator, add_learned_force
from openmm_actionml.kicks import KickPotential
from openmm_actionml.modelfile import ActionMLModel, ModelMetadata, export_model, load_model
from openmm_actionml.network import build_network
from openmm_actionml.openmm_potential import OpenMMPotential
from openmm_actionml.splitting import Splitting, SplittingStepper, get_splitting
from openmm_actionml.systems import PreparedSystem
from toy_systems import ToyNetwork

N_STEPS = 10
H_CONSTRAINED = 0.008  # ps: T3 with HBonds, the design's default
H_FLEXIBLE = 0.004


class Scaled(torch.nn.Module):
    """``factor * network``: a random readout's forces (~0.1 kJ/mol/nm) are too weak to test head selection."""

    def __init__(self, network: torch.nn.Module, factor: float) -> None:
        super().__init__()
        self.network = network
        self.factor = factor

    def forward(self, q: torch.Tensor, box: Optional[torch.Tensor]) -> torch.Tensor:
        return self.factor * self.network(q, box)


def metadata_for(system: mm.System, topology: app.Topology, h: float, anchored: bool = True,
                 splitting: Optional[Splitting] = None, network: Optional[dict] = None) -> ModelMetadata:
    masses = [system.getParticleMass(i).value_in_unit(u.dalton) for i in range(system.getNumParticles())]
    constraints = [[i, j, d.value_in_unit(u.nanometer)]
                   for i, j, d in (system.getConstraintParameters(k) for k in range(system.getNumConstraints()))]
    return ModelMetadata(scheme="A", step=h, splitting=(splitting or get_splitting("T3")).to_dict(), anchored=anchored,
                         elements=[atom.element.symbol for atom in topology.atoms()], masses=masses,
                         constraints=constraints, periodic=False, network=network or {"kind": "toy"}, temperature=300.0,
                         system_name="test system")


def make_model(path: Path, network: torch.nn.Module, prepared: PreparedSystem, anchored: bool = True,
               splitting: Optional[Splitting] = None) -> ActionMLModel:
    """An exported model of ``network`` for ``prepared`` (T3 unless ``splitting`` is given); its metadata describe
    the network by its ``config_dict()`` if it has one."""
    h = H_CONSTRAINED if prepared.system.getNumConstraints() else H_FLEXIBLE
    config = network.config_dict() if hasattr(network, "config_dict") else None
    export_model(network, metadata_for(prepared.system, prepared.topology, h, anchored, splitting, config), path)
    return load_model(path)


@pytest.fixture(scope="module")
def toy_network(alanine) -> ToyNetwork:
    return ToyNetwork(alanine.system.getNumParticles())


@pytest.fixture
def model(tmp_path, toy_network, systems) -> ActionMLModel:
    """An anchored T3 model for alanine dipeptide with HBonds at 8 fs."""
    return make_model(tmp_path / "toy.pt", toy_network, systems[True])


def make_context(system: mm.System, integrator: mm.Integrator, positions: u.Quantity,
                 platform: str = "Reference", seed: int = 1) -> mm.Context:
    """A Context at ``positions``, constrained, with 300 K velocities."""
    context = mm.Context(system, integrator, mm.Platform.getPlatformByName(platform))
    context.setPositions(positions)
    context.applyConstraints(1e-12)
    context.setVelocitiesToTemperature(300 * u.kelvin, seed)
    context.applyVelocityConstraints(1e-12)
    return context


def state(context: mm.Context) -> tuple[np.ndarray, np.ndarray]:
    s = context.getState(getPositions=True, getVelocities=True)
    return s.getPositions(asNumpy=True).value_in_unit(u.nanometer), \
        s.getVelocities(asNumpy=True).value_in_unit(u.nanometer / u.picosecond)


def run_torch(model: ActionMLModel, network: torch.nn.Module, system: mm.System, q0: np.ndarray, v0: np.ndarray,
              n_steps: int) -> tuple[np.ndarray, np.ndarray]:
    """The ground truth: SplittingStepper with the force field in double precision on Reference."""
    meta = model.metadata
    potential = OpenMMPotential(system, platform="Reference")
    kicks = KickPotential(network, (lambda q: potential.energy_and_forces(q)[1]) if meta.anchored else None)
    masses = torch.tensor(meta.masses, dtype=torch.float64)
    stepper = SplittingStepper(meta.get_splitting(), meta.step, masses, lambda q, head: kicks(q, head).detach(),
                               ConstraintSet.from_system(system))
    qs, vs = stepper.run(torch.tensor(q0), torch.tensor(v0), n_steps)
    return qs[-1].detach().numpy(), vs[-1].detach().numpy()


def assert_matches_torch(model: ActionMLModel, network: torch.nn.Module, prepared: PreparedSystem, platform: str,
                         tolerance: float) -> None:
    context = make_context(add_learned_force(prepared.system, model), ActionMLIntegrator(model), prepared.positions,
                           platform)
    q0, v0 = state(context)
    context.getIntegrator().step(N_STEPS)
    q, v = state(context)
    q_ref, v_ref = run_torch(model, network, prepared.system, q0, v0, N_STEPS)
    position_error = np.abs(q - q_ref).max() / np.abs(q_ref - q0).max()
    velocity_error = np.abs(v - v_ref).max() / np.abs(v_ref).max()
    assert max(position_error, velocity_error) < tolerance, (position_error, velocity_error)


# Relative agreement with the double-precision torch stepper after 10 steps: the displacement error over the
# displacement, and the velocity error over the largest velocity. Measured (toy network, alanine dipeptide):
# - Reference: 4e-14 flexible (round-off); 8e-11 with HBonds (constraint tolerance 1e-10 on both sides).
# - CPU: single-precision nonbonded forces: 7e-7 flexible anchored, 3e-7 with HBonds; pure ML as Reference.
# - OpenCL (single precision): 3e-5; positions of ~2 nm are stored to ~1e-7 nm, 1e-6 of a 0.1 nm displacement,
#   per stage.
TOLERANCE = {"Reference": 1e-6, "CPU": 1e-6, "OpenCL": 2e-4}


@pytest.mark.parametrize("platform", platform_params())
@pytest.mark.parametrize("anchored", [True, False], ids=["anchored", "pure"])
@pytest.mark.parametrize("constraints", [True, False], ids=["hbonds", "flexible"])
def test_matches_torch_stepper(tmp_path, toy_network, systems, platform, anchored, constraints):
    model = make_model(tmp_path / "m.pt", toy_network, systems[constraints], anchored)
    assert_matches_torch(model, toy_network, systems[constraints], platform, TOLERANCE[platform])


def test_matches_torch_stepper_with_the_real_network(tmp_path, systems):
    prepared = systems[True]
    elements = [atom.element.symbol for atom in prepared.topology.atoms()]
    pairs = [prepared.system.getConstraintParameters(k)[:2] for k in range(prepared.system.getNumConstraints())]
    network = Scaled(build_network(elements, n_heads=2, excluded_pairs=pairs, zero_init=False).double(), 100.0)
    model = make_model(tmp_path / "real.pt", network, prepared)
    assert_matches_torch(model, network, prepared, "Reference", TOLERANCE["Reference"])


def test_first_same_as_last_reuse_is_exact_and_notices_moved_positions(model, systems):
    system = add_learned_force(systems[True].system, model)
    runs = []
    for reuse in (True, False):
        context = make_context(copy.deepcopy(system), ActionMLIntegrator(model, first_same_as_last=reuse),
                               systems[True].positions)
        context.getIntegrator().step(3)
        q, _ = state(context)
        context.setPositions(q + 1e-3 * np.random.default_rng(0).normal(size=q.shape))  # stale cached forces
        context.getIntegrator().step(3)
        runs.append(state(context))
    assert np.array_equal(runs[0][0], runs[1][0]) and np.array_equal(runs[0][1], runs[1][1])


def test_nothing_learned_leaks_out_of_a_step(model, systems):
    system, positions = systems[True].system, systems[True].positions
    learned = add_learned_force(system, model)
    context = make_context(learned, ActionMLIntegrator(model), positions)
    context.getIntegrator().step(3)
    plain = mm.Context(copy.deepcopy(system), mm.VerletIntegrator(1e-3), mm.Platform.getPlatformByName("Reference"))
    plain.setPositions(state(context)[0])

    def energy_forces(ctx: mm.Context, **groups) -> tuple[float, np.ndarray]:
        s = ctx.getState(getEnergy=True, getForces=True, **groups)
        return s.getPotentialEnergy()._value, s.getForces(asNumpy=True)._value

    e, f = energy_forces(context)
    e_ref, f_ref = energy_forces(plain)
    assert e == e_ref and np.array_equal(f, f_ref)
    e30, f30 = energy_forces(context, groups={LEARNED_FORCE_GROUP})
    assert e30 == 0.0 and not f30.any()

    mm.LocalEnergyMinimizer.minimize(context, 1.0, 50)
    mm.LocalEnergyMinimizer.minimize(plain, 1.0, 50)
    assert np.array_equal(state(context)[0], plain.getState(getPositions=True).getPositions(asNumpy=True)._value)

    trajectories = []
    for candidate in (learned, system):
        integrator = mm.LangevinMiddleIntegrator(300 * u.kelvin, 1 / u.picosecond, 2 * u.femtoseconds)
        integrator.setRandomNumberSeed(5)
        ctx = make_context(copy.deepcopy(candidate), integrator, positions)
        integrator.step(20)
        trajectories.append(state(ctx)[0])
    assert np.array_equal(*trajectories)


@pytest.mark.parametrize("constraints", [True, False], ids=["hbonds", "flexible"])
def test_time_reversible(tmp_path, toy_network, systems, constraints):
    model = make_model(tmp_path / "m.pt", toy_network, systems[constraints])
    context = make_context(add_learned_force(systems[constraints].system, model), ActionMLIntegrator(model),
                           systems[constraints].positions)
    assert_time_reversible(context, constraints)


def assert_time_reversible(context: mm.Context, constraints: bool) -> None:
    """N_STEPS forward, velocities reversed, N_STEPS back reach the start, to round-off (flexible) or to the
    constraint solver's tolerance (HBonds; Reference, double precision). Measured for the learned step: flexible
    2e-16 nm and 1e-14, HBonds 2e-12 nm and 6e-11."""
    q0, v0 = state(context)
    context.getIntegrator().step(N_STEPS)
    context.setVelocities(-state(context)[1])
    context.getIntegrator().step(N_STEPS)
    q, v = state(context)
    position_tolerance, velocity_tolerance = (1e-10, 1e-8) if constraints else (1e-13, 1e-12)
    assert np.abs(q - q0).max() < position_tolerance
    assert np.abs(v + v0).max() < velocity_tolerance * np.abs(v0).max()


def test_linear_momentum_conserved(model, systems):
    masses = np.array(model.metadata.masses)[:, None]
    context = make_context(add_learned_force(systems[True].system, model), ActionMLIntegrator(model),
                           systems[True].positions)
    momentum0 = (masses * state(context)[1]).sum(0)
    context.getIntegrator().step(50)
    p = masses * state(context)[1]
    assert np.abs(p.sum(0) - momentum0).max() < 1e-12 * np.abs(p).sum()  # measured 6e-14


def test_nvt_kinetic_temperature(model, systems):
    system = add_learned_force(systems[True].system, model)
    integrator = ActionMLIntegrator(model, temperature=300 * u.kelvin, friction=20 / u.picosecond)
    integrator.setRandomNumberSeed(7)
    context = make_context(system, integrator, systems[True].positions)
    n_dof = 3 * system.getNumParticles() - system.getNumConstraints()
    integrator.step(50)
    temperatures = []
    for _ in range(500):
        integrator.step(2)
        kinetic = context.getState(getEnergy=True).getKineticEnergy().value_in_unit(u.kilojoule_per_mole)
        temperatures.append(2 * kinetic / (n_dof * BOLTZMANN))
    # Over 16 seeds this 8 ps mean scattered by 1.7 % around 300.4 K; 6 % is 3.5 standard deviations.
    assert abs(np.mean(temperatures) / 300.0 - 1.0) < 0.06, np.mean(temperatures)


def small_system(masses: list[float], elements: list[str]) -> tuple[mm.System, app.Topology]:
    """A chain of particles joined by stiff harmonic bonds, with its topology."""
    topology = app.Topology()
    residue = topology.addResidue("TOY", topology.addChain())
    system = mm.System()
    bonds = mm.HarmonicBondForce()
    for index, (mass, element) in enumerate(zip(masses, elements)):
        system.addParticle(mass)
        topology.addAtom(element, app.Element.getBySymbol(element), residue)
        if index:
            bonds.addBond(index - 1, index, 0.12, 5e4)
    system.addForce(bonds)
    return system, topology


@pytest.mark.parametrize("platform", platform_params())
def test_massless_particles_stay_fixed(tmp_path, platform):
    """A zero-mass particle (immobile, as OpenMM treats them) must not produce NaN in kicks or the O step."""
    system, topology = small_system([12.0, 0.0, 14.0], ["C", "O", "N"])
    export_model(ToyNetwork(3), metadata_for(system, topology, 0.002), tmp_path / "m.pt")
    model = load_model(tmp_path / "m.pt")
    integrator = ActionMLIntegrator(model, temperature=300)
    context = mm.Context(add_learned_force(system, model), integrator, mm.Platform.getPlatformByName(platform))
    context.setPositions(np.array([[0.0, 0.0, 0.0], [0.12, 0.01, 0.0], [0.23, 0.05, 0.0]]))
    q0, _ = state(context)
    integrator.step(20)
    q, v = state(context)
    assert np.isfinite(q).all() and np.isfinite(v).all()
    assert np.array_equal(q[1], q0[1]) and not v[1].any()
    assert not np.array_equal(q[0], q0[0])


class Announced(torch.nn.Module):
    """Prints ``tag`` on every evaluation (TorchScript prints from C++, so ``capfd`` sees it)."""

    def __init__(self, network: torch.nn.Module, tag: str) -> None:
        super().__init__()
        self.network = network
        self.tag = tag

    def forward(self, q: torch.Tensor, box: Optional[torch.Tensor]) -> torch.Tensor:
        print(self.tag)
        return self.network(q, box)


class AnnouncedBond(torch.nn.Module):
    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        print("force-field")
        return 1e3 * ((positions[1] - positions[0]).norm() - 0.12) ** 2


@pytest.mark.parametrize("reuse", [True, False], ids=["first-same-as-last", "no-reuse"])
def test_evaluations_per_step(tmp_path, capfd, reuse):
    """T3 costs 3 force-field and 3 network evaluations per step with reuse (4 and 4 without), also after a
    getState in between; moved positions are noticed."""
    import openmmtorch

    system, topology = small_system([12.0, 1.0], ["C", "H"])
    system.removeForce(0)
    system.addForce(openmmtorch.TorchForce(torch.jit.script(AnnouncedBond())))
    export_model(Announced(ToyNetwork(2), "network"), metadata_for(system, topology, 0.002), tmp_path / "m.pt")
    model = load_model(tmp_path / "m.pt")
    integrator = ActionMLIntegrator(model, first_same_as_last=reuse)
    context = mm.Context(add_learned_force(system, model), integrator, mm.Platform.getPlatformByName("Reference"))
    context.setPositions(np.array([[0.0, 0.0, 0.0], [0.125, 0.0, 0.0]]))
    counts = []
    for action in ("step", "step", "getState", "step", "setPositions", "step"):
        if action == "step":
            capfd.readouterr()
            integrator.step(1)
            out = capfd.readouterr().out.split()
            counts.append((out.count("force-field"), out.count("network")))
        elif action == "getState":
            context.getState(getForces=True, getEnergy=True)
        else:
            context.setPositions(state(context)[0] * 1.01)
    per_step = (3, 3) if reuse else (4, 4)
    assert counts == [(4, 4), per_step, per_step, (4, 4) if reuse else per_step]


def test_simulation_reporters_checkpoints_and_states(tmp_path, model, systems):
    prepared = systems[True]
    simulation = app.Simulation(prepared.topology, add_learned_force(prepared.system, model),
                                ActionMLIntegrator(model), mm.Platform.getPlatformByName("Reference"))
    simulation.context.setPositions(prepared.positions)
    simulation.context.setVelocitiesToTemperature(300 * u.kelvin, 3)
    log = tmp_path / "log.csv"
    simulation.reporters += [app.StateDataReporter(str(log), 2, step=True, potentialEnergy=True, temperature=True),
                             app.DCDReporter(str(tmp_path / "traj.dcd"), 2),
                             app.CheckpointReporter(str(tmp_path / "reporter.chk"), 4)]
    simulation.step(4)
    simulation.saveState(str(tmp_path / "state.xml"))
    simulation.saveCheckpoint(str(tmp_path / "run.chk"))
    simulation.step(4)
    expected = state(simulation.context)
    for load, path in ((simulation.loadState, "state.xml"), (simulation.loadCheckpoint, "run.chk")):
        load(str(tmp_path / path))
        simulation.step(4)
        q, v = state(simulation.context)
        assert np.array_equal(q, expected[0]) and np.array_equal(v, expected[1])
    assert len(log.read_text().splitlines()) == 1 + 4 + 2 + 2
    assert (tmp_path / "traj.dcd").stat().st_size > 0 and (tmp_path / "reporter.chk").stat().st_size > 0


def test_xml_round_trip_gives_a_working_plain_custom_integrator(model, systems):
    system = add_learned_force(systems[True].system, model)
    original = ActionMLIntegrator(model)
    loaded = mm.XmlSerializer.deserialize(mm.XmlSerializer.serialize(original))
    assert type(loaded) is mm.CustomIntegrator
    assert loaded.getIntegrationForceGroups() == original.getIntegrationForceGroups()
    results = []
    for integrator in (original, loaded):
        context = make_context(copy.deepcopy(system), integrator, systems[True].positions)
        integrator.step(5)
        results.append(state(context))
    assert np.array_equal(results[0][0], results[1][0]) and np.array_equal(results[0][1], results[1][1])


def test_model_for_another_system_is_refused(model, systems):
    flexible = systems[False]
    with pytest.raises(ModelMismatchError, match="constraints"):
        add_learned_force(flexible.system, model)
    with pytest.raises(ModelMismatchError, match="constraints"):
        ActionMLIntegrator(model).validate(flexible.system, flexible.topology)
    repartitioned = copy.deepcopy(systems[True].system)
    for atom in systems[True].topology.atoms():
        if atom.element.symbol == "H":
            repartitioned.setParticleMass(atom.index, 3.0)
    with pytest.raises(ModelMismatchError, match="mass"):
        add_learned_force(repartitioned, model)
    small = mm.System()
    small.addParticle(1.0)
    with pytest.raises(ModelMismatchError, match="particles"):
        add_learned_force(small, model)


def test_system_must_carry_the_learned_force_once(model, systems):
    system = systems[True].system
    integrator = ActionMLIntegrator(model)
    with pytest.raises(ModelMismatchError, match="add_learned_force"):
        integrator.validate(system)
    with pytest.raises(mm.OpenMMException, match="actionml_"):  # OpenMM refuses the Context itself
        mm.Context(copy.deepcopy(system), integrator, mm.Platform.getPlatformByName("Reference"))
    learned = add_learned_force(system, model)
    ActionMLIntegrator(model).validate(learned)
    with pytest.raises(ModelMismatchError, match="already has"):
        add_learned_force(learned, model)
    assert system.getNumForces() == learned.getNumForces() - 1  # the argument is not modified


def test_wrong_step_or_options_are_refused(model, systems):
    with pytest.raises(ModelMismatchError, match="8 fs, not 2 fs"):
        ActionMLIntegrator(model, step=2 * u.femtoseconds)
    ActionMLIntegrator(model, step=0.008)
    with pytest.raises(InputError, match="temperature"):
        ActionMLIntegrator(model, friction=1.0)
    integrator = ActionMLIntegrator(model)
    make_context(add_learned_force(systems[True].system, model), integrator, systems[True].positions)
    integrator.setStepSize(0.004)
    with pytest.raises(ModelMismatchError, match="setStepSize"):
        integrator.step(1)


def test_missing_or_corrupt_model_file(tmp_path, model):
    with pytest.raises(ModelFileError, match="does not exist"):
        ActionMLIntegrator(tmp_path / "nothing.pt")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(model.path.read_bytes()[:1000])
    with pytest.raises(ModelFileError, match="corrupt"):
        ActionMLIntegrator(corrupt)


@pytest.mark.parametrize("platform", platform_params())
def test_nan_positions_raise_and_leave_the_learned_force_off(model, systems, platform):
    integrator = ActionMLIntegrator(model)
    context = make_context(add_learned_force(systems[True].system, model), integrator, systems[True].positions,
                           platform)
    positions = state(context)[0]
    positions[3] = np.nan
    context.setPositions(positions)
    with pytest.raises(SimulationInstabilityError, match="NaN"):
        integrator.step(2)
    assert context.getParameter("actionml_active") == 0.0


def test_exported_module_takes_both_global_conventions(model, systems):
    """CUDA passes globals as shape-[1] tensors of the model dtype; Reference/CPU as 0-dim float64."""
    module = torch.jit.load(str(model.path))
    q = torch.tensor(systems[True].positions.value_in_unit(u.nanometer), dtype=torch.float64)
    one = module(q.float(), torch.tensor([1.0]), torch.tensor([1.0]))
    two = module(q, torch.tensor(1.0, dtype=torch.float64), torch.tensor(1.0, dtype=torch.float64))
    assert one[1].dtype == torch.float32 and two[1].dtype == torch.float64
    assert torch.allclose(one[1].double(), two[1], rtol=1e-5, atol=1e-4 * two[1].abs().max().item())
    off = module(q.float(), torch.tensor([1.0]), torch.tensor([0.0]))
    assert float(off[0]) == 0.0 and not off[1].any()


def test_no_hard_coded_cuda_device():
    """Device strings ('cuda', 'cuda:0') or .cuda() calls in code, not in docstrings or comments."""
    string_types = {tokenize.STRING, getattr(tokenize, "FSTRING_MIDDLE", tokenize.STRING)}  # 3.12 f-strings
    offenders = []
    for path in Path(openmm_actionml.__file__).parent.glob("*.py"):
        tokens = list(tokenize.generate_tokens(io.StringIO(path.read_text()).readline))
        for previous, token in zip([None] + tokens, tokens):
            text = token.string.lstrip("rbfuRBFU").strip("'\"")
            device_string = token.type in string_types and re.fullmatch(r"cuda(:.*)?", text)
            method = token.type == tokenize.NAME and token.string == "cuda" and previous.string == "."
            if device_string or method:
                offenders.append(f"{path.name}:{token.start[0]}")
    assert not offenders, offenders
