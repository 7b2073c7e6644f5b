"""Exceptions raised by openmm-actionml.

Every error names the problem and, where there is one, the fix.
"""


class ActionMLError(Exception):
    """Base class of every error this package raises on purpose."""


class InputError(ActionMLError, ValueError):
    """An argument or input file is invalid (wrong value, unit, shape or content)."""


class DatasetError(ActionMLError):
    """A reference dataset is missing, corrupt, or does not fit the request."""


class ModelFileError(ActionMLError):
    """A model file is missing, corrupt, truncated or of an unknown format."""


class ModelMismatchError(ActionMLError):
    """A model does not match the System or integrator it is used with."""


class SimulationInstabilityError(ActionMLError):
    """Positions or velocities became NaN or infinite."""


class ActionMLConvergenceError(ActionMLError):
    """The implicit (scheme B) fixed-point solve did not converge."""
