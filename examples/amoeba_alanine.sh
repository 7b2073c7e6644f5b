#!/usr/bin/env bash
# The expensive-potential case: alanine dipeptide with the AMOEBA 2018 polarisable force field (bundled with
# OpenMM) in vacuum, HBonds constraints. Pure ML: the T3 step at 8 fs kicks with a learned surrogate of AMOEBA
# alone (the shipped alanine-amoeba-pure-t3-8fs.pt), so AMOEBA is evaluated only by reporters. Reference data at
# 300, 450 and 600 K, the surrogate, and the benchmark against Verlet on AMOEBA itself.
# Run it in an empty folder: bash examples/amoeba_alanine.sh [--train-only]. About 40 min on one core.
set -euo pipefail
A="${ACTIONML:-actionml}"
export OMP_NUM_THREADS=1 OPENMM_CPU_THREADS=1

for T in 300 450 600; do
  $A generate alanine-dipeptide --forcefield amoeba2018.xml --constraints HBonds --delta 0.25 --record-every 4 --segments 64 --segment-length 0.5 --decorrelation 2 --seed $((T + 11)) --temperature $T --platform Reference --output ala-amoeba-$T.npz --overwrite
done
$A train ala-amoeba-300.npz ala-amoeba-450.npz ala-amoeba-600.npz --pure-ml --step 8 --splitting T3 --pretrain-iterations 6000 --force-matching 1 --curriculum 1 --iterations 150 --batch-size 16 --hidden 128,128 --learning-rate 3e-3 --eval-every 100 --patience 8 --seed 0 --name "alanine-dipeptide (AMOEBA, HBonds)" --output alanine-amoeba-pure-t3-8fs.pt --checkpoint pure.chk --overwrite
[ "${1:-}" = "--train-only" ] && exit 0

$A evaluate alanine-amoeba-pure-t3-8fs.pt --trajectories 8 --time 50 --platform Reference --jobs 2 --output-dir results/alanine-amoeba-pure-t3-8fs
