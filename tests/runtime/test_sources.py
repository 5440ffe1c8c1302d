"""Data sources (runtime/_sources.py): a trajectory path, and the chapter's data found, downloaded and checked."""

import numpy as np
import pytest

from e3traj.runtime import InputError, resolve_data

rng = np.random.default_rng(0)


def _frames(t=5, d=2):
    return rng.normal(size=(t, 12, d))


def test_resolve_data_path(tmp_path):
    np.savez(tmp_path / "a.npz", arr=_frames(6, 2))
    src = resolve_data(str(tmp_path / "a.npz"))
    assert src.source == "file" and src.frames.shape == (6, 12, 3) and len(src.file_sha256) == 64


def test_dmol_offline_message(tmp_path, monkeypatch):
    from e3traj.runtime import _sources

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("E3TRAJ_DATA", raising=False)
    monkeypatch.setattr(_sources, "_candidates", lambda: [tmp_path / "nowhere" / "paths.npz"])
    monkeypatch.setattr(_sources, "DMOL_URL", "http://127.0.0.1:9/paths.npz")  # nothing listens on port 9
    with pytest.raises(InputError) as e:
        _sources.dmol_path(timeout=2)
    msg = str(e.value)
    assert "cannot download" in msg and "E3TRAJ_DATA" in msg and str(tmp_path / "cache") in msg


def test_dmol_wrong_checksum_refused(tmp_path, monkeypatch):
    from e3traj.runtime import _sources

    bad = tmp_path / "paths.npz"
    np.savez(bad, arr=_frames(3, 2))
    monkeypatch.setenv("E3TRAJ_DATA", str(bad))
    with pytest.raises(InputError, match="sha256"):
        _sources.dmol_path(download=False)
