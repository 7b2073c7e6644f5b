#!/usr/bin/env bash
# Pure ML on the expensive potential: a box of 64 rigid AMOEBA 2018 waters (mutual polarisation, PME with a 0.6 nm
# cutoff, 192 atoms). Reference data with AMOEBA's forces stored, a pure-ML T3 model at 12 fs (the shipped
# amoeba64-pure-t3-12fs.pt; its kicks never call AMOEBA), then the 8 x 5 ps ensembles with the O-O radial
# distribution (benchmarks/amoeba_water.py) and the speed side by side (benchmarks/speed_vs_verlet.py).
# Run it in an empty folder: bash examples/amoeba_water.sh [--train-only].
# About 20 min of data and 20 min of training on one core; the ensembles about 45 min, the speed 8 min.
set -euo pipefail
A="${ACTIONML:-actionml}"
here="$(cd "$(dirname "$0")" && pwd)"
export OMP_NUM_THREADS=1 OPENMM_CPU_THREADS=1

# 16 NVE segments of 2 ps from Verlet + SETTLE at 1 fs (frames every 2 fs), 300 K, with AMOEBA's forces.
$A generate water-box --waters 64 --rigid-water --forcefield amoeba2018.xml --cutoff 0.6 --delta 1 --record-every 2 --segments 16 --segment-length 2 --decorrelation 1 --equilibration 5 --seed 21 --store-forces --platform CPU --output amoeba64.npz --overwrite
$A train amoeba64.npz --pure-ml --step 12 --splitting T3 --pretrain-iterations 1000 --pretrain-batch-size 16 --force-matching 1 --curriculum 1 --iterations 100 --batch-size 8 --energy-penalty 0 --hidden 128,128 --learning-rate 3e-3 --eval-every 50 --patience 4 --gate-trajectories 8 --gate-duration 5 --force-field-platform CPU --seed 0 --name "water box (64 rigid AMOEBA 2018 waters, PME)" --output amoeba64-pure-t3-12fs.pt --checkpoint amoeba.chk --overwrite
[ "${1:-}" = "--train-only" ] && exit 0

python "$here/../benchmarks/amoeba_water.py" --model amoeba64-pure-t3-12fs.pt --trajectories 8 --time 5 --cache-dir trajectories --output-dir results/amoeba-water
python "$here/../benchmarks/speed_vs_verlet.py" amoeba64-pure-t3-12fs.pt --platform CPU --threads 1 --seconds 3 --rounds 5 --output results/amoeba-water/speed.md
