#!/usr/bin/env bash
# `make demo`: the whole story on the embedded simulator data, with the real CLI commands:
# simulate -> train the five kinds (baseline, e3nn, e3nn-velocity, e3nn-history, langevin) -> evaluate against the
# predictor suite (the strongest: the fitted AR(k)) -> export -> pack -> rollout -> check -> long sampled rollouts
# (fidelity) -> figures.
# Budgets can be shortened for tests: E3TRAJ_DEMO_E3NN_TIME, E3TRAJ_DEMO_VELOCITY_TIME, E3TRAJ_DEMO_HISTORY_TIME,
# E3TRAJ_DEMO_BASELINE_TIME, E3TRAJ_DEMO_STEPS, E3TRAJ_DEMO_FIDELITY_STEPS.
# DATA=dmol uses the chapter's paths.npz instead of the simulator.
set -euo pipefail

OUT=${1:-demo-out}
DATA=${DATA:-sim}
E3NN_TIME=${E3TRAJ_DEMO_E3NN_TIME:-90}
VELOCITY_TIME=${E3TRAJ_DEMO_VELOCITY_TIME:-60}
HISTORY_TIME=${E3TRAJ_DEMO_HISTORY_TIME:-60}
BASELINE_TIME=${E3TRAJ_DEMO_BASELINE_TIME:-15}
STEPS=${E3TRAJ_DEMO_STEPS:-200}
FIDELITY_STEPS=${E3TRAJ_DEMO_FIDELITY_STEPS:-2000}
mkdir -p "$OUT"
start=$(date +%s)

step() { printf '\n==> %s\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }

if [ "$DATA" = "sim" ]; then
  step "1. simulate a 12-bead bead-spring polymer (the embedded default data)"
  run e3traj simulate --frames 2048 --seed 0 -o "$OUT/traj.npz" --force
  TRAJ="$OUT/traj.npz"
else
  step "1. use the chapter's data ($DATA)"
  if [ "$DATA" = "dmol" ]; then
    TRAJ=$(python -c "from e3traj.runtime import dmol_path; print(dmol_path())")
  else
    TRAJ="$DATA"
  fi
  echo "trajectory: $TRAJ"
fi
DATA_ARG="$TRAJ"
[ "$DATA" = "dmol" ] && DATA_ARG=dmol

step "2. train the linear baseline (pos @ W + b, not equivariant)"
run e3traj train --model baseline --data "$DATA_ARG" -o "$OUT/baseline.pt" --max-time "$BASELINE_TIME" --force --quiet

step "3. train the e3nn gate network (displacement to the next frame)"
run e3traj train --model e3nn --data "$DATA_ARG" -o "$OUT/e3nn.pt" --max-time "$E3NN_TIME" --force --quiet

step "4. beyond the chapter: the same network given the previous displacement (sees the velocity)"
run e3traj train --model e3nn-velocity --data "$DATA_ARG" -o "$OUT/e3nn-velocity.pt" --max-time "$VELOCITY_TIME" \
  --force --quiet

step "5. the history model: AR(K) fitted on the last K frames, a linear head on the bonds, the gate network on top"
run e3traj train --model e3nn-history --data "$DATA_ARG" -o "$OUT/e3nn-history.pt" --max-time "$HISTORY_TIME" \
  --force --quiet

step "5b. the langevin model for long rollouts: damping, pair and angle forces, walls (closed form, no epochs)"
run e3traj train --model langevin --data "$DATA_ARG" -o "$OUT/langevin.pt" --force --quiet

step "6. evaluate against the predictor suite (persistence, constant velocity and acceleration, fitted AR(k))"
run e3traj evaluate "$OUT/e3nn.pt" --data "$DATA_ARG" | tee "$OUT/evaluate-e3nn.txt"
run e3traj evaluate "$OUT/e3nn-velocity.pt" --data "$DATA_ARG" | tee "$OUT/evaluate-e3nn-velocity.txt"
run e3traj evaluate "$OUT/e3nn-history.pt" --data "$DATA_ARG" | tee "$OUT/evaluate-e3nn-history.txt"

step "7. export the models to verified ONNX bundles"
run e3traj export "$OUT/e3nn.pt" -o "$OUT/e3nn-bundle" --force
run e3traj export "$OUT/e3nn-velocity.pt" -o "$OUT/e3nn-velocity-bundle" --force
run e3traj export "$OUT/e3nn-history.pt" -o "$OUT/e3nn-history-bundle" --force
run e3traj export "$OUT/baseline.pt" -o "$OUT/baseline-bundle" --force
run e3traj export "$OUT/langevin.pt" -o "$OUT/langevin-bundle" --force
run e3traj pack "$OUT/e3nn-bundle" -o "$OUT/e3nn-bundle.tar.gz" --force

step "8. on the host side (onnxruntime + numpy): inspect, roll out, check"
run e3traj inspect "$OUT/e3nn-bundle.tar.gz"
run e3traj rollout "$OUT/e3nn-bundle.tar.gz" "$TRAJ" --frames 1637,1700,1800 --steps "$STEPS" \
  -o "$OUT/rollout.npz" --xyz "$OUT/rollout.xyz" --force
run e3traj check "$OUT/e3nn-bundle"
run e3traj check "$OUT/e3nn-velocity-bundle"
run e3traj rollout "$OUT/e3nn-history-bundle" "$TRAJ" --frames 1637,1700,1800 --steps "$STEPS" \
  -o "$OUT/rollout-history.npz" --force
run e3traj check "$OUT/e3nn-history-bundle"
run e3traj evaluate "$OUT/e3nn-history-bundle" --data "$DATA_ARG"
set +e
run e3traj check "$OUT/baseline-bundle"
rc=$?
set -e
if [ "$rc" -eq 4 ]; then
  echo "(the baseline FAILS rotation and translation, as expected: it is not equivariant)"
elif [ "$rc" -eq 0 ]; then
  echo "the baseline unexpectedly PASSED the equivariance check: the checker is broken" >&2; exit 1
else
  exit "$rc"
fi

step "8b. long rollouts judged as physics: the langevin bundle sampled with its thermostat, beside the suite"
FID_DATA="$DATA_ARG"
[ "$DATA" = "sim" ] && FID_DATA=sim  # the same frames (2048, seed 0), judged against an independent simulation
run e3traj fidelity "$OUT/langevin-bundle" --data "$FID_DATA" --steps "$FIDELITY_STEPS" --starts 4 \
  | tee "$OUT/fidelity-langevin.txt"

if python -c "import matplotlib" 2>/dev/null && e3traj --help | grep -q ' plot '; then
  step "9. figures"
  run e3traj plot all --data "$DATA_ARG" --bundle "$OUT/e3nn-history-bundle" --bundle "$OUT/e3nn-bundle" \
    --bundle "$OUT/e3nn-velocity-bundle" --bundle "$OUT/baseline-bundle" --rollout "$OUT/rollout-history.npz" \
    -o "$OUT/figures" --force
fi

step "done in $(( $(date +%s) - start )) s; everything is in $OUT/"
ls -1 "$OUT"
