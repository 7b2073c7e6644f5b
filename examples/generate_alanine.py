"""Reference data for alanine dipeptide through the Python API; copy and adapt.

Run from anywhere: ``python examples/generate_alanine.py [output.npz]``.
"""
import sys
from pathlib import Path

import openmm.unit as unit

from openmm_actionml.dataset import ReferenceDataset
from openmm_actionml.generate import generate_reference_data
from openmm_actionml.systems import build_system

output = sys.argv[1] if len(sys.argv) > 1 else "alanine-reference.npz"

# amber14 in vacuum, flexible bonds; constraints="HBonds" or hydrogen_mass=... work the same way.
prepared = build_system(Path(__file__).parent / "alanine-dipeptide.pdb", "amber14-all.xml", "vacuum")

generate_reference_data(
    prepared.system, prepared.positions, output,
    topology=prepared.topology,              # gives the elements
    temperature=300 * unit.kelvin,
    delta=0.25 * unit.femtoseconds,          # velocity-Verlet step of the NVE segments
    n_segments=4,
    segment_length=1 * unit.picoseconds,
    record_every=2,                          # frames every 0.5 fs
    decorrelation=1 * unit.picoseconds,
    equilibration=5 * unit.picoseconds,
    platform="CPU",
    seed=1,
    metadata=prepared.settings,              # how the system was built, for provenance
    overwrite=True,
)

dataset = ReferenceDataset.load(output)
train, validation = dataset.split(validation_fraction=0.25, seed=0)
q, v, q_next, v_next = dataset.pairs(2 * unit.femtoseconds, segments=train)
print(f"{output}: {dataset.n_segments} segments x {dataset.n_frames} frames; "
      f"{len(q)} training pairs 2 fs apart, validation segments {validation.tolist()}")
