#!/usr/bin/env bash
# A periodic water box: 64 rigid TIP3P waters (SETTLE), PME with a 0.6 nm cutoff, 192 atoms. Reference data, the
# anchored T3 model at 8 fs (the shipped water64-t3-8fs.pt), and the evaluation against Verlet, HMR and classical
# T3. Run it in an empty folder: bash examples/water_box.sh [--train-only].
# About 2 min of data and 25 min of training on one core; the 8 x 10 ps evaluation about 10 min.
set -euo pipefail
A="${ACTIONML:-actionml}"
export OMP_NUM_THREADS=1 OPENMM_CPU_THREADS=1

# 16 NVE segments of 2 ps from Verlet + SETTLE at 0.5 fs (frames every 2 fs), 300 K.
$A generate water-box --waters 64 --rigid-water --cutoff 0.6 --delta 0.5 --record-every 4 --segments 16 --segment-length 2 --seed 4 --platform CPU --output water64.npz --overwrite
$A train water64.npz --step 8 --splitting T3 --curriculum 1,2,4 --iterations 150 --batch-size 8 --learning-rate 5e-3 --eval-every 25 --patience 3 --gate-trajectories 8 --gate-duration 5 --force-field-platform CPU --seed 0 --name "water box (64 rigid TIP3P, PME)" --output water64-t3-8fs.pt --checkpoint water.chk --overwrite
[ "${1:-}" = "--train-only" ] && exit 0

$A evaluate water64-t3-8fs.pt --trajectories 8 --time 10 --platform CPU --output-dir results/water64-t3-8fs
