"""Several trajectories as one data source (runtime/_sources.resolve_many, runtime/_data.Split): pairs and history
windows never cross a file, each file splits 80:20 or is held out whole, and every file's provenance is kept."""

from __future__ import annotations

import numpy as np
import pytest

from e3traj.runtime import (
    InputError,
    UsageError,
    choose_ar,
    one_step_metrics,
    predictor_suite,
    resolve_data,
    resolve_many,
    save_trajectory,
    simulate,
    split_pairs,
)
from e3traj.runtime._metrics import rollout_starts


@pytest.fixture
def files(tmp_path):
    out = []
    for seed, frames in ((1, 120), (2, 80)):
        f = tmp_path / f"t{seed}.npz"
        save_trajectory(f, simulate(frames=frames, seed=seed))
        out.append(str(f))
    return out


def test_one_spec_is_resolve_data_itself(files):
    one, ref = resolve_many(files[:1]), resolve_data(files[0])
    assert one.source == ref.source and one.sha256 == ref.sha256 and one.segments is None
    np.testing.assert_array_equal(one.split().val_x, split_pairs(ref.frames).val_x)


def test_pairs_and_windows_never_cross_a_file(files):
    data = resolve_many(files)
    assert data.segments == ((0, 120), (120, 200)) and [p["frames"] for p in data.parts] == [120, 80]
    assert data.source == "+".join(files) and len({p["file_sha256"] for p in data.parts}) == 2
    split = data.split()
    assert split.parts == ((0, 95, 120), (120, 183, 200))  # int(0.8 * pairs) of each
    for h in (0, 1, 4):
        for ts in (split.train_index(h), split.val_index(h)):
            seg = np.searchsorted([120], ts, side="right")  # which file each pair t -> t + 1 is in
            lo = np.array([0, 120])[seg]
            hi = np.array([120, 200])[seg]
            assert np.all(ts - h >= lo) and np.all(ts + 1 < hi)  # its window and its label stay inside
    assert 119 not in split.train_index() and 119 not in split.val_index()  # the jump between the files
    assert split.n_train == 95 + 63 and len(split.val_x) == 24 + 16
    starts = rollout_starts(split, horizon=10, n_starts=8, history=3)
    assert all(95 <= s <= 109 or 183 <= s <= 189 for s in starts)
    # the suite fits and scores on both files, the windows inside each
    suite = predictor_suite(split)
    assert suite["ar"].order == choose_ar(split)[0].order
    m = one_step_metrics(suite["ar"], split, suite)
    h = max(p.history for p in suite.values())
    assert m["n_val_pairs"] == len(split.val_index(h)) and m["val_mse"] == m["ar_mse"]


def test_held_out_files_validate_whole_and_the_others_train_whole(files):
    data = resolve_many(files[:1], val_specs=files[1:])
    assert data.held_out == (1,) and "validation: " in data.source
    split = data.split()
    assert split.parts == ((0, 119, 120), (120, 120, 200))
    assert len(split.val_index(0)) == 79 and len(split.val_index(3)) == 76  # a held-out file loses h pairs
    assert split.history_room == 78
    with pytest.raises(InputError, match="every trajectory is held out"):
        split_pairs(data.frames, segments=data.segments, held_out=(0, 1))


def test_files_of_different_chains_are_refused_in_one_line(files, tmp_path):
    other = tmp_path / "n7.npz"
    save_trajectory(other, simulate(frames=30, seed=3, n_beads=7))
    with pytest.raises(InputError, match="7 beads per frame; the model expects 12"):
        resolve_many([*files, str(other)])
    with pytest.raises(UsageError, match="at least one"):
        resolve_many([])
    with pytest.raises(InputError, match="trajectory 2: 3 frames give 2 pairs, too few to split"):
        split_pairs(np.zeros((123, 12, 3)), segments=((0, 120), (120, 123)), train_fraction=0.4)


def test_short_files_held_out_files_duplicates_and_roles(files, tmp_path):
    from e3traj.runtime import evaluate_predictor

    shorts = []
    for seed in range(4):
        f = tmp_path / f"s{seed}.npz"
        save_trajectory(f, simulate(frames=10, seed=10 + seed))
        shorts.append(str(f))
    split = resolve_many(shorts).split()
    ar, scores = choose_ar(split)  # orders the short files cannot fit are not tried (no traceback)
    assert max(scores) <= 5 and len(split.train_index(max(scores) - 1)) >= 2 * (max(scores) - 1)
    held = resolve_many(files[:1], val_specs=files[1:])
    report = evaluate_predictor(predictor_suite(held.split())["ar"], held.split(), ks=(1, 10), n_starts=4)
    assert (
        set(report["rollout_rmsd"]["model"]) == {"k=1", "k=10"} and report["rollout_starts"]
    )  # starts exist in the held-out file, past its history
    assert held.sha256 != resolve_many(files).sha256  # which files validate is part of the data's identity
    with pytest.raises(InputError, match="the same frames as"):
        resolve_many([files[0], files[0]])
