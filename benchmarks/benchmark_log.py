"""Progress lines of the benchmark scripts: stamped with the wall-clock time, on stderr, so that the tables they
print on stdout stay clean."""
from __future__ import annotations

import sys
import time


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)
