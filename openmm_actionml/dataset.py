"""The reference-data file: synchronous positions and velocities of NVE segments on a fine time grid.

One ``.npz`` file (read with ``allow_pickle=False``) holds the arrays and a JSON metadata string.
Frames are ``delta`` ps apart; training pairs at a lag ``h = n*delta`` come from within one segment,
and training and validation are split by segment.
"""
from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import openmm as mm
import openmm.unit as u

from .atomic import atomic_path
from .errors import DatasetError, InputError
from .units import positive_float

FORMAT = "openmm-actionml-reference-data"
FORMAT_VERSION = 1
#: Relative tolerance for a lag to count as a whole number of frames.
LAG_TOLERANCE = 1e-6


@dataclass
class ReferenceDataset:
    """Reference trajectories for training a long-step map.

    Attributes
    ----------
    positions, velocities
        Shape ``[n_segments, n_frames, N, 3]``, float64, in nm and nm/ps, at the same instants.
    delta
        Time between stored frames, ps.
    masses
        Particle masses, amu, shape ``[N]``.
    elements
        Element symbol of each particle.
    temperature
        Temperature the segments were drawn at, K.
    box
        Periodic box vectors as rows, nm, shape ``[3, 3]``; ``None`` if not periodic.
    constraint_pairs, constraint_distances
        Constrained atom pairs ``[C, 2]`` and their distances in nm ``[C]``.
    com_removed
        Whether the centre-of-mass velocity is zero (it removes 3 degrees of freedom).
    potential_energies
        Force-field potential energy of each frame, kJ/mol, ``[n_segments, n_frames]``, or ``None``.
    forces
        Force-field forces of each frame, kJ/mol/nm, like ``positions``, or ``None``.
    metadata
        Force field, protocol and provenance (package versions, platform, seed, command, time).
    system_xml
        The serialized OpenMM System the data came from (its force field is V for training), or ``None``.
    """

    positions: np.ndarray
    velocities: np.ndarray
    delta: float
    masses: np.ndarray
    elements: Sequence[str]
    temperature: float
    box: np.ndarray | None = None
    constraint_pairs: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), dtype=np.int64))
    constraint_distances: np.ndarray = field(default_factory=lambda: np.zeros(0))
    com_removed: bool = False
    potential_energies: np.ndarray | None = None
    forces: np.ndarray | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    system_xml: str | None = None

    def __post_init__(self) -> None:
        self.positions = np.asarray(self.positions, dtype=np.float64)
        self.velocities = np.asarray(self.velocities, dtype=np.float64)
        self.masses = np.asarray(self.masses, dtype=np.float64)
        self.elements = tuple(str(e) for e in self.elements)
        self.constraint_pairs = np.asarray(self.constraint_pairs, dtype=np.int64).reshape(-1, 2)
        self.constraint_distances = np.asarray(self.constraint_distances, dtype=np.float64).reshape(-1)
        self.delta = float(self.delta)
        self.temperature = float(self.temperature)
        self.com_removed = bool(self.com_removed)
        if self.box is not None:
            self.box = np.asarray(self.box, dtype=np.float64)
        if self.potential_energies is not None:
            self.potential_energies = np.asarray(self.potential_energies, dtype=np.float64)
        if self.forces is not None:
            self.forces = np.asarray(self.forces, dtype=np.float64)
        self._check()

    def _check(self) -> None:
        shape = self.positions.shape
        problems = []
        if len(shape) != 4 or shape[-1] != 3 or shape[1] < 2:
            problems.append(f"positions have shape {shape}, expected [segments, frames >= 2, atoms, 3]")
        elif self.velocities.shape != shape:
            problems.append(f"velocities have shape {self.velocities.shape}, positions {shape}")
        else:
            n = shape[2]
            if self.masses.shape != (n,) or len(self.elements) != n:
                problems.append(f"{len(self.masses)} masses and {len(self.elements)} elements for {n} atoms")
            if self.box is not None and self.box.shape != (3, 3):
                problems.append(f"box has shape {self.box.shape}, expected [3, 3]")
            if len(self.constraint_pairs) != len(self.constraint_distances):
                problems.append("constraint pairs and distances differ in number")
            elif len(self.constraint_pairs) and (self.constraint_pairs.min() < 0 or self.constraint_pairs.max() >= n):
                problems.append("a constraint refers to an atom that does not exist")
            if self.potential_energies is not None and self.potential_energies.shape != shape[:2]:
                problems.append(f"potential energies have shape {self.potential_energies.shape}, expected {shape[:2]}")
            if self.forces is not None and self.forces.shape != shape:
                problems.append(f"forces have shape {self.forces.shape}, expected {shape}")
        if not (np.isfinite(self.delta) and self.delta > 0 and np.isfinite(self.temperature) and self.temperature > 0):
            problems.append(f"delta ({self.delta} ps) and temperature ({self.temperature} K) must be positive")
        if problems:
            raise DatasetError("inconsistent reference dataset: " + "; ".join(problems) + ".")

    # -- sizes -------------------------------------------------------------------------------------
    @property
    def segment_temperatures(self) -> list[float]:
        """The temperature each segment was drawn at (they differ in a :meth:`concatenate` of datasets)."""
        return list(self.metadata.get("segment_temperatures", [self.temperature] * self.n_segments))

    @property
    def n_segments(self) -> int:
        """Number of independent NVE segments."""
        return self.positions.shape[0]

    @property
    def n_frames(self) -> int:
        """Frames per segment, including the first."""
        return self.positions.shape[1]

    @property
    def n_atoms(self) -> int:
        """Number of particles."""
        return self.positions.shape[2]

    @property
    def n_constraints(self) -> int:
        """Number of distance constraints."""
        return len(self.constraint_pairs)

    @property
    def n_dof(self) -> int:
        """Kinetic degrees of freedom: ``3N - constraints - (3 if the COM velocity is removed)``."""
        return 3 * self.n_atoms - self.n_constraints - (3 if self.com_removed else 0)

    @property
    def segment_duration(self) -> float:
        """Time spanned by one segment, ps."""
        return (self.n_frames - 1) * self.delta

    @property
    def periodic(self) -> bool:
        """Whether the system has a periodic box."""
        return self.box is not None

    # -- views for training ------------------------------------------------------------------------
    def lag_steps(self, lag: u.Quantity | float) -> int:
        """The number of frames ``n`` with ``lag = n * delta``.

        Raises
        ------
        InputError
            If ``lag`` (a Quantity or ps) is not a positive whole multiple of ``delta``.
        """
        value = positive_float(lag, u.picosecond, "lag")
        n = round(value / self.delta)
        if n < 1 or abs(n * self.delta - value) > LAG_TOLERANCE * value:
            raise InputError(f"lag {value * 1000:g} fs is not a positive whole multiple of the dataset's frame "
                             f"spacing {self.delta * 1000:g} fs; choose a lag of n*{self.delta * 1000:g} fs.")
        return n

    def windows(self, lag: u.Quantity | float, k: int, segments: Sequence[int] | None = None,
                stride: int = 1, select: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Positions and velocities at ``t, t+lag, ..., t+k*lag`` for every start frame ``t``.

        Parameters
        ----------
        lag
            Step between window frames (Quantity or ps), a multiple of ``delta``.
        k
            Number of steps in a window (``k + 1`` frames).
        segments
            Segment indices to draw from (default: all).
        stride
            Spacing of start frames ``t``, in frames.
        select
            Indices into the ``M`` windows to return (only those are gathered), e.g. a random batch.

        Returns
        -------
        positions, velocities
            Shape ``[M, k + 1, N, 3]``, ``M`` = (number of segments) x (start frames per segment), in that order;
            with ``select``, ``[len(select), k + 1, N, 3]``.
        """
        index = self._window_index(lag, k, segments, stride, select)
        return self.positions[index], self.velocities[index]

    def start_forces(self, lag: u.Quantity | float, k: int, segments: Sequence[int] | None = None,
                     stride: int = 1, select: np.ndarray | None = None) -> np.ndarray:
        """The stored force-field forces at the first frame of each window :meth:`windows` returns, ``[M, N, 3]``.

        Raises
        ------
        DatasetError
            If the dataset stores no forces.
        """
        if self.forces is None:
            raise DatasetError("this dataset stores no forces; generate it with store_forces=True (--store-forces).")
        return self._at_window_starts(self.forces, lag, k, segments, stride, select)

    def start_energies(self, lag: u.Quantity | float, k: int, segments: Sequence[int] | None = None,
                       stride: int = 1, select: np.ndarray | None = None) -> np.ndarray:
        """The stored force-field potential energies at the first frame of each window :meth:`windows` returns,
        ``[M]``.

        Raises
        ------
        DatasetError
            If the dataset stores no potential energies.
        """
        if self.potential_energies is None:
            raise DatasetError("this dataset stores no potential energies; generate it again with `actionml "
                               "generate`, which records them.")
        return self._at_window_starts(self.potential_energies, lag, k, segments, stride, select)

    def _at_window_starts(self, values: np.ndarray, lag: u.Quantity | float, k: int, segments: Sequence[int] | None,
                          stride: int, select: np.ndarray | None) -> np.ndarray:
        """``values[segment, frame]`` at the first frame of each window :meth:`windows` returns."""
        segment, frames = self._window_index(lag, k, segments, stride, select)
        return values[segment[:, 0], frames[:, 0]]

    def _window_index(self, lag: u.Quantity | float, k: int, segments: Sequence[int] | None, stride: int,
                      select: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """``(segment, frame)`` index arrays, ``[M, 1]`` and ``[M, k + 1]``, of the windows :meth:`windows` returns."""
        n = self.lag_steps(lag)
        if int(k) != k or k < 1 or int(stride) != stride or stride < 1:
            raise InputError(f"k ({k}) and stride ({stride}) must be positive integers.")
        span = int(k) * n
        if span > self.n_frames - 1:
            raise InputError(f"a window of {k} x {n} frames spans {span * self.delta:g} ps, longer than a segment "
                             f"({self.segment_duration:g} ps); use a smaller lag or k, or generate longer segments.")
        chosen = self._segments(segments)
        starts = np.arange(0, self.n_frames - span, int(stride))
        if select is None:
            select = np.arange(len(chosen) * len(starts))
        segment, start = np.divmod(np.asarray(select, dtype=np.int64), len(starts))
        return chosen[segment][:, None], starts[start][:, None] + n * np.arange(int(k) + 1)

    def count_windows(self, lag: u.Quantity | float, k: int, segments: Sequence[int] | None = None,
                      stride: int = 1) -> int:
        """``M``, the number of windows :meth:`windows` would return."""
        span = int(k) * self.lag_steps(lag)
        return len(self._segments(segments)) * len(range(0, self.n_frames - span, int(stride)))

    def pairs(self, lag: u.Quantity | float, segments: Sequence[int] | None = None,
              stride: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``(q, v, q', v')`` one ``lag`` apart, each ``[M, N, 3]``, over segments and start frames."""
        q, v = self.windows(lag, 1, segments, stride)
        return q[:, 0], v[:, 0], q[:, 1], v[:, 1]

    def split(self, validation_fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Random ``(train_segments, validation_segments)``, disjoint and sorted; at least one each
        when ``validation_fraction > 0``."""
        if not 0.0 <= validation_fraction < 1.0:
            raise InputError(f"validation_fraction must be in [0, 1), got {validation_fraction}.")
        n_val = 0 if validation_fraction == 0 else max(1, round(validation_fraction * self.n_segments))
        if n_val >= self.n_segments:
            raise InputError(f"cannot split {self.n_segments} segment(s) into training and validation; "
                             f"generate more segments or set validation_fraction to 0.")
        order = np.random.default_rng(seed).permutation(self.n_segments)
        return np.sort(order[n_val:]), np.sort(order[:n_val])

    def kinetic_energies(self) -> np.ndarray:
        """Kinetic energy of each frame, kJ/mol, ``[n_segments, n_frames]``."""
        return 0.5 * np.einsum("n,sfnx,sfnx->sf", self.masses, self.velocities, self.velocities)

    def _segments(self, segments: Sequence[int] | None) -> np.ndarray:
        if segments is None:
            return np.arange(self.n_segments)
        chosen = np.asarray(segments, dtype=np.int64).reshape(-1)
        if len(chosen) == 0 or chosen.min() < -self.n_segments or chosen.max() >= self.n_segments:
            raise InputError(f"segment indices must be a non-empty selection of 0..{self.n_segments - 1}.")
        return chosen

    def system(self) -> mm.System:
        """The OpenMM System the data came from."""
        if self.system_xml is None:
            raise DatasetError("this dataset does not carry its System; pass the System explicitly or "
                               "regenerate the data with this version of `actionml generate`.")
        return mm.XmlSerializer.deserialize(self.system_xml)

    @classmethod
    def concatenate(cls, datasets: Sequence["ReferenceDataset"]) -> "ReferenceDataset":
        """One dataset holding the segments of several of the same system, e.g. drawn at 300 K and at 375 K
        to cover slightly off-equilibrium states. Temperature (the loss's kT) and System are the first one's.

        Raises
        ------
        DatasetError
            If the datasets differ in atoms, masses, constraints, box, frame spacing or segment length.
        """
        first = datasets[0]
        for other in datasets[1:]:
            same = (other.positions.shape[1:] == first.positions.shape[1:] and other.elements == first.elements
                    and np.allclose(other.masses, first.masses) and abs(other.delta - first.delta) <= 1e-12
                    and np.array_equal(other.constraint_pairs, first.constraint_pairs)
                    and np.allclose(other.constraint_distances, first.constraint_distances)
                    and (other.box is None) == (first.box is None)
                    and (first.box is None or np.allclose(other.box, first.box)))
            if not same:
                raise DatasetError("datasets to combine must be of the same system with the same atoms, masses, "
                                   "constraints, box, frame spacing and segment length; generate them with the same "
                                   "options except --temperature, --seed and --starts.")

        def joined(name: str) -> np.ndarray | None:
            arrays = [getattr(d, name) for d in datasets]
            return None if any(a is None for a in arrays) else np.concatenate(arrays)

        return cls(positions=joined("positions"), velocities=joined("velocities"), delta=first.delta,
                   masses=first.masses, elements=first.elements, temperature=first.temperature, box=first.box,
                   constraint_pairs=first.constraint_pairs, constraint_distances=first.constraint_distances,
                   com_removed=first.com_removed, potential_energies=joined("potential_energies"),
                   forces=joined("forces"), system_xml=first.system_xml,
                   metadata={**first.metadata, "combined_temperatures": [d.temperature for d in datasets],
                             "segment_temperatures": [t for d in datasets for t in d.segment_temperatures]})

    # -- file --------------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike, overwrite: bool = False) -> Path:
        """Write the dataset to ``path`` atomically; refuse an existing file unless ``overwrite``."""
        arrays = {"positions": self.positions, "velocities": self.velocities, "masses": self.masses,
                  "elements": np.asarray(self.elements, dtype=str),
                  "constraint_pairs": self.constraint_pairs, "constraint_distances": self.constraint_distances}
        for name in ("box", "potential_energies", "forces"):
            if getattr(self, name) is not None:
                arrays[name] = getattr(self, name)
        header = {"format": FORMAT, "version": FORMAT_VERSION, "delta": self.delta,
                  "temperature": self.temperature, "com_removed": self.com_removed, "metadata": self.metadata}
        arrays["header"] = np.asarray(json.dumps(header))
        if self.system_xml is not None:
            arrays["system_xml"] = np.asarray(self.system_xml)
        with atomic_path(path, overwrite) as tmp:
            with open(tmp, "wb") as handle:  # a handle, so numpy does not append ".npz" to the name
                np.savez(handle, **arrays)
        return Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "ReferenceDataset":
        """Read a dataset written by :meth:`save`.

        Raises
        ------
        DatasetError
            If the file is missing, truncated, corrupt or not a reference dataset.
        """
        path = Path(path)
        if not path.is_file():
            raise DatasetError(f"reference dataset {path} not found; create it with `actionml generate`.")
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {name: data[name] for name in data.files}
            header = json.loads(str(arrays.pop("header")))
            if "system_xml" in arrays:
                arrays["system_xml"] = str(arrays["system_xml"])
        except KeyError:
            raise DatasetError(f"{path} is not an openmm-actionml reference dataset (no header); "
                               f"create one with `actionml generate`.") from None
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
            raise DatasetError(f"{path} is corrupt or truncated ({error}); generate it again.") from error
        if not isinstance(header, dict) or header.get("format") != FORMAT:
            raise DatasetError(f"{path} is not an openmm-actionml reference dataset; "
                               f"create one with `actionml generate`.")
        if header.get("version") != FORMAT_VERSION:
            raise DatasetError(f"{path} has reference-data format version {header.get('version')}, this "
                               f"openmm-actionml reads version {FORMAT_VERSION}; regenerate it.")
        try:
            return cls(delta=header["delta"], temperature=header["temperature"], com_removed=header["com_removed"],
                       metadata=header["metadata"], **arrays)
        except (KeyError, TypeError) as error:
            raise DatasetError(f"{path} lacks part of a reference dataset ({error}); generate it again.") from error
