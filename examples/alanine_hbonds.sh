#!/usr/bin/env bash
# Alanine dipeptide in vacuum with HBonds constraints, where the long steps are sought: the anchored T3 model at
# 8 fs, the pure-ML T3 model at 8 fs and the learned force-constant T3 model (the shipped alanine-t3-8fs.pt,
# alanine-pure-t3-8fs.pt and alanine-t3-8fs-factors.pt), then a run and an evaluation of each. Run it in an empty
# folder: bash examples/alanine_hbonds.sh [--train-only]. About 70 min on 2 cores.
set -euo pipefail
A="${ACTIONML:-actionml}"
export OMP_NUM_THREADS=1

# Anchored: the force field plus a learned correction in each kick. 16 segments of 2 ps (Verlet + RATTLE, 0.25 fs).
$A generate alanine-dipeptide --constraints HBonds --delta 0.25 --record-every 4 --segments 16 --segment-length 2 --seed 2 --platform CPU --output ala-hbonds.npz --overwrite
$A train ala-hbonds.npz --step 8 --splitting T3 --curriculum 1,2,4,8,16 --iterations 400 --batch-size 16 --learning-rate 5e-3 --eval-every 50 --patience 4 --gate-trajectories 8 --gate-duration 10 --seed 0 --name "alanine-dipeptide (HBonds)" --output alanine-t3-8fs.pt --checkpoint t3.chk --overwrite
# Learned force constants: one factor per class of harmonic term, every kick the same (a scaled force field),
# no energy penalty (the step conserves its own energy), and the k = 32 candidate, whose long unroll fits the fast
# modes' phase (the trainer would pick k = 4 by its one-step validation loss). About 8 min.
$A train ala-hbonds.npz --step 8 --splitting T3 --force-constants --tied-heads --energy-penalty 0 --curriculum 4,16,32 --iterations 400 --batch-size 16 --learning-rate 5e-3 --eval-every 50 --patience 4 --gate-trajectories 8 --gate-duration 10 --candidate k=32 --seed 0 --name "alanine-dipeptide (HBonds)" --output alanine-t3-8fs-factors.pt --checkpoint factors.chk --overwrite
# Pure ML: no force field inside the step. A force-matched surrogate on wider data (64 segments of 0.5 ps at each
# of 300, 450 and 600 K), then one through-the-map stage; the gate keeps the better candidate.
for T in 300 450 600; do
  $A generate alanine-dipeptide --constraints HBonds --delta 0.25 --record-every 4 --segments 64 --segment-length 0.5 --decorrelation 2 --seed $((T + 7)) --temperature $T --platform CPU --output ala-hb-wide-$T.npz --overwrite
done
$A train ala-hb-wide-300.npz ala-hb-wide-450.npz ala-hb-wide-600.npz --pure-ml --step 8 --splitting T3 --pretrain-iterations 6000 --force-matching 1 --curriculum 1 --iterations 150 --batch-size 16 --hidden 128,128 --learning-rate 3e-3 --eval-every 100 --patience 8 --seed 0 --name "alanine-dipeptide (HBonds)" --output alanine-pure-t3-8fs.pt --checkpoint pure.chk --overwrite
[ "${1:-}" = "--train-only" ] && exit 0

$A run alanine-t3-8fs.pt --time 50 --log t3-run.csv
for model in alanine-t3-8fs alanine-pure-t3-8fs alanine-t3-8fs-factors; do
  $A evaluate $model.pt --trajectories 8 --time 20 --platform Reference --jobs 2 --output-dir results/$model
done
