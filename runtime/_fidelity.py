"""Long rollouts judged as physics, not as RMSD: how long the polymer stays a polymer, and how close the
distributions of its structure and motion stay to the reference's (numpy only).

- **Stability**: a rollout is unstable from the first step where a value is non-finite, a bond leaves the band
  ``[BOND_LOW x shortest, BOND_HIGH x longest]`` bond of the reference, or two non-bonded beads come closer than
  ``CLOSE x`` the closest non-bonded pair of the reference. The stability time is the number of steps before it.
- **Distributions** over the stable part of every start, against the reference frames: the Wasserstein-1
  distance of bond lengths, bond angles (their cosines), radius of gyration and end-to-end distance, each divided
  by the reference's standard deviation of that observable (0: the same distribution; ~1: off by a spread).
- **Internal motion**: mean squared displacement relative to the centre of mass after ``lag`` steps, as a ratio
  to the reference's at the same lag (1: the same motion; << 1: frozen; >> 1: heated).
- **Centre-of-mass drift** over the rollout, and **planarity** (largest |z|) for planar data.

The same figures for the predictor suite (persistence, constant velocity and acceleration, the fitted AR(k)):
trivial predictors freeze or diverge, and the table shows which.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from ._contract import MIN_BEADS
from ._errors import UsageError
from ._noise import internal_msd

__all__ = [
    "Bands",
    "bands_from",
    "stability_steps",
    "observables",
    "w1",
    "FidelityRow",
    "fidelity_row",
    "LAGS",
    "BOND_LOW",
    "BOND_HIGH",
    "CLOSE",
    "fidelity_report",
    "format_fidelity",
]

#: Stability thresholds, relative to the reference frames (printed with every table).
BOND_LOW, BOND_HIGH, CLOSE = 0.5, 1.5, 0.5
#: Lags (steps) of the internal-motion ratio.
LAGS = (1, 10, 100)
#: Observables whose distributions are compared, in table order.
OBSERVABLES = ("bond_length", "bond_angle", "radius_of_gyration", "end_to_end")


@dataclass(frozen=True)
class Bands:
    """The stability band derived from reference frames (see the module docstring)."""

    bond_low: float
    bond_high: float
    min_nonbonded: float

    def describe(self) -> str:
        return (
            f"unstable at the first non-finite value, bond outside [{self.bond_low:.3g}, {self.bond_high:.3g}] "
            f"({BOND_LOW:g}x the reference's shortest, {BOND_HIGH:g}x its longest), or non-bonded pair closer than "
            f"{self.min_nonbonded:.3g} ({CLOSE:g}x the reference's closest)"
        )


def _check(frames, name: str) -> np.ndarray:
    a = np.asarray(frames, dtype=np.float64)
    if a.ndim < 3 or a.shape[-1] != 3 or a.shape[-2] < MIN_BEADS:
        raise UsageError(f"{name}: shape {a.shape}; expected (..., N, 3), N >= {MIN_BEADS}")
    return a


def _bonds(a: np.ndarray) -> np.ndarray:
    return np.linalg.norm(a[..., 1:, :] - a[..., :-1, :], axis=-1)


def _nonbonded_min(a: np.ndarray) -> np.ndarray:
    """Closest non-bonded pair (``|i - j| >= 2``) per frame. Shapes: ``(..., N, 3)`` -> ``(...)``."""
    i, j = np.triu_indices(a.shape[-2], k=2)
    d = a[..., i, :] - a[..., j, :]
    return np.sqrt(np.min(np.sum(d * d, axis=-1), axis=-1))


def bands_from(reference: np.ndarray) -> Bands:
    """The stability band of reference frames ``(T, N, 3)``."""
    ref = _check(reference, "reference")
    if len(ref) < 2 or not np.all(np.isfinite(ref)):
        raise UsageError(f"reference: {len(ref)} frame(s) or non-finite values; it needs >= 2 finite frames")
    b = _bonds(ref)
    return Bands(float(BOND_LOW * b.min()), float(BOND_HIGH * b.max()), float(CLOSE * _nonbonded_min(ref).min()))


def unstable_rows(frames: np.ndarray, bands: Bands) -> np.ndarray:
    """Which frames ``(B, N, 3)`` are outside the band (non-finite, a bond out of range, an overlap)."""
    with np.errstate(invalid="ignore", over="ignore"):
        b = _bonds(frames)
        bad = ~np.all(np.isfinite(frames), axis=(-1, -2))
        bad |= np.any((b < bands.bond_low) | (b > bands.bond_high) | ~np.isfinite(b), axis=-1)
        bad |= ~(_nonbonded_min(frames) >= bands.min_nonbonded)
    return bad


def stability_steps(traj: np.ndarray, bands: Bands) -> np.ndarray:
    """Steps before the first unstable frame, per start (``steps`` when the whole rollout is stable).

    Shapes: ``traj`` ``(steps + 1, S, N, 3)`` (frame 0 the start) -> ``(S,)`` int.
    """
    t = _check(traj, "traj")
    bad = unstable_rows(t, bands)
    steps = len(t) - 1
    out = np.full(t.shape[1], steps, dtype=np.int64)
    for s in range(t.shape[1]):
        hit = np.flatnonzero(bad[:, s])
        if hit.size:
            out[s] = max(int(hit[0]) - 1, 0)
    return out


def observables(frames: np.ndarray) -> dict[str, np.ndarray]:
    """Samples of each structural observable over frames ``(..., N, 3)`` (flattened)."""
    a = _check(frames, "frames")
    a = a.reshape(-1, a.shape[-2], 3)
    bonds = a[:, 1:] - a[:, :-1]
    blen = np.linalg.norm(bonds, axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = np.einsum("tbi,tbi->tb", bonds[:, 1:], bonds[:, :-1]) / (blen[:, 1:] * blen[:, :-1])
    com = a.mean(axis=1, keepdims=True)
    rg = np.sqrt(np.mean(np.sum((a - com) ** 2, axis=-1), axis=1))
    ee = np.linalg.norm(a[:, -1] - a[:, 0], axis=-1)
    return {"bond_length": blen.ravel(), "bond_angle": cos.ravel(), "radius_of_gyration": rg, "end_to_end": ee}


def w1(a: np.ndarray, b: np.ndarray, n: int = 512) -> float:
    """Wasserstein-1 distance between two 1D samples (quantile functions on ``n`` midpoints); NaN when empty."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    if not a.size or not b.size:
        return float("nan")
    q = (np.arange(n) + 0.5) / n
    return float(np.mean(np.abs(np.quantile(a, q) - np.quantile(b, q))))


@dataclass
class FidelityRow:
    """One predictor's figures (see the module docstring). ``stable_steps`` per start."""

    name: str
    steps: int
    stable_steps: list[int]
    w1: dict[str, float] = field(default_factory=dict)
    motion_ratio: dict[str, float] = field(default_factory=dict)
    com_drift: float = float("nan")
    max_abs_z: float | None = None

    @property
    def stable_fraction(self) -> float:
        return float(np.mean([s == self.steps for s in self.stable_steps])) if self.stable_steps else float("nan")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["stable_fraction"] = self.stable_fraction
        return d


def fidelity_row(
    name: str, traj: np.ndarray, reference: np.ndarray, bands: Bands, *, lags: Sequence[int] = LAGS
) -> FidelityRow:
    """Figures of one rollout ``traj`` ``(steps + 1, S, N, 3)`` against ``reference`` ``(T, N, 3)``.

    Distributions use every start's stable part only (frames 1..stable_steps); a start that is unstable at once
    contributes nothing, and a predictor with no stable frame gets NaN distances (never 0).
    """
    t = _check(traj, "traj")
    ref = _check(reference, "reference")
    steps = len(t) - 1
    stable = stability_steps(t, bands)
    parts = [t[1 : s + 1, i] for i, s in enumerate(stable) if s > 0]
    ref_obs = observables(ref)
    row = FidelityRow(name=name, steps=steps, stable_steps=[int(s) for s in stable])
    if parts:
        obs = observables(np.concatenate(parts))
        for k in OBSERVABLES:
            spread = float(np.std(ref_obs[k][np.isfinite(ref_obs[k])]))
            row.w1[k] = w1(obs[k], ref_obs[k]) / spread if spread > 0 else float("nan")
    else:
        row.w1 = {k: float("nan") for k in OBSERVABLES}
    fully = [i for i, s in enumerate(stable) if s == steps]
    for lag in lags:
        ref_msd = internal_msd(ref[:, None], lag)
        got = internal_msd(t[:, fully], lag) if fully else float("nan")
        row.motion_ratio[f"lag={lag}"] = got / ref_msd if ref_msd > 0 else float("nan")
    if fully:
        com = t[:, fully].mean(axis=-2)
        row.com_drift = float(np.mean(np.linalg.norm(com[-1] - com[0], axis=-1)))
    if np.all(ref[..., 2] == 0):
        with np.errstate(invalid="ignore"):
            z = np.abs(t[..., 2])
        row.max_abs_z = float(np.nanmax(z)) if np.isfinite(z).any() else float("nan")
    return row


def format_fidelity(
    rows: Sequence[FidelityRow],
    bands: Bands,
    *,
    floor: Mapping[str, float] | None = None,
    data_floor: Mapping[str, float] | None = None,
) -> str:
    """Fixed-width table of :func:`fidelity_row` results (``floor``: the W1 noise floor per observable;
    ``data_floor``: the W1 of the data's own frames against the reference), with the models' W1 as ratios to
    the floor."""
    head = f"{'predictor':<24}{'stable':>9}" + "".join(f"{k:>20}" for k in OBSERVABLES)
    head += "".join(f"{'motion ' + k:>16}" for k in rows[0].motion_ratio) + f"{'COM drift':>11}"
    lines = [
        bands.describe(),
        "W1 distances are in units of the reference's spread; motion is the ratio of the",
        ("internal mean squared displacement to the reference's at that lag"),
        head,
    ]
    for r in rows:
        line = f"{r.name:<24}{r.stable_fraction:>8.0%} " + "".join(
            f"{r.w1.get(k, math.nan):>20.3g}" for k in OBSERVABLES
        )
        line += "".join(f"{v:>16.3g}" for v in r.motion_ratio.values()) + f"{r.com_drift:>11.3g}"
        lines.append(line)
    if floor:
        lines.append(f"{'noise floor':<24}{'':>9}" + "".join(f"{floor.get(k, math.nan):>20.3g}" for k in OBSERVABLES))
    if data_floor:
        lines.append(
            f"{'the data (its frames)':<24}{'':>9}"
            + "".join(f"{data_floor.get(k, math.nan):>20.3g}" for k in OBSERVABLES)
        )
    if floor:
        for r in rows:
            if r.name.startswith("model"):
                ratios = ", ".join(f"{k} {r.w1.get(k, math.nan) / floor[k]:.3g}x" for k in OBSERVABLES if floor.get(k))
                lines.append(f"{r.name} / noise floor: {ratios}")
    return "\n".join(lines)


def fidelity_report(
    bundle, data, *, steps: int = 1000, n_starts: int = 8, seed: int = 0, simulated: bool = False, keep: bool = False
) -> dict:
    """Roll ``bundle`` (an open :class:`~e3traj.runtime.Bundle`) and the predictor suite out for ``steps`` steps
    from ``n_starts`` seeded starting frames of ``data`` (a :class:`~e3traj.runtime.DataSource`), and score them.

    The reference is ``data``'s frames, or, with ``simulated`` (the embedded simulator's data), an independent
    simulation of ``max(2048, n_starts * steps)`` frames (seed ``seed + 1``); then the noise floor is the same
    W1 distance between that reference and a second independent simulation of ``n_starts * steps`` frames.

    Returns ``{"rows": [FidelityRow.to_dict()...], "bands": ..., "floor": {...} | None, "starts": [...], ...}``;
    with ``keep``, also ``"_trajs"`` (label -> trajectory) and ``"_reference"`` (the reference frames) for figures.
    """
    from ._data import frames_before, split_pairs
    from ._predictors import predictor_suite
    from ._rollout import rollout

    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise UsageError(f"steps: got {steps!r}; pass a positive number of steps")
    if isinstance(n_starts, bool) or not isinstance(n_starts, int) or n_starts < 1:
        raise UsageError(f"starts: got {n_starts!r}; pass a positive number of starting frames")
    if getattr(data, "segments", None):
        raise UsageError("fidelity: pass one trajectory (its starts and its reference are one chain's frames)")
    frames = data.frames
    suite = predictor_suite(split_pairs(frames))
    h = max([bundle.history] + [p.history for p in suite.values()])
    if len(frames) <= h:
        raise UsageError(f"data: {len(frames)} frames; the starts need {h} frames before them")
    rng = np.random.default_rng([seed, 0xF1DE])
    starts = np.sort(rng.choice(np.arange(h, len(frames)), size=min(n_starts, len(frames) - h), replace=False))
    floor = data_floor = None
    if simulated:
        from ._simulate import simulate

        def sim(n, s):
            xy = simulate(frames=n, seed=s, n_beads=frames.shape[1])
            return np.concatenate([xy, np.zeros(xy.shape[:2] + (1,))], axis=-1)

        reference = sim(max(2048, len(starts) * steps), seed + 1)
        twin = sim(len(starts) * steps, seed + 2)
        ref_obs, twin_obs = observables(reference), observables(twin)
        floor, data_floor = {}, {}
        data_obs = observables(frames)  # what a model trained on these frames saw: its own distance to the reference
        for k in OBSERVABLES:
            spread = float(np.std(ref_obs[k]))
            floor[k] = w1(twin_obs[k], ref_obs[k]) / spread if spread > 0 else float("nan")
            data_floor[k] = w1(data_obs[k], ref_obs[k]) / spread if spread > 0 else float("nan")
    else:
        reference = frames
    bands = bands_from(reference)
    from ._noise import RolloutNoise

    runs = [("model", bundle, None)]
    scale = getattr(bundle, "noise_scale", None)
    if scale:  # sampled: the model plus noise of its training residuals' size
        runs.append(("sampled", bundle, RolloutNoise(scale, seed, starts)))
    runs += [(name, p, None) for name, p in suite.items()]
    rows, trajs = [], {}
    for name, p, noise in runs:
        res = rollout(p, frames[starts], steps, previous=frames_before(frames, starts, int(p.history)), noise=noise)
        traj = np.full((steps + 1,) + res.traj.shape[1:], np.nan)
        traj[: len(res.traj)] = res.traj  # a stopped rollout: NaN after its last frame (unstable from there)
        if name == "sampled":
            label = f"model, sampled ({scale:.2g})"
        else:
            label = {"model": f"model ({bundle.kind})", "ar": f"AR({suite['ar'].order}), fitted"}.get(
                name, name.replace("_", " ")
            )
        rows.append(fidelity_row(label, traj, reference, bands))
        if keep:
            trajs[label] = traj
    return {
        "steps": steps,
        "starts": [int(s) for s in starts],
        "seed": seed,
        "reference": "an independent simulation" if simulated else "the data's frames",
        "bands": asdict(bands),
        "bands_text": bands.describe(),
        "floor": floor,
        "data_floor": data_floor,
        "rows": [r.to_dict() for r in rows],
        "_rows": rows,
        "_bands": bands,
        **({"_trajs": trajs, "_reference": reference} if keep else {}),
    }
