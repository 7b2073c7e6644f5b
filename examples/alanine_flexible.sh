#!/usr/bin/env bash
# Alanine dipeptide in vacuum, flexible bonds: reference data, the S2 model at 4 fs and the scheme-B model at 2 fs
# (the shipped alanine-s2-4fs.pt and alanine-b-gauss3-2fs.pt), then a run and an evaluation of the S2 model.
# Run it in an empty folder: bash examples/alanine_flexible.sh [--train-only]. About 25 min on 2 cores.
set -euo pipefail
A="${ACTIONML:-actionml}"
export OMP_NUM_THREADS=1

# 12 NVE segments of 2 ps from velocity Verlet at 0.25 fs, frames every 1 fs, 300 K.
$A generate alanine-dipeptide --delta 0.25 --record-every 4 --segments 12 --segment-length 2 --seed 1 --platform CPU --output ala-flex.npz --overwrite
# S2 at 4 fs, unrolled over 1, 2, 4 and 8 steps; each stage judged by the NVE gate.
$A train ala-flex.npz --step 4 --splitting S2 --curriculum 1,2,4,8 --iterations 400 --batch-size 16 --learning-rate 5e-3 --eval-every 50 --patience 4 --gate-trajectories 8 --gate-duration 10 --seed 0 --name alanine-dipeptide --output alanine-s2-4fs.pt --checkpoint s2.chk --overwrite
# Scheme B: the implicit midpoint generating function with three Gauss nodes, at 2 fs.
$A train ala-flex.npz --implicit gauss3 --step 2 --iterations 2500 --eval-every 25 --patience 6 --seed 0 --name alanine-dipeptide --output alanine-b-gauss3-2fs.pt --overwrite
[ "${1:-}" = "--train-only" ] && exit 0

$A run alanine-s2-4fs.pt --time 20 --log s2-run.csv
$A evaluate alanine-s2-4fs.pt --trajectories 8 --time 20 --platform Reference --jobs 2 --output-dir results/alanine-s2-4fs
