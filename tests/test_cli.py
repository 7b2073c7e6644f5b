"""The ``actionml`` command line: generate, evaluate and demo end to end, and its error handling."""
from __future__ import annotations

import numpy as np
import pytest

from openmm_actionml.cli import MODELS_DIR, main
from openmm_actionml.dataset import ReferenceDataset
from openmm_actionml.force_constant_correction import model_factors
from openmm_actionml.modelfile import export_model, load_model
from openmm_actionml.network import build_network

TINY = ["--segments", "2", "--segment-length", "0.005", "--equilibration", "0.01", "--decorrelation", "0.005",
        "--platform", "Reference", "--seed", "1"]


def test_generate_example(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["generate", "alanine-dipeptide", *TINY]) == 0
    data = ReferenceDataset.load(tmp_path / "alanine-dipeptide-reference.npz")
    assert data.positions.shape == (2, 21, 22, 3) and data.delta == pytest.approx(0.00025)
    assert data.metadata["provenance"]["command"].startswith("actionml generate alanine-dipeptide")
    assert data.metadata["input"] == "alanine-dipeptide" and data.metadata["solvent"] == "vacuum"
    out = capsys.readouterr()
    assert "wrote alanine-dipeptide-reference.npz: 2 segments x 21 frames of 22 atoms" in out.out
    assert "kT/ns per degree of freedom" in out.out and "segment 2/2 done" in out.err


def test_generate_pdb_with_options(tmp_path, alanine_pdb):
    output = tmp_path / "out.npz"
    argv = ["generate", str(alanine_pdb), "--constraints", "HBonds", "--hydrogen-mass", "2", "--delta", "1",
            "--record-every", "5", "--output", str(output), *TINY]
    assert main(argv) == 0
    data = ReferenceDataset.load(output)
    assert data.n_constraints == 12 and data.delta == pytest.approx(0.005) and data.n_frames == 2
    assert data.metadata["hydrogen_mass"] == 2.0 and data.metadata["protocol"]["integration_step"] == 0.001


def test_generate_from_a_starts_file(tmp_path, capsys):
    """--starts begins one segment at each state of a starts file (as the benchmark harness writes them) and
    refuses one drawn on a system with other masses."""
    data_path, starts_path = tmp_path / "data.npz", tmp_path / "starts.npz"
    assert main(["generate", "alanine-dipeptide", "--output", str(data_path), *TINY]) == 0
    data = ReferenceDataset.load(data_path)
    np.savez(starts_path, positions=data.positions[:, -1], velocities=data.velocities[:, -1], masses=data.masses)
    output = tmp_path / "from-starts.npz"
    argv = ["generate", "alanine-dipeptide", "--starts", str(starts_path), "--segment-length", "0.005",
            "--platform", "Reference", "--output", str(output)]
    assert main(argv) == 0
    again = ReferenceDataset.load(output)
    assert again.n_segments == 2 and again.metadata["starts"] == str(starts_path)
    np.testing.assert_allclose(again.positions[:, 0], data.positions[:, -1], rtol=0, atol=1e-12)
    capsys.readouterr()
    assert main(["generate", "alanine-dipeptide", "--hydrogen-mass", "2", *argv[2:-1], str(tmp_path / "x.npz")]) == 2
    assert "other masses" in capsys.readouterr().err and not (tmp_path / "x.npz").exists()


def test_demo_runs_the_shipped_model_beside_verlet(tmp_path, capsys):
    """The README's main job, shortened: every row of the table, the files, and the network switched on."""
    assert main(["demo", "--output-dir", str(tmp_path / "demo"), "--trajectories", "2", "--time", "0.4"]) == 0
    out, err = capsys.readouterr()
    assert "the network is on" in err
    rows = [line for line in out.splitlines() if line.startswith("| ") and "integrator" not in line]
    names = [row.split("|")[1].strip() for row in rows]
    assert names == ["reference: Verlet 0.25 fs", "T3 learned 8 fs", "T3 classical (dW = 0) 8 fs", "Verlet 2 fs",
                     "Verlet 4 fs + HMR (H 1.5 amu)", "Verlet 8 fs (the learned step)"]
    assert all(row.split("|")[3].strip() == "2/2" for row in rows[:5])  # stable; Verlet at 8 fs may not be
    written = {path.name for path in (tmp_path / "demo").iterdir()}
    assert written == {"results.md", "results.json", "energy.png", "temperature.png", "vacf.png"}


def test_demo_with_a_cache_directory_resumes_and_reproduces_its_table(tmp_path, capsys):
    """--cache-dir: the second run reads every trajectory back and prints the same figures (speeds aside, which a
    resumed run measures again)."""
    argv = ["demo", "--trajectories", "2", "--time", "0.4", "--cache-dir", str(tmp_path / "cache"),
            "--speed-time", "0.1"]
    tables = []
    for run in ("first", "second"):
        assert main(argv + ["--output-dir", str(tmp_path / run)]) == 0
        out, err = capsys.readouterr()
        assert err.count("read from") == (0 if run == "first" else 12)
        tables.append([row.split("|")[1:-2] for row in out.splitlines() if row.startswith("| ") and "ps/s" not in row])
    assert len(tables[0]) == 6 and [row[:7] for row in tables[0]] == [row[:7] for row in tables[1]]


def test_evaluate_refuses_a_model_whose_network_is_off(tmp_path, capsys):
    """A model file with zero learned weights would report the classical scheme as learned."""
    shipped = load_model(MODELS_DIR / "alanine-t3-8fs.pt").metadata
    untrained = build_network(shipped.elements, excluded_pairs=[c[:2] for c in shipped.constraints])
    export_model(untrained, shipped, tmp_path / "untrained.pt")
    argv = ["evaluate", str(tmp_path / "untrained.pt"), "--trajectories", "2", "--time", "0.4", "--platform",
            "Reference", "--output-dir", str(tmp_path / "out")]
    assert main(argv) == 2
    assert "learned force is off" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["generate", "no-such-input"], "neither a PDB file nor a bundled example"),
    (["generate", "alanine-dipeptide", "--delta", "0"], "delta must be positive"),
    (["generate", "alanine-dipeptide", "--platform", "Nope"], "unknown or unavailable OpenMM platform 'Nope'"),
    (["generate", "water-box", "--padding", "1"], "do not apply to example 'water-box'"),
    (["generate", "alanine-dipeptide", "--segment-length", "0.0051"], "whole multiple"),
    (["train", "data.npz", "--step", "2", "--implicit", "gauss3", "--tied-heads", "--output", "b.pt"],
     "scheme B (--implicit) has no heads to tie"),
    (["train", "data.npz", "--step", "2", "--implicit", "gauss3", "--force-constants", "--output", "b.pt"],
     "--force-constants is a scheme-A correction"),
])
def test_errors_are_one_line_and_exit_2(tmp_path, monkeypatch, capsys, argv, message):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1 and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_existing_output_exits_2_and_is_kept(tmp_path, capsys):
    output = tmp_path / "data.npz"
    output.write_bytes(b"keep me")
    assert main(["generate", "alanine-dipeptide", "--output", str(output), *TINY]) == 2
    assert "already exists" in capsys.readouterr().err and output.read_bytes() == b"keep me"


def test_usage_errors_exit_2():
    with pytest.raises(SystemExit) as exit_info:
        main(["generate"])
    assert exit_info.value.code == 2


def test_train_scheme_b_from_the_command_line(tmp_path, capsys):
    dataset = tmp_path / "flex.npz"
    assert main(["generate", "alanine-dipeptide", "--record-every", "2", *TINY,
                 "--output", str(dataset)]) == 0
    model = tmp_path / "b.pt"
    argv = ["train", str(dataset), "--step", "2", "--implicit", "gauss3", "--iterations", "3", "--eval-every", "1",
            "--hidden", "8", "--output", str(model)]
    assert main(argv) == 0
    meta = load_model(model).metadata
    assert meta.scheme == "B" and meta.implicit["name"] == "gauss3" and meta.recipe["system"]["input"] == "alanine-dipeptide"
    assert "wrote" in capsys.readouterr().out


def test_train_force_constants_prints_the_factors(tmp_path, capsys):
    dataset = tmp_path / "flex.npz"
    assert main(["generate", "alanine-dipeptide", "--record-every", "2", *TINY, "--output", str(dataset)]) == 0
    model = tmp_path / "factors.pt"
    assert main(["train", str(dataset), "--step", "2", "--splitting", "S2", "--force-constants", "--tied-heads",
                 "--curriculum", "1", "--iterations", "3", "--eval-every", "1", "--gate-trajectories", "2",
                 "--gate-duration", "0.02", "--candidate", "k=1", "--output", str(model)]) == 0
    factors = model_factors(load_model(model))
    printed = capsys.readouterr().out
    assert len(factors) == 1 and f"angle C-N-H {factors[0]['angle C-N-H']:.4f}" in printed
