"""Atomic writes keep what exists: a file another process creates while ours is written is not replaced."""
import errno
import os

import numpy as np
import pytest

from openmm_actionml.atomic import atomic_path, read_arrays
from openmm_actionml.errors import InputError


def _write_while_another_process_creates(path):
    with atomic_path(path) as tmp:
        np.savez(tmp, ours=np.zeros(2))
        path.write_bytes(b"the other process's file")


@pytest.mark.parametrize("hard_links", [True, False])
def test_a_file_created_while_ours_is_written_is_kept(tmp_path, monkeypatch, hard_links):
    """Without overwrite, the other file stays and ours is refused, no temporary file is left, and with no
    file in the way ours is put in place; with and without a filesystem that has hard links."""
    if not hard_links:
        def no_hard_links(*_):
            raise OSError(errno.EPERM, "hard links not supported")
        monkeypatch.setattr(os, "link", no_hard_links)
    path = tmp_path / "out.npz"
    with pytest.raises(InputError, match="created by another process while this one was written"):
        _write_while_another_process_creates(path)
    assert path.read_bytes() == b"the other process's file"
    assert [p.name for p in tmp_path.iterdir()] == ["out.npz"]
    fresh = tmp_path / "fresh.npz"
    with atomic_path(fresh) as tmp:
        np.savez(tmp, ours=np.arange(3))
    np.testing.assert_array_equal(read_arrays(fresh, ("ours",), "test file", "")["ours"], np.arange(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fresh.npz", "out.npz"]


def test_overwrite_replaces_a_file_created_meanwhile(tmp_path):
    path = tmp_path / "out.npz"
    with atomic_path(path, overwrite=True) as tmp:
        np.savez(tmp, ours=np.ones(2))
        path.write_bytes(b"the other process's file")
    np.testing.assert_array_equal(read_arrays(path, ("ours",), "test file", "")["ours"], np.ones(2))
