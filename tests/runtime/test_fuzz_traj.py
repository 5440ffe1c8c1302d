"""Fuzzed trajectories through ``rollout`` and ``evaluate`` (family 5 of the fuzz test; the machinery is :mod:`_fuzz`).

``traj``: the trajectory given to ``rollout`` (INIT) and ``evaluate`` (``--data``): the zip and array mutations of
:mod:`_fuzz_npz`, NaN/Inf, wrong shapes, 0 or 1 frame, raw ``.npy`` headers, empty and foreign files.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
from _fuzz import BASES, DISK_NAMES, NONE, TRAJ_COMMANDS, TRAJ_OK, FuzzInputs, Mutation, run_family
from _fuzz_npz import NPZ_OPS, npy, npy_declaring, npy_raw, npz

# --------------------------------------------------------------------------------------------- family 5: traj


def _t_npz(rng, frames, bundle_base):
    label, data, verdict = rng.choice(NPZ_OPS)(rng, {"arr": frames})
    return label, "traj.npz", data, TRAJ_OK if verdict is True else NONE


def _t_frames(rng, frames, bundle_base):
    how = rng.choice(("one-frame", "two-frames", "extreme", "single-other-key", "two-keys-no-arr", "int"))
    if how == "one-frame":
        ok = frozenset({"rollout"}) if bundle_base == "sim-e3nn" else NONE
        return how, "traj.npz", npz({"arr": frames[:1]}), ok
    if how == "two-frames":
        return how, "traj.npz", npz({"arr": frames[:2]}), frozenset({"rollout"})
    if how == "extreme":
        value = rng.choice((1e30, 1e38, 1e200, -1e308))
        return f"extreme={value:g}", "traj.npz", npz({"arr": frames * 0 + value}), TRAJ_OK
    if how == "single-other-key":
        return how, "traj.npz", npz({"positions": frames}), TRAJ_OK
    if how == "two-keys-no-arr":
        return how, "traj.npz", npz({"a": frames, "b": frames}), NONE
    return how, "traj.npz", npz({"arr": (frames * 1000).astype(np.int64)}), TRAJ_OK


def _t_npy(rng, frames, bundle_base):
    how = rng.choice(("plain", "truncated", "huge-shape", "negative-shape", "object", "v3-header", "bad-header"))
    if how == "plain":
        return "npy:plain", "traj.npy", npy(frames), TRAJ_OK
    if how == "truncated":
        data = npy(frames)
        n = rng.randrange(len(data))
        return f"npy:truncate@{n}", "traj.npy", data[:n], NONE
    if how in ("huge-shape", "negative-shape"):
        lead = rng.choice((10**12, 2**62, (900 << 20) // 192)) if how == "huge-shape" else -5
        shape = (lead, 12, 2)
        return f"npy:shape={shape}", "traj.npy", npy_declaring(shape, "<f8", frames[:1].tobytes()), NONE
    if how == "object":
        obj = np.empty(3, dtype=object)
        return "npy:object-dtype", "traj.npy", npy(obj), NONE
    if how == "v3-header":
        raw = npy_raw(repr({"descr": "<f8", "fortran_order": False, "shape": frames.shape}), frames.tobytes(), 2)
        return "npy:v3-header", "traj.npy", raw[:6] + b"\x03" + raw[7:], TRAJ_OK
    return "npy:bad-header", "traj.npy", npy_raw("{'descr': 'f8', 'shape': (1,2,3) ,", b""), NONE


def _t_files(rng, frames, bundle_base):
    how = rng.choice(("empty", "text", "pk-only", "weird-name+nan"))
    if how == "empty":
        return "file:empty", "traj.npz", b"", NONE
    if how == "text":
        return "file:text", "traj.npz", b"hello, world\n", NONE
    if how == "pk-only":
        return "file:pk-magic", "traj.npz", b"PK\x03\x04" + rng.randbytes(64), NONE
    bad = frames.copy()
    bad[3, 4, 0] = np.nan
    name = rng.choice(DISK_NAMES) + ".npz"
    return f"file:name={name!r}+nan", name, npz({"arr": bad}), NONE


TRAJ_OPS = (_t_npz, _t_npz, _t_npz, _t_frames, _t_npy, _t_files)


def _mutate_traj(rng: random.Random, dest: Path, inputs: FuzzInputs) -> Mutation:
    base = rng.choice(BASES)
    with np.load(inputs.traj) as z:
        frames = z["arr"]
    label, name, data, ok = rng.choice(TRAJ_OPS)(rng, frames, base)
    dest.mkdir(parents=True)
    path = dest / name
    path.write_bytes(data)
    return Mutation(f"traj({base}):{label}", inputs.bundles[base], path, ok, TRAJ_COMMANDS)


# --------------------------------------------------------------------------------------------- test


def test_host_commands_survive_fuzzed_trajectories(fuzz_inputs, tmp_path):
    run_family("traj", _mutate_traj, fuzz_inputs, tmp_path)
