#!/usr/bin/env bash
# The PDB-driven protein run: the villin headpiece from OpenMM's bundled test.pdb, protein only (582 atoms), in
# OBC2 implicit solvent (amber99sb-ildn with OpenMM's native GBSAOBCForce), HBonds constraints. Reference data, the
# anchored T3 model at 8 fs and the learned force-constant T3 model (the shipped villin-t3-8fs.pt and
# villin-t3-8fs-factors.pt), a 50 ps run, and the benchmark against Verlet, HMR and classical T3. Run it in an empty
# folder: bash examples/villin_obc2.sh [--train-only].
# About 10 min of data and 47 min of training on one core; the 8 x 25 ps evaluation about 50 min on 2 cores.
set -euo pipefail
A="${ACTIONML:-actionml}"
export OMP_NUM_THREADS=1 OPENMM_CPU_THREADS=1

# 16 NVE segments of 2 ps from Verlet + RATTLE at 0.5 fs (frames every 2 fs) after 1 ps of Langevin each, 300 K.
$A generate villin-obc2 --delta 0.5 --record-every 4 --segments 16 --segment-length 2 --seed 3 --platform CPU --output villin-hb.npz --overwrite
# T3 at 8 fs, unrolled over 1 and 2 steps (about 1.7 s per iteration at k = 1 and 3.4 s at k = 2, one core).
$A train villin-hb.npz --step 8 --splitting T3 --curriculum 1,2 --iterations 150 --batch-size 8 --learning-rate 5e-3 --eval-every 25 --patience 3 --gate-trajectories 8 --gate-duration 5 --force-field-platform CPU --seed 0 --name "villin headpiece (OBC2, HBonds)" --output villin-t3-8fs.pt --checkpoint villin.chk --overwrite
# Learned force constants (alanine_hbonds.sh's recipe, shortened for villin's cost: the k = 32 stage alone, 100
# iterations of batch 2, a 4 x 2 ps gate; about 12 min on one core).
$A train villin-hb.npz --step 8 --splitting T3 --force-constants --tied-heads --energy-penalty 0 --curriculum 32 --iterations 100 --batch-size 2 --learning-rate 5e-3 --eval-every 25 --patience 4 --gate-trajectories 4 --gate-duration 2 --force-field-platform CPU --candidate k=32 --seed 0 --name "villin headpiece (OBC2, HBonds)" --output villin-t3-8fs-factors.pt --checkpoint villin-factors.chk --overwrite
[ "${1:-}" = "--train-only" ] && exit 0

$A run villin-t3-8fs.pt --time 50 --platform CPU --log villin-run.csv --dcd villin-run.dcd
$A evaluate villin-t3-8fs.pt --trajectories 8 --time 25 --platform CPU --jobs 2 --output-dir results/villin-t3-8fs
