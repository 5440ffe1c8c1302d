#!/usr/bin/env bash
# `make artifacts`: rebuild the small reference bundles committed under artifacts/.
# sim-*: from the embedded simulator (2048 frames, seed 0); dmol-*: from the chapter's paths.npz where present.
# Epoch budgets (not time budgets) keep the rebuild reproducible on one machine.
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

build() {  # name data
  local name=$1 data=$2
  e3traj train --model baseline --data "$data" -o "$work/$name-baseline.pt" --epochs 60 --max-time 600 --quiet --threads 1
  e3traj train --model e3nn --data "$data" -o "$work/$name-e3nn.pt" --epochs 4 --max-time 600 --quiet --threads 1
  e3traj export "$work/$name-baseline.pt" -o "artifacts/$name-baseline" --force
  e3traj export "$work/$name-e3nn.pt" -o "artifacts/$name-e3nn" --force
}

e3traj simulate --frames 2048 --seed 0 -o "$work/sim.npz"
build sim "$work/sim.npz"
if e3traj_data=$(python -c "from e3traj.runtime._data import dmol_path; print(dmol_path(download=False))" 2>/dev/null); then
  build dmol dmol
else
  echo "the chapter's paths.npz is not available here: kept the committed dmol-* bundles as they are"
fi
ls -l artifacts/*/
