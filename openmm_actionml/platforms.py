"""Choosing an OpenMM platform by name, with a clear error when it is not there."""
from __future__ import annotations

from typing import Optional

import torch  # noqa: F401  (torch must be imported before openmm so openmmtorch's plugins load)
import openmm as mm

from .errors import InputError

PRECISION_PROPERTY = {"CPU": None, "Reference": None, "OpenCL": "Precision", "CUDA": "Precision", "HIP": "Precision"}


def available_platforms() -> list[str]:
    """Names of the OpenMM platforms that loaded on this machine."""
    return [mm.Platform.getPlatform(i).getName() for i in range(mm.Platform.getNumPlatforms())]


def get_platform(name: str | mm.Platform | None) -> mm.Platform | None:
    """Return the platform called ``name`` (``None`` lets OpenMM choose the fastest).

    Raises
    ------
    InputError
        If no such platform loaded, listing those that did.
    """
    if name is None or isinstance(name, mm.Platform):
        return name
    names = available_platforms()
    for candidate in names:
        if candidate.lower() == str(name).lower():
            return mm.Platform.getPlatformByName(candidate)
    raise InputError(f"unknown or unavailable OpenMM platform {name!r}; this machine has {', '.join(names)}. "
                     f"OpenCL on a CPU needs the pocl-opencl-icd package; CUDA needs a GPU and OpenMM's CUDA build.")


def platform_properties(platform: mm.Platform | None, precision: str | None = None) -> dict[str, str]:
    """Context properties that set ``precision`` ('single', 'mixed', 'double') where the platform has it."""
    if platform is None or precision is None:
        return {}
    key = PRECISION_PROPERTY.get(platform.getName())
    return {key: precision} if key else {}


def explain_context_error(error: Exception, platform: mm.Platform | None) -> Exception:
    """Turn OpenMM's error for a platform that lacks openmmtorch's kernels into one that says what to install.

    Returns the original ``error`` for anything else.
    """
    # Context's check of a named platform, and Platform::createKernel's own message.
    if not any(text in str(error) for text in ("does not support all required kernels",
                                                "does not support the requested kernel")):
        return error
    name = platform.getName() if platform is not None else "chosen"
    failures = "; ".join(mm.Platform.getPluginLoadFailures()) or "none reported"
    return InputError(f"the {name} platform cannot run the learned force: openmmtorch has no plugin for it here "
                      f"(plugin load failures: {failures}). Install openmmtorch's build for this platform, e.g. "
                      f"`pip install \"openmmtorch[cuda12]==1.5\"` for CUDA, or choose Reference, CPU or OpenCL.")


def create_context(system: mm.System, integrator: mm.Integrator, platform: Optional[str] = None) -> mm.Context:
    """``mm.Context`` on the named platform (default: OpenMM's choice); a failure is explained
    (:func:`explain_context_error`)."""
    platform_object = get_platform(platform)
    try:
        return mm.Context(system, integrator) if platform_object is None else \
            mm.Context(system, integrator, platform_object)
    except mm.OpenMMException as error:
        raise explain_context_error(error, platform_object) from error
