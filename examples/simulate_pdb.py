"""A learned long-step run in a normal OpenMM script: PDB in, reporters and a checkpoint out.

Run from anywhere: ``python examples/simulate_pdb.py [MODEL.pt] [PDB] [PS]``; the defaults are the shipped
alanine-dipeptide model (T3, 8 fs, HBonds), its PDB file and 10 ps. With your own PDB and model, build the
System with the options the model was trained with (its file records them: ``load_model(...).metadata``).
"""
import sys
from pathlib import Path

import openmm_actionml  # noqa: F401  (imports torch before openmm, so openmmtorch's plugins load)
import openmm.app as app
import openmm.unit as unit

from openmm_actionml import ActionMLIntegrator, add_learned_force, load_model

here = Path(__file__).resolve().parent
model_file = sys.argv[1] if len(sys.argv) > 1 else here.parent / "models" / "alanine-t3-8fs.pt"
pdb_file = sys.argv[2] if len(sys.argv) > 2 else here / "alanine-dipeptide.pdb"
picoseconds = float(sys.argv[3]) if len(sys.argv) > 3 else 10.0

model = load_model(model_file)  # checks the file and names what is wrong with it
pdb = app.PDBFile(str(pdb_file))
forcefield = app.ForceField("amber14-all.xml")
system = forcefield.createSystem(pdb.topology, nonbondedMethod=app.NoCutoff, constraints=app.HBonds)
system = add_learned_force(system, model)  # checks the model against this System; adds the TorchForce

# Langevin at 300 K with the model's step (8 fs here); ActionMLIntegrator(model) alone runs NVE.
integrator = ActionMLIntegrator(model, temperature=300 * unit.kelvin, friction=1 / unit.picosecond)
simulation = app.Simulation(pdb.topology, system, integrator)
simulation.context.setPositions(pdb.positions)
simulation.minimizeEnergy()
simulation.context.setVelocitiesToTemperature(300 * unit.kelvin, 1)

steps = round(picoseconds * unit.picoseconds / integrator.getStepSize())
every = max(1, steps // 10)
simulation.reporters.append(app.StateDataReporter(sys.stdout, every, step=True, time=True, potentialEnergy=True,
                                                  temperature=True, speed=True, totalSteps=steps))
simulation.reporters.append(app.DCDReporter("trajectory.dcd", every))
simulation.reporters.append(app.CheckpointReporter("checkpoint.chk", every))
simulation.step(steps)
print(f"{picoseconds:g} ps in {steps} steps of {integrator.getStepSize()}; wrote trajectory.dcd and "
      f"checkpoint.chk (simulation.loadCheckpoint continues from it)")
