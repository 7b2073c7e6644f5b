"""Progress lines and text results of the benchmark scripts: progress stamped with the wall-clock time, on stderr,
so that the tables they print on stdout stay clean."""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Optional

from openmm_actionml.atomic import atomic_path


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def emit(text: str, output: Optional[str | Path] = None) -> None:
    """Print a script's result ``text`` on stdout and, with ``output``, write it there too (atomically)."""
    print(text)
    if output:
        with atomic_path(Path(output), overwrite=True) as tmp:
            tmp.write_text(text)
