"""Check a predictor's symmetry: rotations, inversions, mirrors, translations, bead permutations, planarity.

Used by ``e3traj check``, by the export (before a bundle is written) and by the tests. Errors are computed in
float64 against what an E(3)- and permutation-equivariant model must output.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, replace

import numpy as np

from ._contract import DEFAULT_N_BEADS, INPUT_MEANINGS, MIN_BEADS, OUTPUT_MEANINGS, PERMUTATIONS, PREVIOUS_DISPLACEMENTS

__all__ = [
    "CaseResult",
    "EquivarianceReport",
    "check_equivariance",
    "check_bundle",
    "check_frames",
    "random_rotation",
    "CASES",
    "MIN_CHECK_FRAMES",
    "MIN_EXAMPLE_FRAMES",
]

#: The cases :func:`check_equivariance` runs, in order.
CASES = ("rotation", "improper", "mirror_z", "translation", "permutation", "planar")

#: ``check_bundle`` generates this many seeded frames of its own (half polymer-like chains, half random clouds,
#: half of each planar) besides the bundle's example, so a check never rests on the example alone.
MIN_CHECK_FRAMES = 16

#: The example re-check needs at least this many frames (export writes 16 or more); fewer is a FAIL.
MIN_EXAMPLE_FRAMES = 4

_MIRROR_Z = np.diag([1.0, 1.0, -1.0])


@dataclass(frozen=True)
class CaseResult:
    """One row of the report: the worst error over the trials of one case."""

    case: str
    max_abs_error: float
    max_rel_error: float
    passed: bool
    trials: int
    threshold: float
    criterion: str = "relative"  # "relative" (equivariance) or "absolute" (the example re-check)
    note: str = ""  # why a case failed on its evidence (no frames, non-finite or all-zero outputs)


@dataclass
class EquivarianceReport:
    """All cases of one check. ``passed`` is True when every case passed."""

    cases: list[CaseResult]
    tolerance: float
    trials: int
    seed: int
    frames: int = 0  # frames each case ran on

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.cases)

    @property
    def failed(self) -> list[str]:
        """Names of the cases that failed."""
        return [c.case for c in self.cases if not c.passed]

    def case(self, name: str) -> CaseResult:
        """The row named ``name`` (KeyError if absent)."""
        for c in self.cases:
            if c.case == name:
                return c
        raise KeyError(name)

    def to_dict(self) -> dict:
        return {
            "passed": self.passed,
            "tolerance": self.tolerance,
            "trials": self.trials,
            "seed": self.seed,
            "frames": self.frames,
            "cases": [asdict(c) for c in self.cases],
        }

    def table(self) -> str:
        """Fixed-width text: case, max abs err, max rel err, PASS/FAIL."""
        w = max([12] + [len(c.case) for c in self.cases])  # (the single-frame graph's rows have longer names)
        lines = [f"{'case':<{w}} {'max abs err':>12} {'max rel err':>12}  result", "-" * (w + 34)]
        for c in self.cases:
            verdict = "PASS" if c.passed else "FAIL"
            note = f"  (abs <= {c.threshold:g})" if c.criterion == "absolute" else ""
            if c.note:
                note += f"  [{c.note}]"
            lines.append(f"{c.case:<{w}} {_num(c.max_abs_error):>12} {_num(c.max_rel_error):>12}  {verdict}{note}")
        lines.append(
            f"{'all' if self.passed else 'some'} cases {'PASS' if self.passed else 'FAIL'} "
            f"(relative tolerance {self.tolerance:g}, {self.trials} trial(s), seed {self.seed}, "
            f"{self.frames} frames)"
        )
        return "\n".join(lines)


def _num(v: float) -> str:
    return "nan" if np.isnan(v) else f"{v:.3e}"


def _worse(a: float, b: float) -> float:
    """The larger of two errors, NaN winning (``max(0, nan)`` is 0 in Python: a NaN must never pass)."""
    if np.isnan(a) or np.isnan(b):
        return float("nan")
    return max(a, b)


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A random proper rotation (det +1), Haar-distributed: QR of a Gaussian matrix with the sign fix."""
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def _transform(
    frames: Mapping[str, np.ndarray],
    meanings: Mapping[str, str],
    g: np.ndarray,
    t: np.ndarray,
    perm: np.ndarray | None,
) -> dict[str, np.ndarray]:
    out = {}
    for name, arr in frames.items():
        v = arr @ g.T
        if meanings[name] == "positions":
            v = v + t
        if perm is not None:
            v = v[..., perm, :]  # the bead axis (history inputs are (B, H, N, 3))
        out[name] = v
    return out


def _expected(y: np.ndarray, output_meaning: str, g: np.ndarray, t: np.ndarray, perm: np.ndarray | None) -> np.ndarray:
    e = y @ g.T
    if output_meaning == "next_positions":
        e = e + t
    if perm is not None:
        e = e[:, perm]
    return e


def _errors(pred: np.ndarray, expected: np.ndarray) -> tuple[float, float]:
    """Max abs and relative error; NaN when anything is NaN, inf when anything is infinite (never 0 by default)."""
    pred = np.asarray(pred, dtype=np.float64)
    if pred.shape != expected.shape or not expected.size:
        return float("nan"), float("nan")
    with np.errstate(invalid="ignore", over="ignore"):
        diff = np.abs(pred - expected)
    if np.isnan(diff).any():
        return float("nan"), float("nan")
    abs_err = float(np.max(diff))
    scale = float(np.max(np.abs(expected)))
    return abs_err, abs_err / max(scale, 1e-12)


def _evidence_problem(y: np.ndarray) -> str:
    """Why outputs cannot serve as evidence: empty, non-finite, or all zero (any transform of 0 is 0)."""
    if not y.size:
        return "no outputs"
    if not np.all(np.isfinite(y)):
        return "non-finite outputs"
    if not np.any(y):
        return "all-zero outputs prove nothing"
    return ""


def check_equivariance(
    predict: Callable[[dict[str, np.ndarray]], np.ndarray],
    input_meanings: Mapping[str, str],
    output_meaning: str,
    frames: Mapping[str, np.ndarray],
    *,
    trials: int = 3,
    seed: int = 0,
    tolerance: float = 1e-4,
    translation_scale: float = 5.0,
    permutation: str = "any",
) -> EquivarianceReport:
    """Check that ``predict`` transforms as an E(3)- and permutation-equivariant model must.

    Cases (each over ``trials`` seeded draws; ``mirror_z`` and ``planar`` are deterministic and run once):
    ``rotation`` (random proper rotation), ``improper`` (rotation x inversion), ``mirror_z`` (z -> -z),
    ``translation`` (random vector of norm up to ``translation_scale``), ``permutation`` (a random bead order;
    with ``permutation="chain_reversal"``, for models that know the chain's bonds, the one relabelling that
    carries the chain along: bead i -> N - 1 - i) and ``planar`` (frames with z = 0 must give outputs with z = 0;
    the base frames are projected onto z = 0 when they are not planar already). Positions map to g x + t,
    previous displacements (every history frame alike) to g v; the
    expected output is g y (+ t for ``next_positions``). A case passes when
    max |pred - expected| / max(max |expected|, 1e-12) <= ``tolerance`` on finite, non-degenerate evidence: a case
    whose base outputs are non-finite or all zero, or whose error is NaN, FAILS (with a note), never passes.

    Args:
        predict: maps inputs by name, each ``(B, N, 3)`` float64, to the output ``(B, N, 3)``.
        input_meanings: input name -> ``positions`` | ``previous_displacement`` | ``previous_displacements``.
        output_meaning: one of :data:`~e3traj.runtime.contract.OUTPUT_MEANINGS`.
        frames: base inputs by name. Shapes: ``(B, N, 3)``; ``previous_displacements`` ``(B, H, N, 3)`` (every
            history frame is transformed with the same g, and permuted the same way).
        permutation: what the model promises, ``any`` or ``chain_reversal``.
    """
    if permutation not in PERMUTATIONS:
        raise ValueError(f"permutation must be one of {PERMUTATIONS}, got {permutation!r}")
    if output_meaning not in OUTPUT_MEANINGS:
        raise ValueError(f"output_meaning must be one of {OUTPUT_MEANINGS}, got {output_meaning!r}")
    if set(input_meanings) != set(frames):
        raise ValueError(f"frames have inputs {sorted(frames)}, input_meanings name {sorted(input_meanings)}")
    for name, meaning in input_meanings.items():
        if meaning not in INPUT_MEANINGS:
            raise ValueError(f"input meaning must be one of {INPUT_MEANINGS}, got {meaning!r} for {name!r}")
    if trials < 1:
        raise ValueError(f"trials must be >= 1, got {trials!r}")
    if not tolerance >= 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance!r}")
    base = {}
    n_beads = None
    for name, arr in frames.items():
        a = np.asarray(arr, dtype=np.float64)
        hist = input_meanings[name] == PREVIOUS_DISPLACEMENTS
        n_beads = a.shape[-2] if n_beads is None and a.ndim >= 2 else n_beads
        if a.ndim != (4 if hist else 3) or a.shape[-2:] != (n_beads, 3) or n_beads < MIN_BEADS:
            raise ValueError(
                f"frames[{name!r}] has shape {a.shape}, expected {'(B, H, N, 3)' if hist else '(B, N, 3)'} "
                f"with one N >= {MIN_BEADS} for every input"
            )
        if not len(a):
            raise ValueError(f"frames[{name!r}] holds no frames; a check needs evidence")
        base[name] = a
    rng = np.random.default_rng(seed)
    y0 = np.asarray(predict({k: v.copy() for k, v in base.items()}), dtype=np.float64)
    problem = _evidence_problem(y0)
    eye = np.eye(3)
    zero = np.zeros(3)

    def run_case(
        name: str, draws: list[tuple[np.ndarray, np.ndarray, np.ndarray | None]], note: str = ""
    ) -> CaseResult:
        worst_abs, worst_rel = 0.0, 0.0
        for g, t, perm in draws:
            pred = predict(_transform(base, input_meanings, g, t, perm))
            a, r = _errors(pred, _expected(y0, output_meaning, g, t, perm))
            worst_abs, worst_rel = _worse(worst_abs, a), _worse(worst_rel, r)
        ok = bool(not problem and np.isfinite(worst_rel) and worst_rel <= tolerance)
        return CaseResult(name, worst_abs, worst_rel, ok, len(draws), tolerance, note=problem or note)

    def translation() -> np.ndarray:
        d = rng.standard_normal(3)
        return d / np.linalg.norm(d) * rng.uniform(0.2 * translation_scale, translation_scale)

    cases = [
        run_case("rotation", [(random_rotation(rng), zero, None) for _ in range(trials)]),
        run_case("improper", [(-random_rotation(rng), zero, None) for _ in range(trials)]),
        run_case("mirror_z", [(_MIRROR_Z, zero, None)]),
        run_case("translation", [(eye, translation(), None) for _ in range(trials)]),
    ]
    if permutation == "any":
        cases.append(run_case("permutation", [(eye, zero, rng.permutation(n_beads)) for _ in range(trials)]))
    else:
        reverse = np.arange(n_beads)[::-1].copy()
        cases.append(run_case("permutation", [(eye, zero, reverse)], note="chain reversal, the promised relabelling"))
    # planar: z = 0 in, z = 0 out (for every meaning: displacement-like outputs and next positions alike)
    flat = {k: v * np.array([1.0, 1.0, 0.0]) for k, v in base.items()}
    yf = np.asarray(predict(flat), dtype=np.float64)
    flat_problem = _evidence_problem(yf[..., :2]) if yf.ndim == 3 and yf.shape[-1] == 3 else "wrong output shape"
    if flat_problem:
        abs_z = rel_z = float("nan") if flat_problem != "all-zero outputs prove nothing" else 0.0
    else:
        abs_z = float(np.max(np.abs(yf[..., 2]))) if np.all(np.isfinite(yf[..., 2])) else float("nan")
        rel_z = abs_z / max(float(np.max(np.abs(yf))), 1e-12)
    ok = bool(not flat_problem and np.isfinite(rel_z) and rel_z <= tolerance)
    cases.append(CaseResult("planar", abs_z, rel_z, ok, 1, tolerance, note=flat_problem))
    n = len(next(iter(base.values())))
    return EquivarianceReport(cases=cases, tolerance=tolerance, trials=trials, seed=seed, frames=n)


def check_frames(
    input_meanings: Mapping[str, str],
    n: int = MIN_CHECK_FRAMES,
    *,
    seed: int = 0,
    like=None,
    history: int = 1,
    n_beads: int = DEFAULT_N_BEADS,
) -> dict[str, np.ndarray]:
    """Seeded test frames of the check's own: half polymer-like chains, half random clouds, half of each planar.

    Chains are random walks with bonds of the typical length of ``like`` (a ``(B, N, 3)`` array of positions,
    e.g. the example's; 0.36 without it) and random turns; clouds spread like the chains. Previous
    displacements are small random vectors (planar for planar frames).

    Shapes: each returned input ``(n, n_beads, 3)`` float64; ``previous_displacements``
    ``(n, history, n_beads, 3)``.
    """
    if n < 2:
        raise ValueError(f"n must be >= 2, got {n!r}")
    if n_beads < MIN_BEADS:
        raise ValueError(f"n_beads must be >= {MIN_BEADS}, got {n_beads!r}")
    rng = np.random.default_rng([seed, 0xC0FFEE])
    bond = 0.36
    if like is not None and len(like) and np.all(np.isfinite(like)):
        lengths = np.linalg.norm(np.diff(np.asarray(like, dtype=np.float64), axis=1), axis=-1)
        if np.median(lengths) > 0:
            bond = float(np.median(lengths))
    chains = (n + 1) // 2
    planar = np.zeros(n, dtype=bool)
    planar[: chains // 2] = True
    planar[chains : chains + (n - chains) // 2] = True
    steps = rng.standard_normal((chains, n_beads - 1, 3))
    steps[planar[:chains], :, 2] = 0.0
    steps /= np.linalg.norm(steps, axis=-1, keepdims=True)
    pos = np.concatenate([np.zeros((chains, 1, 3)), np.cumsum(bond * steps, axis=1)], axis=1)
    cloud = rng.normal(scale=bond * 2.0, size=(n - chains, n_beads, 3))
    frames = np.concatenate([pos, cloud]) + rng.normal(scale=bond, size=(n, 1, 3))
    frames[planar, :, 2] = 0.0
    out = {}
    for name, meaning in input_meanings.items():
        if meaning == "positions":
            out[name] = frames
        else:
            shape = (n, history, n_beads, 3) if meaning == PREVIOUS_DISPLACEMENTS else (n, n_beads, 3)
            v = rng.normal(scale=0.02 * bond, size=shape)
            v[planar, ..., 2] = 0.0
            out[name] = v
    return out


def check_bundle(bundle, trials: int = 3, seed: int = 0, tolerance: float = 1e-4) -> EquivarianceReport:
    """Check a :class:`~e3traj.runtime.Bundle` on its example frames and :data:`MIN_CHECK_FRAMES` frames of its own,
    and add the ``example`` re-check row.

    The ``example`` row compares the model's outputs on ``example.npz`` with the stored reference and passes
    when the max abs error is <= the manifest's ``example.atol``, on at least :data:`MIN_EXAMPLE_FRAMES` frames
    whose reference outputs are finite and not all zero: anything less FAILS (an empty example proves nothing).
    """
    inputs, ref = bundle.load_example()
    own = check_frames(
        bundle.input_meanings,
        seed=seed,
        like=inputs.get(_positions_name(bundle)),
        history=max(1, bundle.history),
        n_beads=bundle.n_beads,
    )
    frames = {k: np.concatenate([inputs[k], own[k]]) for k in own} if len(ref) else own
    graphs = [("", bundle.predict, False)]
    if getattr(bundle, "has_single_frame", False):  # the graph single-start rollouts run: every case again
        graphs.append(("single-frame ", bundle.predict_single_frame, True))
    parts = []
    for prefix, run, single in graphs:
        part = check_equivariance(
            run,
            bundle.input_meanings,
            bundle.output_meaning,
            frames,
            trials=trials,
            seed=seed,
            tolerance=tolerance,
            permutation=getattr(bundle, "permutation", "any"),
        )
        part.cases = [replace(case, case=prefix + case.case) for case in part.cases]
        part.cases.append(_example_case(bundle, ref, prefix, single))
        parts.append(part)
    report = parts[0]
    report.cases = [case for part in parts for case in part.cases]
    return report


def _example_case(bundle, ref: np.ndarray, prefix: str, single: bool) -> CaseResult:
    """The ``example`` row: the model's outputs on the example against the stored reference."""
    atol = bundle.example_atol
    if len(ref) < MIN_EXAMPLE_FRAMES:
        note = f"the example holds {len(ref)} frame(s), at least {MIN_EXAMPLE_FRAMES} needed; re-export the bundle"
        return CaseResult(prefix + "example", float("nan"), float("nan"), False, 1, atol, "absolute", note)
    problem = _evidence_problem(ref)
    err, rel = bundle.example_error(single_frame=single)
    ok = bool(not problem and np.isfinite(err) and err <= atol)
    return CaseResult(prefix + "example", err, rel, ok, 1, atol, criterion="absolute", note=problem)


def _positions_name(bundle) -> str:
    return next(n for n, m in bundle.input_meanings.items() if m == "positions")
