"""``actionml check``: how far a model's kick potential W puts its Boltzmann ensemble from the force field V's, read
off reference frames drawn from V's ensemble, with no simulation.

For a surrogate (pure ML, or a baseline force field plus a learned correction) the liquid or molecule the model
samples under a thermostat is W's, not V's. To first order in ``W - V`` the Boltzmann average of an observable A
moves by ``-cov_V(A, W - V) / kT`` (a cumulant expansion of ``<A exp(-(W - V) / kT)>_V``), so frames of V's
ensemble (a dataset from ``actionml generate``) tell in seconds where W's ensemble lies, before its 16-trajectory
ensembles are run. W is the step's kick potential: the heads weighted by their kick coefficients, whose gradient
is the mean kick force per step.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import openmm as mm
import torch

from .dataset import ReferenceDataset
from .errors import InputError
from .modelfile import ActionMLModel
from .openmm_potential import OpenMMPotential
from .training import baseline_system
from .units import BOLTZMANN


def boltzmann_shift(observable: np.ndarray, difference: np.ndarray, kT: float, groups: np.ndarray,
                    n_bootstrap: int = 200, seed: int = 0) -> tuple[float, float]:
    """First-order change of ``<A>`` when V's Boltzmann weights become W's, ``-cov_V(A, W - V) / kT``.

    Parameters
    ----------
    observable, difference
        A and ``W - V`` (kJ/mol) at frames sampled from V's ensemble, shape ``[M]``.
    kT
        Thermal energy, kJ/mol.
    groups
        Group label of each frame (e.g. its segment); frames within a group may be correlated, groups are not.

    Returns
    -------
    The shift in A's units and its standard error from a bootstrap over groups (NaN for a single group).
    """
    observable, difference, groups = (np.asarray(x, dtype=np.float64).reshape(-1)
                                      for x in (observable, difference, groups))
    if not (len(observable) == len(difference) == len(groups)) or len(observable) < 2:
        raise InputError("observable, difference and groups need one value per frame, at least two frames.")

    def shift(pick: np.ndarray) -> float:
        a, d = observable[pick], difference[pick]
        return float(-np.mean((a - a.mean()) * (d - d.mean())) / kT)

    members = [np.flatnonzero(groups == label) for label in np.unique(groups)]
    if len(members) < 2:
        return shift(np.arange(len(observable))), float("nan")
    rng = np.random.default_rng(seed)
    boots = [shift(np.concatenate([members[i] for i in rng.integers(len(members), size=len(members))]))
             for _ in range(n_bootstrap)]
    return shift(np.arange(len(observable))), float(np.std(boots, ddof=1))


@dataclass
class EnsembleCheck:
    """What :func:`check_model` measured.

    Attributes
    ----------
    energy_error
        Standard deviation of ``W - V`` over the frames relative to V's (a constant offset is free).
    energy_shift, energy_shift_error
        First-order shift of V's average in W's ensemble, kJ/mol, and its standard error over segments.
    n_frames, n_segments
        Frames used, and the segments they came from.
    temperature
        K.
    """

    energy_error: float
    energy_shift: float
    energy_shift_error: float
    n_frames: int
    n_segments: int
    temperature: float

    def summary(self) -> str:
        return (f"{self.n_frames} frames of {self.n_segments} segments at {self.temperature:g} K\n"
                f"energy error (sd of W - V relative to sd of V, up to a constant): {self.energy_error:.2%}\n"
                f"first-order shift of V's mean in W's ensemble: {self.energy_shift:+.1f} ± "
                f"{self.energy_shift_error:.1f} kJ/mol")


def kick_weights(model: ActionMLModel) -> np.ndarray:
    """Each head's share of a step's kicks (its kick coefficients summed): W = sum_k w_k W_k."""
    if model.metadata.scheme != "A":
        raise InputError(f"model {model.path.name} is a scheme-B model; `actionml check` reads scheme-A kick "
                         f"potentials only.")
    splitting = model.metadata.get_splitting()
    weights = np.zeros(splitting.n_heads)
    for stage in splitting.stages:
        if stage.kind == "kick":
            weights[stage.head] += stage.coefficient
    return weights


def learned_energies(model: ActionMLModel, positions: np.ndarray, box: Optional[np.ndarray],
                     batch: int = 16) -> np.ndarray:
    """The network's head energies dW at ``positions [M, N, 3]``, ``[M, heads]``, kJ/mol."""
    network = model.network
    dtype = next(network.parameters()).dtype
    out = []
    with torch.no_grad():
        for start in range(0, len(positions), batch):
            q = torch.as_tensor(positions[start:start + batch], dtype=dtype)
            boxes = None if box is None else torch.as_tensor(box, dtype=dtype).expand(len(q), 3, 3).contiguous()
            out.append(network(q, boxes).double().numpy())
    return np.concatenate(out)


def check_model(model: ActionMLModel, dataset: ReferenceDataset, stride: int = 50,
                platform: Optional[str] = "CPU", system: Optional[mm.System] = None) -> EnsembleCheck:
    """Energy error and first-order ensemble shift of ``model``'s kick potential on ``dataset``'s frames.

    Parameters
    ----------
    model
        A scheme-A model.
    dataset
        Reference data of V with stored potential energies; only segments at the model's temperature are used.
    stride
        Use every ``stride``-th frame of each segment.
    platform
        OpenMM platform of the baseline force field (baseline models).
    system
        V's System (default: the dataset's own).

    Raises
    ------
    InputError
        If the dataset has no potential energies or no segment at the model's temperature.
    ModelMismatchError
        If the model does not match the data's system.
    """
    if dataset.potential_energies is None:
        raise InputError("the dataset stores no potential energies; generate it with `actionml generate`, which "
                         "records them.")
    meta = model.metadata
    system = dataset.system() if system is None else system
    kick_system = baseline_system(dataset, system, meta.baseline) if meta.baseline else system
    model.validate(kick_system)
    segments = np.flatnonzero(np.isclose(dataset.segment_temperatures, meta.temperature))
    if len(segments) == 0:
        raise InputError(f"no segment of the dataset is at the model's temperature ({meta.temperature:g} K); its "
                         f"segments are at {sorted(set(dataset.segment_temperatures))} K.")
    stride = int(stride)
    if stride < 1:
        raise InputError(f"stride must be a positive number of frames, got {stride}.")
    positions = dataset.positions[segments, ::stride]
    groups = np.repeat(segments, positions.shape[1])
    positions = positions.reshape(-1, dataset.n_atoms, 3)
    reference = dataset.potential_energies[segments, ::stride].reshape(-1)
    difference = learned_energies(model, positions, dataset.box) @ kick_weights(model)
    if meta.baseline:
        boxes = None if dataset.box is None else np.broadcast_to(dataset.box, (len(positions), 3, 3))
        difference = difference + OpenMMPotential(kick_system, platform=platform).energy(positions, boxes) - reference
    elif not meta.anchored:
        difference = difference - reference
    kT = BOLTZMANN * meta.temperature
    shift, error = boltzmann_shift(reference, difference, kT, groups)
    return EnsembleCheck(float(np.std(difference) / np.std(reference)), shift, error, len(positions), len(segments),
                         meta.temperature)
