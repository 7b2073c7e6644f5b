"""openmm-actionml: learned, structure-preserving long-time-step integrators for OpenMM.

Import torch before openmm so that openmmtorch's plugins load; this package does that for you.
"""
import logging

import torch  # noqa: F401  (must precede openmm)

# openmmtorch 1.5 imports the deprecated ``simtk.openmm`` alias, which logs a warning on the root logger.
_root_logger = logging.getLogger()
_level = _root_logger.level
_root_logger.setLevel(logging.ERROR)
try:
    import openmmtorch  # noqa: F401
finally:
    _root_logger.setLevel(_level)

__version__ = "0.1.0"

from .integrator import ActionMLIntegrator, add_learned_force  # noqa: E402
from .modelfile import ActionMLModel, export_model, load_model  # noqa: E402

__all__ = ["ActionMLIntegrator", "ActionMLModel", "add_learned_force", "export_model", "load_model"]
