"""Conversion of ``openmm.unit`` quantities to plain numbers in OpenMM's internal units.

Inside the package everything is in nm, ps, amu, kJ/mol and K.
At the API boundary a user may pass either a Quantity or a bare number
(taken to be in the internal unit already).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import openmm.unit as u

from .errors import InputError

#: Boltzmann constant in kJ/mol/K.
BOLTZMANN = 0.0083144626181532


def strip_unit(value: Any, unit: u.Unit, name: str) -> Any:
    """Return ``value`` as a number (or array) in ``unit``.

    Parameters
    ----------
    value
        A ``Quantity`` compatible with ``unit``, or a plain number/array assumed in ``unit``.
    unit
        The internal unit, e.g. ``u.picoseconds``.
    name
        Argument name, used in error messages.
    """
    if u.is_quantity(value):
        if not value.unit.is_compatible(unit):
            raise InputError(f"{name} has unit {value.unit}, which is not compatible with {unit}; "
                             f"pass a quantity in {unit} (for example 4*unit.femtoseconds for a step).")
        value = value.value_in_unit(unit)
    if isinstance(value, (list, tuple)):
        value = np.asarray(value, dtype=float)
    return value


def positive_float(value: Any, unit: u.Unit, name: str) -> float:
    """Return a strictly positive, finite float in ``unit``, or raise a clear error."""
    number = float(strip_unit(value, unit, name))
    if not np.isfinite(number) or number <= 0.0:
        raise InputError(f"{name} must be positive and finite, got {value}.")
    return number
