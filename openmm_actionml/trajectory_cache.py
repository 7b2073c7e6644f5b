"""Finished NVE trajectories kept on disk, one file each, so that a long ensemble run that stops (a session's end,
a crash) resumes where it was instead of starting again.

A trajectory's file is named by a fingerprint of everything its samples depend on: the System, the integrator's
program, the platform, the sampling and instability settings and the start itself. A run with other settings
therefore never reads it; there is nothing to invalidate. The row's label prefixes the name only to make listings
readable: a run that labels the same row otherwise (a table that names its rows differently) finds the file by
its fingerprint. Files are written atomically, so a run stopped mid-write leaves the cache as it was.
"""
from __future__ import annotations

import hashlib
import io
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import openmm as mm

from .atomic import atomic_path, read_arrays


@dataclass
class CachedTrajectory:
    """One trajectory's samples: total energies ``[T]`` (kJ/mol, NaN after an instability), velocities
    ``[T, N, 3]`` (nm/ps), whether it stayed stable and, when measured, its radial distribution's pair counts
    summed over its samples."""

    energies: np.ndarray
    velocities: np.ndarray
    stable: bool
    rdf_counts: Optional[np.ndarray] = None


class TrajectoryCache:
    """The cached trajectories of one integrator (row) in ``directory``.

    Parameters
    ----------
    directory
        Where the files live; created if missing.
    name
        The row's label, used (as a slug) in the file names so that a directory listing is readable.
    system, integrator
        The System and a fresh integrator of the row; their XML enters the fingerprint.
    platform
        Name of the platform the trajectories run on.
    settings
        Everything else the samples depend on (sample steps, sample count, instability threshold), as text.
    """

    def __init__(self, directory: str | Path, name: str, system: mm.System, integrator: mm.Integrator,
                 platform: str, settings: str) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._slug = re.sub(r"[^A-Za-z0-9.]+", "-", name).strip("-").lower()
        digest = hashlib.sha256()
        for part in (_reproducible_xml(system), mm.XmlSerializer.serialize(integrator), platform, settings):
            digest.update(part.encode())
            digest.update(b"\0")
        self._row_digest = digest.copy()

    def path(self, positions: np.ndarray, velocities: np.ndarray) -> Path:
        """The file of the trajectory from this start: the one already there under any row's label (the label
        only makes listings readable, so a row named otherwise in another run still finds it), else a new name
        from this row's label."""
        digest = self._row_digest.copy()
        for array in (positions, velocities):
            digest.update(np.ascontiguousarray(array, dtype=np.float64).tobytes())
        fingerprint = digest.hexdigest()[:16]
        existing = sorted(self.directory.glob(f"*-{fingerprint}.npz"))
        return existing[0] if existing else self.directory / f"{self._slug}-{fingerprint}.npz"

    def load(self, positions: np.ndarray, velocities: np.ndarray) -> Optional[CachedTrajectory]:
        """The cached trajectory from this start, or None if it was never finished.

        Raises
        ------
        InputError
            If the file exists but cannot be read (corrupt or written by something else).
        """
        path = self.path(positions, velocities)
        if not path.exists():
            return None
        arrays = read_arrays(path, ("energies", "velocities", "stable"), "trajectory cache file",
                             "delete it and the trajectory will be run again", optional=("rdf_counts",))
        return CachedTrajectory(arrays["energies"], arrays["velocities"], bool(arrays["stable"]),
                                arrays.get("rdf_counts"))

    def save(self, positions: np.ndarray, velocities: np.ndarray, trajectory: CachedTrajectory) -> Path:
        """Write the trajectory from this start (atomically); returns its path."""
        path = self.path(positions, velocities)
        with atomic_path(path, overwrite=True) as tmp:
            extra = {} if trajectory.rdf_counts is None else {"rdf_counts": trajectory.rdf_counts}
            np.savez(tmp, energies=trajectory.energies, velocities=trajectory.velocities,
                     stable=np.array(trajectory.stable), **extra)
        return path


def _reproducible_xml(system: mm.System) -> str:
    """The System's XML with each TorchForce's embedded TorchScript archive replaced by a digest of its entries.

    The archive is not reproducible as it is: torch names its top folder after a random temporary file, so the
    same model serializes differently in every process. The entries themselves are the same.
    """
    def entries_digest(match: re.Match) -> str:
        digest = hashlib.sha256()
        with zipfile.ZipFile(io.BytesIO(bytes.fromhex(match.group(1)))) as archive:
            for name in sorted(archive.namelist(), key=lambda n: n.partition("/")[2]):
                digest.update(name.partition("/")[2].encode() + b"\0" + archive.read(name))
        return f'encodedFileContents="sha256:{digest.hexdigest()}"'

    return re.sub(r'encodedFileContents="([0-9a-fA-F]*)"', entries_digest, mm.XmlSerializer.serialize(system))


def reproducible_xml_digest(system: mm.System) -> str:
    """A short digest of ``system`` that is the same in every process (see :func:`_reproducible_xml`)."""
    return hashlib.sha256(_reproducible_xml(system).encode()).hexdigest()[:16]
