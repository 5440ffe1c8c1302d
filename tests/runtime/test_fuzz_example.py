"""Fuzzed ``example.npz`` files through the host commands (family 3 of the fuzz test; the machinery is :mod:`_fuzz`).

``example``: the zip-level and array-level mutations of :mod:`_fuzz_npz` (header and central-directory flips, flag
bits such as encryption, compression methods, truncation, extra and duplicate members; 0 frames, huge or negative
shapes declared in the ``.npy`` header, object and other dtypes, NaN), re-hashed in the manifest.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
from _fuzz import ALL, BASES, BUNDLE_COMMANDS, NO_EXAMPLE, NONE, FuzzInputs, Mutation, copy_bundle, rehash, run_family
from _fuzz_npz import NPZ_OPS, REFERENCE_ONLY

# --------------------------------------------------------------------------------------------- family 3: example


def _mutate_example(rng: random.Random, dest: Path, inputs: FuzzInputs) -> Mutation:
    base = rng.choice(BASES)
    bundle = copy_bundle(inputs.bundles[base], dest / "bundle")
    with np.load(bundle / "example.npz") as z:
        arrays = {k: z[k] for k in z.files}
    label, data, verdict = rng.choice(NPZ_OPS)(rng, arrays)
    (bundle / "example.npz").write_bytes(data)
    ok = NO_EXAMPLE | {"bench"} if verdict == REFERENCE_ONLY else ALL if verdict else NO_EXAMPLE
    if rng.random() < 0.15:
        label, ok = label + "+stale-hash", NONE
    else:
        rehash(bundle)
    return Mutation(f"example({base}):{label}", bundle, inputs.traj, ok, BUNDLE_COMMANDS)


# --------------------------------------------------------------------------------------------- test


def test_host_commands_survive_fuzzed_examples(fuzz_inputs, tmp_path):
    run_family("example", _mutate_example, fuzz_inputs, tmp_path)
