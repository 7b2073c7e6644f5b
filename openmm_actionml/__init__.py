"""openmm-actionml: learned, structure-preserving long-time-step integrators for OpenMM.

openmmtorch's plugins load only with torch imported before openmm. This package imports torch first and, if openmm
was imported earlier, loads the plugins that failed then.
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

from .platforms import reload_torch_plugins  # noqa: E402

reload_torch_plugins()

__version__ = "0.1.0"

from .integrator import ActionMLIntegrator, add_learned_force, learned_step  # noqa: E402
from .examples import with_baseline  # noqa: E402
from .modelfile import ActionMLModel, export_model, load_model  # noqa: E402

__all__ = ["ActionMLIntegrator", "ActionMLModel", "add_learned_force", "export_model", "learned_step", "load_model",
           "with_baseline"]
