"""The trajectory cache's fingerprint (trajectory_cache.py): the same row and start name the same file in every
process, a different learned model another one. Reading and writing are tested through run_ensemble in
test_ensemble.py."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]

FINGERPRINT = """
import sys, numpy as np, torch, openmm
from openmm_actionml.examples import build_training_system
from openmm_actionml.integrator import SplittingIntegrator, add_learned_force
from openmm_actionml.modelfile import load_model
from openmm_actionml.trajectory_cache import TrajectoryCache
model = load_model(sys.argv[1])
prepared = build_training_system(model.metadata.recipe)
cache = TrajectoryCache(sys.argv[2], "row", add_learned_force(prepared.system, model), SplittingIntegrator("T3", 0.008),
                        "Reference", "settings")
print(cache.path(np.zeros((3, 3)), np.ones((3, 3))).name)
"""


def fingerprint(model: str, directory: Path) -> str:
    """The cache file name of a learned row, computed in a fresh process."""
    done = subprocess.run([sys.executable, "-c", FINGERPRINT, str(REPOSITORY / "models" / model), str(directory)],
                          capture_output=True, text=True, check=True, cwd=REPOSITORY)
    return done.stdout.strip().splitlines()[-1]


def test_a_learned_row_has_one_fingerprint_across_processes_and_models_differ(tmp_path):
    """torch names the TorchScript archive inside a TorchForce's XML after a random temporary file, so its raw
    XML differs from process to process; the fingerprint must not, or no run could ever resume."""
    first = fingerprint("alanine-t3-8fs.pt", tmp_path)
    assert first == fingerprint("alanine-t3-8fs.pt", tmp_path)
    assert first != fingerprint("alanine-pure-t3-8fs.pt", tmp_path)
    assert first.startswith("row-") and first.endswith(".npz")
