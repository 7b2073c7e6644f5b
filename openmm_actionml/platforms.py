"""Choosing an OpenMM platform by name, with a clear error when it is not there."""
from __future__ import annotations

import re
from typing import Optional

import torch  # noqa: F401  (torch must be imported before openmm so openmmtorch's plugins load)
import openmm as mm

from .errors import InputError

PRECISION_PROPERTY = {"CPU": None, "Reference": None, "OpenCL": "Precision", "CUDA": "Precision", "HIP": "Precision"}


def reload_torch_plugins() -> list[str]:
    """Load openmmtorch's plugin libraries that failed to load because openmm was imported before torch.

    OpenMM loads its plugins when it is first imported; openmmtorch's need torch's libraries, so a script that
    starts with ``import openmm`` leaves the learned force without kernels. With torch imported, loading those
    libraries again succeeds. Returns the paths loaded now (empty when nothing had failed).
    """
    loaded = []
    for failure in mm.Platform.getPluginLoadFailures():
        match = re.match(r"Error loading library (.*OpenMMTorch[^:/]*\.(?:so|dylib|dll))", failure)
        if match:
            try:
                mm.Platform.loadPluginLibrary(match.group(1))
            except mm.OpenMMException:
                continue  # a real failure (e.g. no CUDA driver); explain_context_error reports it when it matters
            loaded.append(match.group(1))
    return loaded


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


#: Below this many atoms the learned force runs fastest on one torch thread: its tensors are too small to split,
#: and on a loaded machine extra threads wait on each other (measured on alanine dipeptide, 2 cores with another
#: job running: 0.11 ps/s with torch's default threads against 1.9 ps/s with one).
SINGLE_THREAD_BELOW = 1000


def configure_torch_threads(n_atoms: int, requested: Optional[int] = None) -> int:
    """Set torch's intra-op threads for a learned force on ``n_atoms`` atoms: ``requested``, else one below
    :data:`SINGLE_THREAD_BELOW` atoms and torch's default above. Returns the number set."""
    threads = requested if requested is not None else (1 if n_atoms < SINGLE_THREAD_BELOW else torch.get_num_threads())
    if threads < 1:
        raise InputError(f"torch threads must be at least 1, got {threads}.")
    torch.set_num_threads(int(threads))
    return int(threads)
