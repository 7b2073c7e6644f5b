"""The examples/ scripts: every actionml command in them parses, and the Python example runs and checkpoints."""
from __future__ import annotations

import re
import shlex
import subprocess
import sys

import openmm.app as app
import pytest

from openmm_actionml import ActionMLIntegrator, add_learned_force, load_model
from openmm_actionml.cli import MODELS_DIR, build_parser
from openmm_actionml.examples import EXAMPLES_DIR

SHELL_EXAMPLES = sorted(EXAMPLES_DIR.glob("*.sh"))


def _actionml_commands(script: str) -> list[list[str]]:
    """The argument lists of the ``$A ...`` lines, with shell variables given placeholder values."""
    commands = []
    for line in script.splitlines():
        line = line.strip()
        if line.startswith("$A "):
            line = re.sub(r"\$\(\([^)]*\)\)", "1", line[3:])
            commands.append([re.sub(r"\$\w+", "1", word) for word in shlex.split(line)])
    return commands


@pytest.mark.parametrize("script", SHELL_EXAMPLES, ids=lambda path: path.name)
def test_shell_example_commands_parse(script):
    commands = _actionml_commands(script.read_text())
    assert {"generate", "train"} <= {command[0] for command in commands}
    for command in commands:
        build_parser().parse_args(command)  # argparse exits (SystemExit) on an unknown or malformed option


def test_shell_examples_exist():
    assert {path.name for path in SHELL_EXAMPLES} >= {"alanine_flexible.sh", "alanine_hbonds.sh"}


def test_simulate_pdb_example_runs_and_checkpoints(tmp_path):
    """The Python example: 0.08 ps of the shipped model with reporters; its checkpoint restores the state."""
    model_file = MODELS_DIR / "alanine-t3-8fs.pt"
    pdb_file = EXAMPLES_DIR / "alanine-dipeptide.pdb"
    done = subprocess.run([sys.executable, str(EXAMPLES_DIR / "simulate_pdb.py"), str(model_file), str(pdb_file),
                           "0.08"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "0.08 ps in 10 steps" in done.stdout and (tmp_path / "trajectory.dcd").stat().st_size > 0
    model = load_model(model_file)
    pdb = app.PDBFile(str(pdb_file))
    system = app.ForceField("amber14-all.xml").createSystem(pdb.topology, nonbondedMethod=app.NoCutoff,
                                                             constraints=app.HBonds)
    simulation = app.Simulation(pdb.topology, add_learned_force(system, model), ActionMLIntegrator(model))
    simulation.loadCheckpoint(str(tmp_path / "checkpoint.chk"))
    assert simulation.currentStep == 10
