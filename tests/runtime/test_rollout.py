"""Batched rollouts: shapes, float64 accumulation, thousands of starts, divergence, output files."""

from __future__ import annotations

import os
import re

import numpy as np
import pytest

from e3traj.runtime import Bundle, RolloutResult, rollout, save_rollout, write_xyz
from e3traj.runtime._errors import InputError, UsageError


def _starts(batch: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = np.stack([np.arange(12) * 0.9, 0.4 * (np.arange(12) % 2), np.zeros(12)], axis=-1)
    return base + rng.normal(scale=0.1, size=(batch, 12, 3)) + rng.normal(size=(batch, 1, 3))


def test_rollout_shape_and_the_toy_dynamics(toy_bundle, toys):
    init = _starts(4)
    with Bundle.open(toy_bundle) as b:
        res = rollout(b, init, 6)
    assert isinstance(res, RolloutResult)
    assert res.traj.shape == (7, 4, 12, 3) and res.traj.dtype == np.float64
    assert res.complete and res.steps_done == res.steps_requested == 6 and res.failed_step is None
    assert res.failed_starts.size == 0
    np.testing.assert_array_equal(res.traj[0], init)
    x = init.copy()
    for k in range(1, 7):
        x = x + toys.reference("toy", x)  # float32 model output, float64 accumulation
        np.testing.assert_allclose(res.traj[k], x, atol=1e-7)  # float32 summation order differs slightly


def test_positions_accumulate_in_float64(toy_bundle, toys):
    # beads within ~2e-3 of their centroid near x = 1000: each step's displacement (~1e-5) is below half of
    # float32's spacing there (6e-5), so a float32 accumulator never moves; the float64 one must.
    init = 1000.0 + (_starts(2) - _starts(2).mean(axis=1, keepdims=True)) * 2e-4
    x32 = init.astype(np.float32)
    for _ in range(10):
        x32 = x32 + toys.reference("toy", x32).astype(np.float32)
    assert np.array_equal(x32, init.astype(np.float32))  # the premise: float32 accumulation is stuck
    with Bundle.open(toy_bundle) as b:
        res = rollout(b, init, 10)
    moved = np.abs(res.traj[-1] - res.traj[0]).max()
    assert 5e-5 < moved < 1e-3, moved


def test_thousands_of_starts_in_one_call(toy_bundle, toys):
    init = _starts(5000, seed=1)
    with Bundle.open(toy_bundle) as b:
        res = rollout(b, init, 5)
    assert res.traj.shape == (6, 5000, 12, 3) and res.complete
    x = init.copy()
    for _ in range(5):
        x = x + toys.reference("toy", x)
    np.testing.assert_allclose(res.traj[-1], x, atol=2e-7)  # speed is measured in benchmarks/, not here


def test_velocity_rollout_uses_the_previous_frame(velocity_bundle, toys):
    init, prev = _starts(3, 2), _starts(3, 3)
    with Bundle.open(velocity_bundle) as b:
        res = rollout(b, init, 4, previous=prev)
        with pytest.raises(UsageError, match="previous"):
            rollout(b, init, 4)
        with pytest.raises(UsageError, match="shape"):
            rollout(b, init, 4, previous=prev[:2])
    x_prev, x = prev.copy(), init.copy()
    for k in range(1, 5):
        v = x - x_prev
        x_prev, x = x, x + v + toys.reference("velocity", x, v)
        np.testing.assert_allclose(res.traj[k], x, atol=1e-8)


def test_divergence_keeps_the_frames_before_the_first_non_finite_step(blowup_bundle):
    init = _starts(5)
    init[[1, 3]] = 0.0  # 0 * 1e30 stays 0: these rows never diverge
    progress = []
    with Bundle.open(blowup_bundle) as b:
        res = rollout(b, init, 10, progress=progress.append)
    assert not res.complete and res.failed_step == 2 and res.steps_done == 1
    assert res.traj.shape == (2, 5, 12, 3)
    assert np.all(np.isfinite(res.traj))
    np.testing.assert_array_equal(res.failed_starts, [0, 2, 4])
    assert "non-finite" in res.reason
    assert progress == [1]  # one completed step


def test_max_distance_stops_a_rollout(baseline_bundle, toy_bundle):
    init = _starts(3)
    with Bundle.open(toy_bundle) as b:
        spread = np.linalg.norm(init - init.mean(axis=1, keepdims=True), axis=-1).max()
        assert rollout(b, init, 5, max_distance=spread + 1.0).complete
        res = rollout(b, init, 5, max_distance=spread * 0.5)
    assert not res.complete and res.failed_step == 1 and res.traj.shape == (1, 3, 12, 3)
    assert "farther than" in res.reason
    with Bundle.open(baseline_bundle) as b:  # x @ W + b drifts; a tight bound catches it later
        res = rollout(b, init, 50, max_distance=spread * 1.05)
    assert not res.complete and res.failed_step >= 1


@pytest.mark.parametrize("steps", [0, -3, 2.5, True])
def test_bad_steps_are_usage_errors(toy_bundle, steps, one_line):
    with Bundle.open(toy_bundle) as b, pytest.raises(UsageError) as e:
        rollout(b, _starts(1), steps)
    one_line(e, "steps: got")


def test_bad_init_and_memory_cap(toy_bundle, one_line):
    with Bundle.open(toy_bundle) as b:
        bad = _starts(2)
        bad[1, 4, 0] = np.inf
        with pytest.raises(InputError) as e:
            rollout(b, bad, 2)
        one_line(e, "row 1")
        with pytest.raises(UsageError):
            rollout(b, np.zeros((2, 11, 3)), 2)
        with pytest.raises(UsageError) as e:
            rollout(b, _starts(10), 1000, max_bytes=1 << 20)
        one_line(e, "GiB")
        with pytest.raises(UsageError):
            rollout(b, _starts(1), 2, max_distance=-1.0)


def test_save_rollout_writes_every_field_loadable_without_pickle(blowup_bundle, tmp_path):
    init = _starts(3)
    with Bundle.open(blowup_bundle) as b:
        res = rollout(b, init, 4)
        sha = b.sha256
    tmp_path = tmp_path / "out"
    tmp_path.mkdir()
    out = save_rollout(tmp_path / "run.npz", res, starts=[7, 8, 9], bundle_sha256=sha, source="init.npz")
    assert sorted(os.listdir(tmp_path)) == ["run.npz"]
    with np.load(out, allow_pickle=False) as z:
        assert set(z.files) >= {
            "traj",
            "starts",
            "steps_done",
            "steps_requested",
            "complete",
            "bundle_sha256",
            "failed_step",
        }
        assert z["traj"].shape == (2, 3, 12, 3) and z["traj"].dtype == np.float64
        assert z["starts"].tolist() == [7, 8, 9]
        assert int(z["steps_done"]) == 1 and int(z["steps_requested"]) == 4
        assert bool(z["complete"]) is False and z["complete"].dtype == np.bool_
        assert int(z["failed_step"]) == 2 and str(z["bundle_sha256"]) == sha
        assert z["failed_starts"].tolist() == [0, 1, 2] and str(z["source"]) == "init.npz"
    done = RolloutResult(traj=np.zeros((3, 1, 12, 3)), steps_requested=2, steps_done=2, complete=True)
    out2 = save_rollout(tmp_path / "weird.name", done, starts=[0], bundle_sha256="x", source="s")
    with np.load(out2, allow_pickle=False) as z:  # no ".npz" appended, still an npz
        assert int(z["failed_step"]) == -1 and bool(z["complete"]) is True
    with pytest.raises(UsageError):
        save_rollout(tmp_path / "bad.npz", done, starts=[0, 1], bundle_sha256="x", source="s")
    assert not (tmp_path / "bad.npz").exists()


def _read_extxyz(path):
    """A minimal extended-XYZ reader (ASE's format): list of (info dict, species list, positions (n, 3))."""
    lines = path.read_text().splitlines()
    blocks, i = [], 0
    while i < len(lines):
        n = int(lines[i])
        header = lines[i + 1]
        info = dict(re.findall(r'(\w+)=("[^"]*"|\S+)', header))
        rows = [ln.split() for ln in lines[i + 2 : i + 2 + n]]
        blocks.append((info, [r[0] for r in rows], np.array([[float(v) for v in r[1:]] for r in rows])))
        i += 2 + n
    return blocks


def test_write_xyz_round_trips(tmp_path):
    traj = np.random.default_rng(0).normal(size=(3, 2, 12, 3))
    out = write_xyz(tmp_path / "t.xyz", traj, starts=[5, 9])
    blocks = _read_extxyz(out)
    assert len(blocks) == 6
    for j, (info, species, pos) in enumerate(blocks):
        b, t = divmod(j, 3)
        assert info["Properties"] == "species:S:1:pos:R:3" and "Lattice" not in info
        assert int(info["frame"]) == t and int(info["start"]) == [5, 9][b]
        assert species == ["C"] * 12
        np.testing.assert_allclose(pos, traj[t, b], atol=1e-9)
    assert sorted(os.listdir(tmp_path)) == ["t.xyz"]
    with pytest.raises(UsageError):
        write_xyz(tmp_path / "u.xyz", traj, starts=[1])
    assert not (tmp_path / "u.xyz").exists()


def test_history_rollout_carries_the_window_and_applies_the_ar_rule(history_bundle, toys):
    """x_{t+1} = x_t + sum_j b_j d_j + y: the past frames shift along with every step."""
    h = len(toys.AR)
    rng = np.random.default_rng(8)
    frames = _starts(2, 4)[None] + np.cumsum(rng.normal(scale=0.02, size=(h + 1, 2, 12, 3)), axis=0)
    init, previous = frames[-1], np.swapaxes(frames[:-1], 0, 1)  # (B, h, 12, 3), oldest first
    with Bundle.open(history_bundle) as b:
        assert b.history == h and b.ar_coefficients == toys.AR
        res = rollout(b, init, 5, previous=previous)
        with pytest.raises(UsageError, match=r"\(2, 3, 12, 3\)"):
            rollout(b, init, 5, previous=previous[:, 1:])
        with pytest.raises(UsageError, match="needs the 3 frame"):
            rollout(b, init, 5)
    window = list(frames)  # x_{t-3} .. x_t
    for k in range(1, 6):
        x = window[-1]
        d = [window[-j] - window[-j - 1] for j in range(1, h + 1)]
        nxt = x + sum(c * dj for c, dj in zip(toys.AR, d)) + toys.reference("history", x, np.stack(d, axis=1))
        np.testing.assert_allclose(res.traj[k], nxt, atol=1e-7)
        window = window[1:] + [nxt]  # follow the truth-free recursion as the rollout does
        window[-1] = res.traj[k]


def test_a_rollout_of_the_suite_needs_no_bundle():
    """Any predictor (``history`` + ``step``) rolls out through the same loop: here AR(3) with fixed b."""
    from e3traj.runtime import LinearExtrapolation

    p = LinearExtrapolation("ar3", "AR(3)", (1.5, -0.5))
    rng = np.random.default_rng(9)
    frames = np.cumsum(rng.normal(scale=0.02, size=(3, 4, 12, 3)), axis=0)
    res = rollout(p, frames[-1], 3, previous=np.swapaxes(frames[:-1], 0, 1))
    a, b_, c = frames
    want = c + 1.5 * (c - b_) - 0.5 * (b_ - a)
    np.testing.assert_allclose(res.traj[1], want, atol=1e-14)


def test_a_stop_predicate_ends_the_rollout_and_names_its_reason(toy_bundle):
    init = _starts(3, 5)
    calls = []

    def stop(frames):
        calls.append(len(calls) + 1)
        return np.array([False, len(calls) >= 2, False])  # row 1 "breaks" at step 2

    with Bundle.open(toy_bundle) as b:
        res = rollout(b, init, 6, stop=stop, stop_reason="left the band")
    assert not res.complete and res.failed_step == 2 and res.steps_done == 1
    assert res.failed_starts.tolist() == [1] and res.reason == "left the band" and res.traj.shape[0] == 2


def test_every_keeps_every_nth_frame_of_the_full_rollout_bit_for_bit(history_bundle):
    from e3traj.runtime import Bundle, RolloutNoise, rollout
    from e3traj.runtime._simulate import simulate

    xy = simulate(frames=60, seed=1)
    f = np.concatenate([xy, np.zeros(xy.shape[:2] + (1,))], axis=-1)
    starts = np.array([20, 30, 40])
    with Bundle.open(history_bundle, threads=1) as b:
        prev = np.stack([f[starts - b.history + i] for i in range(b.history)], axis=1)
        for steps, every in ((40, 5), (23, 4), (7, 10)):
            full = rollout(b, f[starts], steps, previous=prev, noise=RolloutNoise(1e-3, 1, starts))
            some = rollout(b, f[starts], steps, previous=prev, noise=RolloutNoise(1e-3, 1, starts), every=every)
            assert some.every == every and some.complete and some.steps_done == steps
            np.testing.assert_array_equal(some.traj, full.traj[::every])
        # a failure keeps the kept frames before it, with the step and the rows of the full rollout's
        far_full = rollout(b, f[starts], 40, previous=prev, max_distance=0.05)
        far_some = rollout(b, f[starts], 40, previous=prev, max_distance=0.05, every=3)
        assert not far_full.complete and (far_some.failed_step, far_some.steps_done) == (
            far_full.failed_step,
            far_full.steps_done,
        )
        np.testing.assert_array_equal(far_some.failed_starts, far_full.failed_starts)
        np.testing.assert_array_equal(far_some.traj, far_full.traj[::3])
        assert "starting centroid" in far_some.reason
        with pytest.raises(UsageError, match="every"):
            rollout(b, f[starts], 5, previous=prev, every=0)
