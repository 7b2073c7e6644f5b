#!/usr/bin/env bash
# Long steps that never call the expensive potential: a box of 64 rigid AMOEBA 2018 waters (mutual polarisation,
# PME with a 0.6 nm cutoff, 192 atoms). Reference data with AMOEBA's forces stored, nine T3 models at 12 fs whose
# kicks never call AMOEBA (the shipped amoeba64-pure-t3-12fs.pt, pure ML; amoeba64-tip3pfb-t3-12fs.pt, a learned
# correction on TIP3P-FB; amoeba64-tip3pfb-wide-/-mid-t3-12fs.pt, the same on wider networks;
# amoeba64-pure-mid-/-wide-t3-12fs.pt, pure ML on those wider networks; amoeba64-tip3pfb-mid-own-t3-12fs.pt, the
# mid model retrained with a second round of AMOEBA data drawn from its own ensemble; amoeba64-tip3pfb-mid-own-
# clusters-t3-12fs.pt, that model tuned on compressed water clusters; amoeba64-tip3pfb-mid-own-clusters-pairs-t3-12fs.pt,
# that model with pair terms fitted to AMOEBA's g(r) at 300 K), then the 8 x 5 ps
# ensembles with the O-O radial distribution (benchmarks/amoeba_water.py) and the speed side by side
# (benchmarks/speed_vs_verlet.py).
# Run it in an empty folder: bash examples/amoeba_water.sh [--train-only].
# About 30 min of data and six trainings of 17-25 min on one core, then 20 min of the mid model's thermalisation,
# 19 min of data from its states and a seventh training of 19 min, then 16 min of squeezes and tuning, 48 min of
# data and 5 min of thermalisation for the pair terms and their fit (20 min on two processes); the ensembles about
# 55 min, the speed 17 min.
set -euo pipefail
A="${ACTIONML:-actionml}"
here="$(cd "$(dirname "$0")" && pwd)"
export OMP_NUM_THREADS=1 OPENMM_CPU_THREADS=1

# 16 NVE segments of 2 ps from Verlet + SETTLE at 1 fs (frames every 2 fs), 300 K, with AMOEBA's forces.
$A generate water-box --waters 64 --rigid-water --forcefield amoeba2018.xml --cutoff 0.6 --delta 1 --record-every 2 --segments 16 --segment-length 2 --decorrelation 1 --equilibration 5 --seed 21 --store-forces --platform CPU --output amoeba64.npz --overwrite
$A train amoeba64.npz --pure-ml --step 12 --splitting T3 --pretrain-iterations 1000 --pretrain-batch-size 16 --force-matching 1 --curriculum 1 --iterations 100 --batch-size 8 --energy-penalty 0 --hidden 128,128 --learning-rate 3e-3 --eval-every 50 --patience 4 --gate-trajectories 8 --gate-duration 5 --force-field-platform CPU --seed 0 --name "water box (64 rigid AMOEBA 2018 waters, PME)" --output amoeba64-pure-t3-12fs.pt --checkpoint amoeba.chk --overwrite
# The same recipe with the kicks anchored on a cheap fixed-charge water (TIP3P-FB with PME, about 1 ms a call)
# instead of no force field: the network learns AMOEBA - TIP3P-FB, so long-range electrostatics stay exact.
$A train amoeba64.npz --baseline-forcefield amber14/tip3pfb.xml --step 12 --splitting T3 --pretrain-iterations 1000 --pretrain-batch-size 16 --force-matching 1 --curriculum 1 --iterations 100 --batch-size 8 --energy-penalty 0 --hidden 128,128 --learning-rate 3e-3 --eval-every 50 --patience 4 --gate-trajectories 8 --gate-duration 5 --force-field-platform CPU --seed 0 --name "water box (64 rigid AMOEBA 2018 waters, PME) on TIP3P-FB" --output amoeba64-tip3pfb-t3-12fs.pt --checkpoint amoeba-tip3pfb.chk --overwrite
# The same on a wider network (0.6 nm radial, 0.45 nm angular cutoffs): lower force error, a dearer call.
$A train amoeba64.npz --baseline-forcefield amber14/tip3pfb.xml --network-cutoff 0.6 --angular-cutoff 0.45 --step 12 --splitting T3 --pretrain-iterations 1000 --pretrain-batch-size 16 --force-matching 1 --curriculum 1 --iterations 100 --batch-size 8 --energy-penalty 0 --hidden 128,128 --learning-rate 3e-3 --eval-every 50 --patience 4 --gate-trajectories 8 --gate-duration 5 --force-field-platform CPU --seed 0 --name "water box (64 rigid AMOEBA 2018 waters, PME) on TIP3P-FB, wide network" --output amoeba64-tip3pfb-wide-t3-12fs.pt --checkpoint amoeba-tip3pfb-wide.chk --overwrite
# Between the two: 0.6 nm radial, 0.4 nm angular cutoffs.
$A train amoeba64.npz --baseline-forcefield amber14/tip3pfb.xml --network-cutoff 0.6 --angular-cutoff 0.4 --step 12 --splitting T3 --pretrain-iterations 1000 --pretrain-batch-size 16 --force-matching 1 --curriculum 1 --iterations 100 --batch-size 8 --energy-penalty 0 --hidden 128,128 --learning-rate 3e-3 --eval-every 50 --patience 4 --gate-trajectories 8 --gate-duration 5 --force-field-platform CPU --seed 0 --name "water box (64 rigid AMOEBA 2018 waters, PME) on TIP3P-FB, mid network" --output amoeba64-tip3pfb-mid-t3-12fs.pt --checkpoint amoeba-tip3pfb-mid.chk --overwrite
# Pure ML on the mid and wide networks' reach: is the TIP3P-FB baseline needed at those widths?
$A train amoeba64.npz --pure-ml --network-cutoff 0.6 --angular-cutoff 0.4 --step 12 --splitting T3 --pretrain-iterations 1000 --pretrain-batch-size 16 --force-matching 1 --curriculum 1 --iterations 100 --batch-size 8 --energy-penalty 0 --hidden 128,128 --learning-rate 3e-3 --eval-every 50 --patience 4 --gate-trajectories 8 --gate-duration 5 --force-field-platform CPU --seed 0 --name "water box (64 rigid AMOEBA 2018 waters, PME), mid network" --output amoeba64-pure-mid-t3-12fs.pt --checkpoint amoeba-pure-mid.chk --overwrite
$A train amoeba64.npz --pure-ml --network-cutoff 0.6 --angular-cutoff 0.45 --step 12 --splitting T3 --pretrain-iterations 1000 --pretrain-batch-size 16 --force-matching 1 --curriculum 1 --iterations 100 --batch-size 8 --energy-penalty 0 --hidden 128,128 --learning-rate 3e-3 --eval-every 50 --patience 4 --gate-trajectories 8 --gate-duration 5 --force-field-platform CPU --seed 0 --name "water box (64 rigid AMOEBA 2018 waters, PME), wide network" --output amoeba64-pure-wide-t3-12fs.pt --checkpoint amoeba-pure-wide.chk --overwrite
# A second round of data from the mid model's own ensemble: 16 starts thermalised by it (5 ps of Langevin dynamics
# at its 12 fs step from AMOEBA's starts, kept by amoeba_water.py in its cache), each the start of a 2 ps AMOEBA NVE
# segment; then the mid recipe on both datasets.
python "$here/../benchmarks/amoeba_water.py" --model amoeba64-tip3pfb-mid-t3-12fs.pt --trajectories 16 --time 5 --thermalise 5 --t3-steps 12 --only "+ learned" --cache-dir trajectories --output-dir results/amoeba-water
$A generate water-box --waters 64 --rigid-water --forcefield amoeba2018.xml --cutoff 0.6 --delta 1 --record-every 2 --segment-length 2 --seed 22 --store-forces --platform CPU --starts trajectories/starts-16-300K-own-amoeba64-tip3pfb-mid-t3-12fs-5ps.npz --output amoeba64-own-mid.npz --overwrite
$A train amoeba64.npz amoeba64-own-mid.npz --baseline-forcefield amber14/tip3pfb.xml --network-cutoff 0.6 --angular-cutoff 0.4 --step 12 --splitting T3 --pretrain-iterations 1000 --pretrain-batch-size 16 --force-matching 1 --curriculum 1 --iterations 100 --batch-size 8 --energy-penalty 0 --hidden 128,128 --learning-rate 3e-3 --eval-every 50 --patience 4 --gate-trajectories 8 --gate-duration 5 --force-field-platform CPU --seed 0 --name "water box (64 rigid AMOEBA 2018 waters, PME) on TIP3P-FB, mid network, with AMOEBA data from its own ensemble" --output amoeba64-tip3pfb-mid-own-t3-12fs.pt --checkpoint amoeba-tip3pfb-mid-own.chk --overwrite
# The own-data model tuned on compressed water clusters: 600 clusters in amoeba64.npz's frames squeezed by its own
# restrained dynamics and labelled by AMOEBA (12 min), then 400 iterations of force matching on them with the
# model's own forces held on the training frames (4 min): the learned correction's hole at compressed clusters, which
# started the surrogates' runaways, closed; its liquid over 50 ps +60 to +62 kJ/mol above AMOEBA's, where a tune on
# AMOEBA's forces read +88 (docs/benchmarks/amoeba-water-compressed-clusters-12fs).
CC="python $here/../benchmarks/compressed_clusters.py"
$CC press amoeba64.npz --frames 300 --seed 1 --model amoeba64-tip3pfb-mid-own-t3-12fs.pt --output train-squeeze-base-1.npz
$CC press amoeba64.npz --frames 300 --seed 2 --model amoeba64-tip3pfb-mid-own-t3-12fs.pt --output train-squeeze-base-2.npz
$CC tune amoeba64-tip3pfb-mid-own-t3-12fs.pt --data amoeba64.npz amoeba64-own-mid.npz --pressed train-squeeze-base-1.npz train-squeeze-base-2.npz --iterations 400 --learning-rate 3e-4 --pressed-weight 1 --keep-start-forces --output amoeba64-tip3pfb-mid-own-clusters-t3-12fs.pt
# Pair terms (O-O and O-H) on the hole-closed model, fitted by iterative Boltzmann inversion on its own Langevin
# ensemble against AMOEBA's g(r) read at 300 K: three more datasets (16 min each), the last two the target, and the
# 32 starts its judge uses (the first frames of amoeba64.npz's segments and frames of the first new dataset, so none
# from the target), thermalised by the hole-closed model (5 min); then four rounds of 16 x 10 ps on two processes
# (20 min; docs/benchmarks/amoeba-water-clusters-pair-correction-12fs).
for seed in 24 25 26; do
  $A generate water-box --waters 64 --rigid-water --forcefield amoeba2018.xml --cutoff 0.6 --delta 1 --record-every 2 --segments 8 --segment-length 2 --decorrelation 1 --equilibration 5 --seed $seed --store-forces --platform CPU --output heldout-$seed.npz --overwrite
done
mkdir -p trajectories pairs
python -c "
import numpy as np; from openmm_actionml.ensemble import Starts, resumable_starts, without_centre_of_mass_velocity
a, h = np.load('amoeba64.npz'), np.load('heldout-24.npz')
q = np.concatenate([a['positions'][:, 0], h['positions'][:, 0], h['positions'][:, 500]])
v = np.concatenate([a['velocities'][:, 0], h['velocities'][:, 0], h['velocities'][:, 500]])
m = a['masses']
resumable_starts('trajectories/starts-32-300K.npz', lambda: Starts(q, without_centre_of_mass_velocity(v, m), m))"
python "$here/../benchmarks/amoeba_water.py" --model amoeba64-tip3pfb-mid-own-clusters-t3-12fs.pt --trajectories 32 --time 1 --thermalise 5 --t3-steps 12 --only "clusters-t3-12fs), own" --cache-dir trajectories
python "$here/../benchmarks/structure_correction.py" amoeba64-tip3pfb-mid-own-clusters-t3-12fs.pt --target-data heldout-25.npz heldout-26.npz --starts trajectories/starts-32-300K-own-amoeba64-tip3pfb-mid-own-clusters-t3-12fs-5ps.npz --pairs O-O O-H --rounds 4 --trajectories 16 --time 10 --burn-in 2 --damping 0.3 --target-at-temperature --output pairs/clusters-pairs.pt
cp pairs/clusters-pairs-i4.pt amoeba64-tip3pfb-mid-own-clusters-pairs-t3-12fs.pt
[ "${1:-}" = "--train-only" ] && exit 0

python "$here/../benchmarks/amoeba_water.py" --model amoeba64-tip3pfb-t3-12fs.pt --model amoeba64-pure-t3-12fs.pt --model amoeba64-tip3pfb-wide-t3-12fs.pt --model amoeba64-tip3pfb-mid-t3-12fs.pt --model amoeba64-pure-mid-t3-12fs.pt --model amoeba64-pure-wide-t3-12fs.pt --model amoeba64-tip3pfb-mid-own-t3-12fs.pt --model amoeba64-tip3pfb-mid-own-clusters-t3-12fs.pt --model amoeba64-tip3pfb-mid-own-clusters-pairs-t3-12fs.pt --trajectories 8 --time 5 --cache-dir trajectories --output-dir results/amoeba-water
python "$here/../benchmarks/speed_vs_verlet.py" amoeba64-pure-t3-12fs.pt amoeba64-tip3pfb-t3-12fs.pt amoeba64-tip3pfb-wide-t3-12fs.pt amoeba64-tip3pfb-mid-t3-12fs.pt amoeba64-pure-mid-t3-12fs.pt amoeba64-pure-wide-t3-12fs.pt amoeba64-tip3pfb-mid-own-t3-12fs.pt amoeba64-tip3pfb-mid-own-clusters-t3-12fs.pt amoeba64-tip3pfb-mid-own-clusters-pairs-t3-12fs.pt --platform CPU --threads 1 --seconds 3 --rounds 5 --output results/amoeba-water/speed.md
