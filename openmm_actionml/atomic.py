"""Atomic file writes: a file appears complete or not at all, and nothing existing is lost; and the reading
back of the ``.npz`` files so written, with a named error when one is damaged."""
from __future__ import annotations

import contextlib
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from .errors import InputError


def check_writable(path: str | os.PathLike, overwrite: bool) -> Path:
    """Refuse an existing output unless ``overwrite`` is set; return the path.

    Call this before long work, so that a refusal costs nothing.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise InputError(f"output file {path} already exists; choose another path or pass overwrite=True "
                         f"(--overwrite on the command line).")
    if not path.parent.exists():
        raise InputError(f"the directory of output file {path} does not exist; create {path.parent} first.")
    return path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; move it into place only if the block succeeds.

    The temporary file keeps ``path``'s suffix, so writers that append a suffix
    (``numpy.savez``) or check it still behave. Without ``overwrite`` the file is put in place by a hard link, which
    fails if another process created ``path`` while the block ran, so nothing existing is replaced.

    Raises
    ------
    InputError
        If ``path`` exists (without ``overwrite``), when the block begins or when it ends.
    """
    final = check_writable(path, overwrite)
    fd, tmp_name = tempfile.mkstemp(prefix=".actionml-tmp-", suffix=final.suffix, dir=final.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_name, 0o666 & ~umask)  # mkstemp makes 0600; give the file the permissions open() would
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        if overwrite:
            os.replace(tmp, final)
        elif not _place_if_absent(tmp, final):
            raise InputError(f"output file {final} was created by another process while this one was written; "
                             f"choose another path or pass overwrite=True (--overwrite on the command line).")
    finally:
        if tmp.exists():
            tmp.unlink()


def _place_if_absent(tmp: Path, final: Path) -> bool:
    """Put ``tmp`` at ``final`` unless ``final`` exists; False if it does. A hard link does it atomically; on a
    filesystem without hard links, a check and then a rename."""
    try:
        os.link(tmp, final)
        return True
    except FileExistsError:
        return False
    except OSError:
        if final.exists():
            return False
        os.replace(tmp, final)
        return True


def read_arrays(path: str | os.PathLike, names: Sequence[str], what: str, remedy: str,
                optional: Sequence[str] = ()) -> dict[str, np.ndarray]:
    """The arrays ``names`` of the ``.npz`` file ``path``, and those of ``optional`` that it holds.

    Raises
    ------
    InputError
        ``"{what} {path} is unreadable (...); {remedy}."`` if the file is corrupt or lacks one of ``names``.
    """
    try:
        with np.load(path) as data:
            return {name: data[name] for name in (*names, *(n for n in optional if n in data.files))}
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as error:
        raise InputError(f"{what} {path} is unreadable ({error}); {remedy}.") from error
