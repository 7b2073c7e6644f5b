"""openmm-actionml: learned, structure-preserving long-time-step integrators for OpenMM.

Import torch before openmm so that openmmtorch's plugins load; this package does that for you.
"""
import torch  # noqa: F401  (must precede openmm)

__version__ = "0.1.0"
