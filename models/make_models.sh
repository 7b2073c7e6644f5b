#!/usr/bin/env bash
# The exact commands that made the shipped models (see models/README.md). About 80 min on 2 cores.
set -euo pipefail
A="${ACTIONML:-actionml}"  # the installed command; run from an empty working directory
export OMP_NUM_THREADS=1
$A generate alanine-dipeptide --delta 0.25 --record-every 4 --segments 12 --segment-length 2 --seed 1 --platform CPU --output ala-flex.npz --overwrite
$A generate alanine-dipeptide --constraints HBonds --delta 0.25 --record-every 4 --segments 16 --segment-length 2 --seed 2 --platform CPU --output ala-hbonds.npz --overwrite
$A train ala-flex.npz --step 4 --splitting S2 --curriculum 1,2,4,8 --iterations 400 --batch-size 16 --learning-rate 5e-3 --eval-every 50 --patience 4 --gate-trajectories 8 --gate-duration 10 --seed 0 --name alanine-dipeptide --output alanine-s2-4fs.pt --checkpoint s2.chk --overwrite > s2.log 2>&1 &
$A train ala-hbonds.npz --step 8 --splitting T3 --curriculum 1,2,4,8,16 --iterations 400 --batch-size 16 --learning-rate 5e-3 --eval-every 50 --patience 4 --gate-trajectories 8 --gate-duration 10 --seed 0 --name "alanine-dipeptide (HBonds)" --output alanine-t3-8fs.pt --checkpoint t3.chk --overwrite > t3.log 2>&1 &
wait
# Pure ML (no force field inside the step), T3 at 8 fs with HBonds: a force-matched surrogate on wider data (64
# segments of 0.5 ps at 300, 450 and 600 K), then one through-the-map stage; about 35 min.
for T in 300 450 600; do
  $A generate alanine-dipeptide --constraints HBonds --delta 0.25 --record-every 4 --segments 64 --segment-length 0.5 --decorrelation 2 --seed $((T + 7)) --temperature $T --platform CPU --output ala-hb-wide-$T.npz --overwrite
done
$A train ala-hb-wide-300.npz ala-hb-wide-450.npz ala-hb-wide-600.npz --pure-ml --step 8 --splitting T3 --pretrain-iterations 6000 --force-matching 1 --curriculum 1 --iterations 150 --batch-size 16 --hidden 128,128 --learning-rate 3e-3 --eval-every 100 --patience 8 --seed 0 --name "alanine-dipeptide (HBonds)" --output alanine-pure-t3-8fs.pt --checkpoint pure.chk --overwrite > pure.log 2>&1
# Scheme B (implicit midpoint generating function, three Gauss nodes) at 2 fs on the flexible data, about 3 min.
$A train ala-flex.npz --implicit gauss3 --step 2 --iterations 2500 --eval-every 25 --patience 6 --seed 0 --name alanine-dipeptide --output alanine-b-gauss3-2fs.pt --overwrite > b.log 2>&1
