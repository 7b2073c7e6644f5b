"""A learned model with its correction scaled, dW -> s dW, to see how a learned step's drift and fidelity depend on
the size of its correction (s = 0 is the classical splitting, s = 1 the model).

The network's energy is a linear readout of per-atom features summed over atoms, so scaling the readout's weights
and biases scales dW exactly (the biases add a constant). Judge the result like the model, e.g. with
``actionml evaluate`` from the same starts.

Usage::

    python benchmarks/scaled_correction.py MODEL --scale 0.5 --output MODEL-x0.5.pt
"""
from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import torch  # before openmm: openmmtorch's plugins need torch's libraries loaded

from openmm_actionml.errors import InputError
from openmm_actionml.modelfile import export_model, load_model
from openmm_actionml.pair_correction import energy_network


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="an anchored scheme-A model file")
    parser.add_argument("--scale", type=float, required=True, help="factor s on the learned correction dW")
    parser.add_argument("--output", required=True, help="model file to write")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args()
    model = load_model(args.model)
    if model.metadata.scheme != "A" or not model.metadata.anchored:
        raise InputError(f"{args.model} is not an anchored scheme-A model: only a correction added to the force field "
                         f"can be scaled towards the classical splitting.")
    network = energy_network(model)
    with torch.no_grad():
        network.readout.weight.mul_(args.scale)
        network.readout.bias.mul_(args.scale)
    recipe = dict(model.metadata.recipe, scaled_correction={"from": Path(args.model).name, "scale": args.scale})
    path = export_model(network, replace(model.metadata, recipe=recipe), args.output, overwrite=args.overwrite)
    print(f"wrote {path}: dW of {Path(args.model).name} times {args.scale:g}")


if __name__ == "__main__":
    main()
