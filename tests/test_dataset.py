"""ReferenceDataset: file round trip, corrupt files, lags, windows and splits."""
from __future__ import annotations

import json
import zipfile

import numpy as np
import openmm.unit as u
import pytest

from openmm_actionml.dataset import ReferenceDataset
from openmm_actionml.errors import DatasetError, InputError


def make_dataset(n_segments: int = 3, n_frames: int = 9, n_atoms: int = 4, **changes) -> ReferenceDataset:
    """Random arrays with every optional part filled in; frames 0.5 fs apart."""
    rng = np.random.default_rng(0)
    shape = (n_segments, n_frames, n_atoms, 3)
    fields = dict(positions=rng.normal(size=shape), velocities=rng.normal(size=shape), delta=0.0005,
                  masses=rng.uniform(1, 16, n_atoms), elements=["C", "H", "O", "N"][:n_atoms], temperature=300.0,
                  box=2.5 * np.eye(3), constraint_pairs=[[0, 1]], constraint_distances=[0.109], com_removed=True,
                  potential_energies=rng.normal(size=shape[:2]), forces=rng.normal(size=shape),
                  metadata={"forcefield": ["amber14-all.xml"], "provenance": {"seed": 1}})
    return ReferenceDataset(**{**fields, **changes})


def assert_same(a: ReferenceDataset, b: ReferenceDataset) -> None:
    for name in ("positions", "velocities", "masses", "box", "constraint_pairs", "constraint_distances",
                 "potential_energies", "forces"):
        left, right = getattr(a, name), getattr(b, name)
        assert (left is None and right is None) or np.array_equal(left, right), name
    assert (a.delta, a.temperature, a.com_removed, a.elements, a.metadata) == \
           (b.delta, b.temperature, b.com_removed, b.elements, b.metadata)


def test_round_trip(tmp_path):
    data = make_dataset()
    data.save(tmp_path / "data.npz")
    assert_same(ReferenceDataset.load(tmp_path / "data.npz"), data)
    bare = make_dataset(box=None, constraint_pairs=np.zeros((0, 2)), constraint_distances=[], potential_energies=None,
                        forces=None, com_removed=False)
    bare.save(tmp_path / "bare.reference")  # any suffix: numpy must not append ".npz"
    assert_same(ReferenceDataset.load(tmp_path / "bare.reference"), bare)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bare.reference", "data.npz"]


def test_save_refuses_existing_file_unless_overwrite(tmp_path):
    path = tmp_path / "data.npz"
    make_dataset().save(path)
    with pytest.raises(InputError, match="already exists"):
        make_dataset(temperature=400.0).save(path)
    assert ReferenceDataset.load(path).temperature == 300.0
    make_dataset(temperature=400.0).save(path, overwrite=True)
    assert ReferenceDataset.load(path).temperature == 400.0
    assert list(tmp_path.iterdir()) == [path]


def test_load_errors(tmp_path):
    with pytest.raises(DatasetError, match="not found"):
        ReferenceDataset.load(tmp_path / "missing.npz")
    good = tmp_path / "good.npz"
    make_dataset().save(good)
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(DatasetError, match="corrupt or truncated"):
        ReferenceDataset.load(truncated)
    text = tmp_path / "text.npz"
    text.write_text("positions, velocities\n")
    with pytest.raises(DatasetError, match="corrupt or truncated"):
        ReferenceDataset.load(text)
    foreign = tmp_path / "foreign.npz"
    np.savez(foreign, positions=np.zeros(3))
    with pytest.raises(DatasetError, match="not an openmm-actionml reference dataset"):
        ReferenceDataset.load(foreign)
    other = tmp_path / "other.npz"
    np.savez(other, header=np.asarray(json.dumps({"format": "something-else"})))
    with pytest.raises(DatasetError, match="not an openmm-actionml reference dataset"):
        ReferenceDataset.load(other)


def test_load_rejects_a_member_that_needs_pickle(tmp_path):
    path = tmp_path / "pickled.npz"
    make_dataset().save(path)
    with zipfile.ZipFile(path, "a") as archive, archive.open("extra.npy", "w") as member:
        np.save(member, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(DatasetError, match="corrupt or truncated"):
        ReferenceDataset.load(path)


def test_inconsistent_arrays_are_refused():
    with pytest.raises(DatasetError, match="velocities have shape"):
        make_dataset(velocities=np.zeros((3, 9, 4, 2)))
    with pytest.raises(DatasetError, match="masses"):
        make_dataset(masses=np.ones(3))
    with pytest.raises(DatasetError, match="atom that does not exist"):
        make_dataset(constraint_pairs=[[0, 7]])


def test_sizes_and_degrees_of_freedom():
    data = make_dataset()
    assert (data.n_segments, data.n_frames, data.n_atoms, data.n_constraints) == (3, 9, 4, 1)
    assert data.n_dof == 3 * 4 - 1 - 3
    assert data.segment_duration == pytest.approx(0.004) and data.periodic
    kinetic = 0.5 * (data.masses[:, None] * data.velocities[1, 2] ** 2).sum()
    assert data.kinetic_energies()[1, 2] == pytest.approx(kinetic)


def test_lag_steps():
    data = make_dataset()
    assert data.lag_steps(2 * u.femtosecond) == 4
    assert data.lag_steps(0.0005) == 1
    for bad in (0.75 * u.femtosecond, 0.0, -0.001, 0.2 * u.femtosecond):
        with pytest.raises(InputError, match="lag"):
            data.lag_steps(bad)


def test_pairs_match_direct_indexing():
    data = make_dataset()
    q, v, q1, v1 = data.pairs(1.5 * u.femtosecond, segments=[2, 0])
    assert q.shape == (2 * (9 - 3), 4, 3)
    np.testing.assert_array_equal(q[0], data.positions[2, 0])
    np.testing.assert_array_equal(q1[0], data.positions[2, 3])
    np.testing.assert_array_equal(v[7], data.velocities[0, 1])
    np.testing.assert_array_equal(v1[7], data.velocities[0, 4])
    strided = data.pairs(0.0005, stride=4)[0]
    np.testing.assert_array_equal(strided, data.positions[:, [0, 4]].reshape(-1, 4, 3))


def test_windows():
    data = make_dataset()
    q, v = data.windows(1 * u.femtosecond, k=3)  # frames t, t+2, t+4, t+6 for t = 0, 1, 2
    assert q.shape == v.shape == (3 * 3, 4, 4, 3)
    np.testing.assert_array_equal(q[4], data.positions[1, [1, 3, 5, 7]])
    np.testing.assert_array_equal(v[8], data.velocities[2, [2, 4, 6, 8]])
    with pytest.raises(InputError, match="longer than a segment"):
        data.windows(1 * u.femtosecond, k=5)
    with pytest.raises(InputError, match="positive integers"):
        data.windows(1 * u.femtosecond, k=0)
    with pytest.raises(InputError, match="segment indices"):
        data.windows(1 * u.femtosecond, k=1, segments=[3])


def test_start_forces_are_those_of_each_windows_first_frame():
    data = make_dataset()
    pick = np.array([7, 1, 4])
    forces = data.start_forces(1 * u.femtosecond, 3, select=pick)  # window m starts at segment m // 3, frame m % 3
    np.testing.assert_array_equal(forces, data.forces[[2, 0, 1], [1, 1, 1]])
    data.forces = None
    with pytest.raises(DatasetError, match="stores no forces.*--store-forces"):
        data.start_forces(1 * u.femtosecond, 3)


def test_start_energies_are_those_of_each_windows_first_frame():
    data = make_dataset()
    pick = np.array([7, 1, 4])
    energies = data.start_energies(1 * u.femtosecond, 3, select=pick)
    np.testing.assert_array_equal(energies, data.potential_energies[[2, 0, 1], [1, 1, 1]])
    data.potential_energies = None
    with pytest.raises(DatasetError, match="stores no potential energies"):
        data.start_energies(1 * u.femtosecond, 3)


def test_split_by_segment():
    data = make_dataset(n_segments=10)
    train, validation = data.split(0.2, seed=5)
    assert len(validation) == 2 and len(train) == 8
    assert sorted(np.concatenate([train, validation]).tolist()) == list(range(10))
    assert [a.tolist() for a in data.split(0.2, seed=5)] == [train.tolist(), validation.tolist()]
    assert len(data.split(0.0)[1]) == 0 and len(make_dataset(n_segments=2).split(0.01)[1]) == 1
    with pytest.raises(InputError, match="cannot split"):
        make_dataset(n_segments=1).split(0.5)
    with pytest.raises(InputError, match="validation_fraction"):
        data.split(1.0)


def test_concatenate_combines_segments_and_refuses_other_systems():
    rng = np.random.default_rng(0)

    def make(n_segments: int, temperature: float, n_atoms: int = 3) -> ReferenceDataset:
        shape = (n_segments, 4, n_atoms, 3)
        return ReferenceDataset(rng.normal(size=shape), rng.normal(size=shape), 0.001, np.ones(n_atoms),
                                ["C"] * n_atoms, temperature)

    cold, hot = make(2, 300.0), make(3, 375.0)
    both = ReferenceDataset.concatenate([cold, hot])
    assert both.n_segments == 5 and both.temperature == 300.0
    np.testing.assert_array_equal(both.positions[2:], hot.positions)
    assert both.metadata["combined_temperatures"] == [300.0, 375.0]
    assert both.segment_temperatures == [300.0, 300.0, 375.0, 375.0, 375.0] and hot.segment_temperatures == [375.0] * 3
    with pytest.raises(DatasetError, match="same system"):
        ReferenceDataset.concatenate([cold, make(2, 300.0, n_atoms=4)])


def test_selected_windows_equal_indexing_all_windows():
    rng = np.random.default_rng(1)
    shape = (3, 9, 2, 3)
    data = ReferenceDataset(rng.normal(size=shape), rng.normal(size=shape), 0.001, np.ones(2), ["C", "C"], 300.0)
    q, v = data.windows(0.002, 2, [0, 2])
    assert data.count_windows(0.002, 2, [0, 2]) == len(q)
    pick = rng.choice(len(q), 4, replace=False)
    q_pick, v_pick = data.windows(0.002, 2, [0, 2], select=pick)
    np.testing.assert_array_equal(q_pick, q[pick])
    np.testing.assert_array_equal(v_pick, v[pick])
