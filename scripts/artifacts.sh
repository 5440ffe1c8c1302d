#!/usr/bin/env bash
# `make artifacts`: rebuild the small reference bundles committed under artifacts/.
# sim-*: from the embedded simulator (2048 frames, seed 0); dmol-*: from the chapter's paths.npz where present.
# Epoch budgets (not time budgets) keep the rebuild reproducible on one machine (README: what is reproducible where).
# SOURCES="sim" rebuilds only the simulator's bundles (the dmol-* bundles and the figures do not depend on it).
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

build() {  # name data
  local name=$1 data=$2
  e3traj train --model baseline --data "$data" -o "$work/$name-baseline.pt" --epochs 60 --max-time 600 --quiet --threads 1
  e3traj train --model e3nn --data "$data" -o "$work/$name-e3nn.pt" --epochs 4 --max-time 600 --quiet --threads 1
  e3traj train --model e3nn-velocity --data "$data" -o "$work/$name-e3nn-velocity.pt" --epochs 10 --max-time 600 \
    --quiet --threads 1
  # K: the AR order the suite picks on validation (5 on the chapter's data, 8 on the simulator's)
  e3traj train --model e3nn-history --data "$data" -o "$work/$name-e3nn-history.pt" --epochs 30 --max-time 600 \
    --quiet --threads 1
  # fitted in closed form (no epochs): the long-rollout model, sampled with its thermostat
  e3traj train --model langevin --data "$data" -o "$work/$name-langevin.pt" --quiet --threads 1
  for kind in baseline e3nn e3nn-velocity e3nn-history langevin; do
    e3traj export "$work/$name-$kind.pt" -o "artifacts/$name-$kind" --force
  done
}

sources=${SOURCES:-sim dmol}
if [[ " $sources " == *" sim "* ]]; then
  e3traj simulate --frames 2048 --seed 0 -o "$work/sim.npz"
  build sim "$work/sim.npz"
  mkdir -p docs  # the long-rollout figure: 10,000 sampled steps from 16 starts (about 2 minutes)
  e3traj plot fidelity artifacts/sim-langevin --data sim --steps 10000 --starts 16 -o docs/fidelity-langevin.png \
    --force
fi
if [[ " $sources " != *" dmol "* ]]; then
  echo "SOURCES=$sources: kept the committed dmol-* bundles and figures as they are"
elif paths=$(python -c "from e3traj.runtime import dmol_path; print(dmol_path(download=False))" 2>/dev/null); then
  build dmol dmol
  # the README's figures, from the chapter's data
  mkdir -p docs
  e3traj rollout artifacts/dmol-e3nn-history "$paths" --frames 1700 --steps 150 -o "$work/roll.npz" --threads 1
  e3traj plot trajectory dmol "$work/roll.npz" -o docs/trajectory.png --force
  e3traj plot equivariance artifacts/dmol-e3nn artifacts/dmol-e3nn-velocity artifacts/dmol-e3nn-history \
    artifacts/dmol-baseline -o docs/equivariance.png --force
  e3traj plot rmsd artifacts/dmol-e3nn-history --data dmol -o docs/rmsd-history.png --force
  e3traj plot parity artifacts/dmol-e3nn --data dmol -o docs/parity-e3nn.png --force
  e3traj plot fidelity artifacts/dmol-e3nn-history --data dmol --steps 1000 --starts 8 -o docs/fidelity.png --force
else
  echo "the chapter's paths.npz is not available here: kept the committed dmol-* bundles as they are"
fi
ls -l artifacts/*/
