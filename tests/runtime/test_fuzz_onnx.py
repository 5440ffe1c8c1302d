"""Fuzzed ``model.onnx`` files through the host commands (family 2 of the fuzz test; the machinery is :mod:`_fuzz`).

``onnx``: flips, truncation, splices, garbage in ``model.onnx``, re-hashed in the manifest so the bytes reach the
ONNX scanner and onnxruntime (and one stale-hash variant that verification must catch).
"""

from __future__ import annotations

import random
from pathlib import Path

from _fuzz import ALL, BASES, BUNDLE_COMMANDS, NONE, FuzzInputs, Mutation, copy_bundle, flip, rehash, run_family


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


# --------------------------------------------------------------------------------------------- family 2: onnx


def _o_flip(rng, data):
    positions = sorted(rng.randrange(len(data)) for _ in range(rng.randint(1, 4)))
    for pos in positions:
        data = flip(data, pos, rng)
    return f"flip@{','.join(map(str, positions))}", ALL, data


def _o_truncate(rng, data):
    n = rng.randrange(len(data))
    return f"truncate@{n}", NONE, data[:n]


def _o_splice(rng, data):
    a, b, length = rng.randrange(len(data)), rng.randrange(len(data)), rng.randint(1, 4096)
    chunk = data[a : a + length]
    if rng.random() < 0.5:
        return f"splice-insert@{a}->{b}+{len(chunk)}", ALL, data[:b] + chunk + data[b:]
    return f"splice-over@{a}->{b}+{len(chunk)}", ALL, data[:b] + chunk + data[b + len(chunk) :]


def _o_garbage(rng, data):
    n = rng.choice((0, 1, 16, 4096))
    return f"garbage:{n}-bytes", NONE, rng.randbytes(n)


def _o_lie_length(rng, data):
    n = rng.choice((2**31, 2**40, 2**63 - 1, len(data) + 1))
    return f"graph-length-lie={n}", NONE, b"\x08\x08\x3a" + _varint(n) + data


def _o_append(rng, data):
    n = rng.randint(1, 64)
    return f"append-garbage:{n}", ALL, data + rng.randbytes(n)


ONNX_OPS = (_o_flip, _o_flip, _o_truncate, _o_splice, _o_garbage, _o_lie_length, _o_append)


def _mutate_onnx(rng: random.Random, dest: Path, inputs: FuzzInputs) -> Mutation:
    base = rng.choice(BASES)
    bundle = copy_bundle(inputs.bundles[base], dest / "bundle")
    label, ok, data = rng.choice(ONNX_OPS)(rng, (bundle / "model.onnx").read_bytes())
    (bundle / "model.onnx").write_bytes(data)
    if rng.random() < 0.15:
        label, ok = label + "+stale-hash", NONE
    else:
        rehash(bundle)
    return Mutation(f"onnx({base}):{label}", bundle, inputs.traj, ok, BUNDLE_COMMANDS)


# --------------------------------------------------------------------------------------------- test


def test_host_commands_survive_fuzzed_onnx_files(fuzz_inputs, tmp_path):
    run_family("onnx", _mutate_onnx, fuzz_inputs, tmp_path)
