"""The embedded bead-spring simulator: a 12-bead polymer under a Langevin thermostat (numpy only).

It makes trajectories that stand in for the dmol-book chapter's ``paths.npz`` (same format, similar statistics),
so every command can be tried without the download and tests can run on fresh data.

Model (reduced units: mass, energy ``k_B T`` and length of order one):

* harmonic bonds between neighbours ``i, i+1``: ``U = k_bond / 2 (r - r0)^2``;
* cosine-harmonic angles on the bond angle ``theta`` at every inner bead (the angle between ``r_{i-1} - r_i`` and
  ``r_{i+1} - r_i``, pi for a straight chain): ``U = k_angle / 2 (cos theta - cos theta0)^2`` (GROMACS angle type
  2); near ``theta0`` it is a harmonic angle of stiffness ``k_angle sin^2 theta0`` per rad^2, and it needs no
  arccos;
* Lennard-Jones between non-bonded beads, i.e. every pair with ``|i - j| >= 2`` (so the ``i, i+2`` pair across an
  angle is also kept from overlapping), truncated at ``lj_cutoff`` and shifted to zero there; the default cutoff
  ``2^(1/6) sigma`` keeps only the repulsive core (WCA);
* a small WCA core (diameter ``bond_core``) between bonded neighbours, so a soft bond cannot collapse through zero
  length, where its direction and the bond angles are undefined;
* a Langevin thermostat integrated with BAOAB (Leimkuhler & Matthews): kick, drift, exact Ornstein-Uhlenbeck
  velocity update, drift, kick; small configurational bias and stable for ``omega dt`` well below 2.

``dim=2`` moves the beads in the plane (as in the chapter), ``dim=3`` in space. A frame is saved every
``steps_per_frame`` steps after ``burn_in`` steps. The defaults are tuned so the chapter's statistics are met
(see :func:`e3traj.runtime._metrics.trajectory_stats`): mean bond about 0.36, per-frame displacement about 0.006
per coordinate and small friction, so the motion is underdamped and predicting ``x_t + (x_t - x_{t-1})`` beats
copying ``x_t`` by about 100x in mean squared error, as on the real data.

Same bits on every machine: a chaotic run turns one ulp into another trajectory after a few hundred steps, so
everything that feeds the trajectory is computed with correctly rounded IEEE operations only (``+ - * /`` and
``sqrt``, elementwise) and every reduction is written out in a fixed order (:func:`_sum_axis1`, sums over the
coordinates spelled out). Nothing in it goes through BLAS (``@``, ``dot``, ``einsum``, ``linalg``), a SIMD-dispatched
numpy transcendental (``np.exp``, ``np.arccos``...) or the C library's ``exp``/``log``/``cos`` (glibc picks FMA
variants of them by CPU, and numpy's ``standard_normal`` calls them): the Gaussian noise comes from the raw
64-bit PCG64 stream by Marsaglia's polar method with a logarithm written out in elementwise arithmetic
(:func:`_log`), and the few transcendental constants (``exp(-gamma dt)``, ``cos theta0``) are computed once in
:mod:`decimal` (software arithmetic, 40 digits). ``tests/runtime/test_simulate_bits.py`` checks the claim under
several BLAS, numpy and glibc dispatch settings.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from ._contract import DEFAULT_N_BEADS, MAX_BEADS, MIN_BEADS
from ._errors import UsageError
from ._exact import _WCA_FACTOR, _centred, _cos_exact, _dot_last, _exp_exact, _Normals, _sum_axis1

__all__ = ["MAX_SIM_FRAMES", "SimParams", "simulate"]

#: Most frames one call may return (288 MB of float64 positions in 3D at the cap, about 3 minutes).
MAX_SIM_FRAMES = 1_000_000

#: Well depth of the repulsive core between bonded neighbours (see ``SimParams.bond_core``).
_CORE_EPSILON = 1.0


@dataclass(frozen=True)
class SimParams:
    """Physical and numerical parameters of :func:`simulate` (reduced units).

    Attributes:
        bond_length: rest length ``r0`` of the harmonic bonds.
        bond_k: bond stiffness ``k_bond`` (energy / length^2).
        angle: rest bond angle ``theta0`` in radians (pi = straight chain; 2 pi / 3 = 60 degree turns).
        angle_k: stiffness ``k_angle`` of the cosine-harmonic angle term ``k_angle / 2 (cos theta - cos theta0)^2``
            (energy); the default 14/3 matches, at ``theta0 = 2 pi / 3``, a harmonic angle of 3.5 energy / rad^2.
        lj_epsilon: Lennard-Jones well depth between non-bonded beads (``|i - j| >= 2``).
        lj_sigma: Lennard-Jones diameter.
        lj_cutoff: truncation radius (the potential is shifted to zero there); ``None`` means ``2^(1/6) sigma``,
            the purely repulsive WCA core.
        bond_core: diameter of a purely repulsive WCA core (well depth 1) between bonded neighbours, which keeps a
            soft bond from collapsing through zero length (where its direction and the bond angles are undefined);
            0 switches it off.
        temperature: ``k_B T`` of the thermostat.
        friction: Langevin friction ``gamma`` (1 / time); small means underdamped, inertial motion.
        mass: bead mass.
        dt: integration time step.
        steps_per_frame: integration steps between saved frames.
        burn_in: integration steps run (and discarded) before the first saved frame.
    """

    bond_length: float = 0.325
    bond_k: float = 85.0
    angle: float = 2.0 * math.pi / 3.0
    angle_k: float = 14.0 / 3.0
    lj_epsilon: float = 1.0
    lj_sigma: float = 0.17
    lj_cutoff: float | None = None
    bond_core: float = 0.1
    temperature: float = 1.0
    friction: float = 0.2
    mass: float = 1.0
    dt: float = 0.002
    steps_per_frame: int = 3
    burn_in: int = 1500

    def __post_init__(self) -> None:
        positive = ("bond_length", "bond_k", "lj_sigma", "temperature", "mass", "dt")
        for name in positive:
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise UsageError(f"SimParams.{name} must be a finite number > 0, got {value!r}")
        for name in ("angle_k", "lj_epsilon", "friction", "bond_core"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise UsageError(f"SimParams.{name} must be a finite number >= 0, got {value!r}")
        if not (isinstance(self.angle, (int, float)) and 0.0 < self.angle <= math.pi):
            raise UsageError(f"SimParams.angle must lie in (0, pi] radians, got {self.angle!r}")
        if self.lj_cutoff is not None and not (
            isinstance(self.lj_cutoff, (int, float)) and math.isfinite(self.lj_cutoff) and self.lj_cutoff > 0
        ):
            raise UsageError(f"SimParams.lj_cutoff must be None or a finite number > 0, got {self.lj_cutoff!r}")
        if not (isinstance(self.steps_per_frame, int) and self.steps_per_frame >= 1):
            raise UsageError(f"SimParams.steps_per_frame must be an int >= 1, got {self.steps_per_frame!r}")
        if not (isinstance(self.burn_in, int) and self.burn_in >= 0):
            raise UsageError(f"SimParams.burn_in must be an int >= 0, got {self.burn_in!r}")

    @property
    def cutoff(self) -> float:
        """The Lennard-Jones truncation radius actually used."""
        return self.lj_cutoff if self.lj_cutoff is not None else _WCA_FACTOR * self.lj_sigma

    def as_dict(self) -> dict:
        return asdict(self)


class _Forces:
    """Force field of the 12-bead chain; the pair terms are evaluated on dense ``(12, 12)`` matrices built once.

    Call with positions ``(12, dim)`` for the forces ``(12, dim)``; :meth:`energy` gives the potential energy.
    Only elementwise IEEE arithmetic and fixed-order sums (see the module docstring).
    """

    def __init__(self, p: SimParams, n: int = DEFAULT_N_BEADS) -> None:
        self.p = p
        self.cos0 = _cos_exact(p.angle)
        sep = np.abs(np.arange(n)[:, None] - np.arange(n)[None, :])
        nonbonded = sep >= 2
        bonded = sep == 1
        # per-pair sigma^2, cutoff^2 and epsilon (zero where a pair has no Lennard-Jones term)
        sig = np.where(nonbonded, p.lj_sigma, np.where(bonded & (p.bond_core > 0), p.bond_core, 1.0))
        eps = np.where(nonbonded, p.lj_epsilon, np.where(bonded, _CORE_EPSILON if p.bond_core > 0 else 0.0, 0.0))
        cut = np.where(nonbonded, p.cutoff, _WCA_FACTOR * sig)
        self.sig2 = sig * sig
        self.rc2 = np.where(eps > 0, cut * cut, 0.0)
        self.eps24 = 24.0 * eps
        sc2 = self.sig2 / (cut * cut)
        sc6 = sc2 * sc2 * sc2
        self.shift = 4.0 * eps * (sc6 * sc6 - sc6)
        self.pad = np.eye(n)  # keeps the diagonal away from 0 / 0
        self.use_pairs = bool(np.any(eps > 0))

    def _pairs(self, x: np.ndarray):
        d = x[:, None, :] - x[None, :, :]
        q2 = _dot_last(d, d) + self.pad
        s6 = self.sig2 / q2
        s6 = s6 * s6 * s6
        on = q2 < self.rc2
        return d, q2, s6, on

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Forces on every bead. Shapes: ``x`` ``(12, dim)`` -> ``(12, dim)``."""
        p = self.p
        if self.use_pairs:
            # Lennard-Jones, truncated and shifted: F_i = sum_j 24 eps (2 s^12 - s^6) / r^2 (x_i - x_j)
            d, q2, s6, on = self._pairs(x)
            coef = self.eps24 * (2.0 * s6 - 1.0) * s6 / q2
            coef *= on
            f = _sum_axis1(coef[:, :, None] * d)
        else:
            f = np.zeros_like(x)
        # bonds
        b = x[1:] - x[:-1]  # (n-1, dim)
        r = np.sqrt(_dot_last(b, b))
        u = b / r[:, None]
        fb = (p.bond_k * (r - p.bond_length))[:, None] * u  # force on i, towards i+1 when stretched
        f[:-1] += fb
        f[1:] -= fb
        # angles at inner beads j = 1..n-2, between a = x[j-1] - x[j] = -b[j-1] and c = x[j+1] - x[j] = b[j]
        if p.angle_k > 0:
            ua = -u[:-1]
            uc = u[1:]
            cos = _dot_last(ua, uc)
            g = -p.angle_k * (cos - self.cos0)  # -dU/dcos
            cos = cos[:, None]
            fa = (g / r[:-1])[:, None] * (uc - cos * ua)  # g * dcos/dx[j-1]
            fc = (g / r[1:])[:, None] * (ua - cos * uc)  # g * dcos/dx[j+1]
            f[:-2] += fa
            f[2:] += fc
            f[1:-1] -= fa + fc
        return f

    def energy(self, x: np.ndarray) -> float:
        """Potential energy. Shapes: ``x`` ``(12, dim)``."""
        p = self.p
        bv = x[1:] - x[:-1]
        b = np.sqrt(_dot_last(bv, bv))
        e = 0.5 * p.bond_k * np.sum((b - p.bond_length) ** 2)
        cos = -_dot_last(bv[1:], bv[:-1]) / (b[1:] * b[:-1])
        e += 0.5 * p.angle_k * np.sum((cos - self.cos0) ** 2)
        if self.use_pairs:
            _d, _q2, s6, on = self._pairs(x)
            e += 0.5 * np.sum(np.where(on, self.eps24 / 6.0 * (s6 * s6 - s6) - self.shift, 0.0))
        return float(e)


def _initial_chain(normals: _Normals, p: SimParams, dim: int, n: int = DEFAULT_N_BEADS) -> np.ndarray:
    """A non-overlapping chain drawn near equilibrium, centred at the origin.

    Bond lengths and the cosines of the bond angles are drawn from the Boltzmann weights of their harmonic terms
    (turn directions at random), so only a short burn-in is needed even at small friction. Python float arithmetic
    and ``math.sqrt`` only: the same bits on every machine.

    Shapes: -> ``(12, dim)``.
    """
    kt = p.temperature
    bond_sd = math.sqrt(kt / p.bond_k)
    cos0 = _cos_exact(p.angle)
    cos_sd = math.sqrt(kt / p.angle_k) if p.angle_k > 0 else 2.0
    min_d = 1.1 * p.lj_sigma
    min_d2 = min_d * min_d
    for _ in range(1000):
        x = [[0.0] * dim]
        direction = [1.0] + [0.0] * (dim - 1)
        for i in range(1, n):
            if i > 1:
                cos_theta = min(max(cos0 + cos_sd * normals.scalar(), -1.0), 0.995)  # theta in [0.1, pi]
                # the turn between successive bond vectors is pi - theta
                c, s = -cos_theta, math.sqrt(1.0 - cos_theta * cos_theta)
                if dim == 2:
                    s = s if normals.scalar() < 0.0 else -s
                    direction = [c * direction[0] - s * direction[1], s * direction[0] + c * direction[1]]
                else:
                    perp = [float(v) for v in normals.take(3)]
                    proj = perp[0] * direction[0] + perp[1] * direction[1] + perp[2] * direction[2]
                    perp = [perp[k] - proj * direction[k] for k in range(3)]
                    norm = math.sqrt(perp[0] * perp[0] + perp[1] * perp[1] + perp[2] * perp[2])
                    direction = [c * direction[k] + s * (perp[k] / norm) for k in range(3)]
            length = p.bond_length * min(max(1.0 + bond_sd / p.bond_length * normals.scalar(), 0.5), 1.5)
            x.append([x[-1][k] + length * direction[k] for k in range(dim)])
        a = np.array(x)
        d = a[:, None] - a[None]
        d2 = _dot_last(d, d)[np.triu_indices(n, 2)]
        if d2.min() > min_d2:
            return _centred(a)
    raise UsageError(
        f"simulate: could not place a chain of {n} beads without overlaps in {dim}D; use --dim 3, fewer beads, "
        "or a smaller lj_sigma"
    )


def simulate(
    frames: int = 2048,
    seed: int = 0,
    dim: int = 2,
    *,
    params: SimParams | None = None,
    n_beads: int = DEFAULT_N_BEADS,
) -> np.ndarray:
    """Simulate the bead-spring polymer of ``n_beads`` beads (12: the chapter's) and return its saved frames.

    The run is deterministic for a seed on every machine: the same arguments give bit-identical output whatever
    the CPU, BLAS kernel or SIMD dispatch (see the module docstring), and a shorter run is a prefix of a longer
    one with the same seed and parameters.

    Args:
        frames: number of frames to return (>= 1).
        seed: random seed (any non-negative int), seeding PCG64.
        dim: 2 for a planar polymer (as in the chapter), 3 for motion in space.
        params: physical and numerical parameters (:class:`SimParams` defaults if ``None``; tuned on 12 beads).
        n_beads: beads per chain, ``MIN_BEADS`` to ``MAX_BEADS``; 12 gives the same bits as before it existed.

    Returns:
        Positions, float64. Shapes: ``(frames, n_beads, dim)``.

    Raises:
        ValueError (:class:`UsageError`): a bad argument; the message repeats the value.
    """
    if isinstance(frames, bool) or not isinstance(frames, (int, np.integer)) or frames < 1:
        raise UsageError(f"simulate: frames must be an int >= 1, got {frames!r}")
    if frames > MAX_SIM_FRAMES:
        raise UsageError(f"simulate: frames must be at most {MAX_SIM_FRAMES:,}, got {frames!r}")
    if isinstance(dim, bool) or dim not in (2, 3):
        raise UsageError(f"simulate: dim must be 2 or 3, got {dim!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise UsageError(f"simulate: seed must be an int >= 0, got {seed!r}")
    if isinstance(n_beads, bool) or not isinstance(n_beads, (int, np.integer)) or not MIN_BEADS <= n_beads <= MAX_BEADS:
        raise UsageError(f"simulate: n_beads must be an int in {MIN_BEADS}..{MAX_BEADS}, got {n_beads!r}")
    if frames * int(n_beads) > MAX_SIM_FRAMES * DEFAULT_N_BEADS:
        raise UsageError(
            f"simulate: {frames:,} frames of {n_beads} beads exceed the cap of {MAX_SIM_FRAMES * DEFAULT_N_BEADS:,} "
            "bead positions; simulate fewer frames"
        )
    if params is None:
        params = SimParams()
    elif not isinstance(params, SimParams):
        raise UsageError(f"simulate: params must be a SimParams, got {type(params).__name__}")
    frames, dim, p = int(frames), int(dim), params

    normals = _Normals(int(seed))
    n_beads = int(n_beads)
    forces = _Forces(p, n_beads)
    x = _initial_chain(normals, p, dim, n_beads)
    sigma_v = math.sqrt(p.temperature / p.mass)
    v = _centred(sigma_v * normals.take(x.shape))  # start without centre-of-mass drift

    dt = p.dt
    half_dt = 0.5 * dt
    half_dt_m = 0.5 * dt / p.mass
    c1 = _exp_exact(-p.friction * dt)
    c2 = math.sqrt(max(0.0, 1.0 - c1 * c1)) * sigma_v  # exact OU step: v <- c1 v + c2 xi

    out = np.empty((frames, n_beads, dim))
    f = forces(x)
    total = p.burn_in + (frames - 1) * p.steps_per_frame
    chunk = 1024  # noise is drawn in blocks; the stream, and so the result, does not depend on the block size
    step = 0
    saved = 0
    if p.burn_in == 0:
        out[0] = x
        saved = 1
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):  # a blown-up run is refused below
        while step < total:
            n = min(chunk, total - step)
            noise = normals.take((n, n_beads, dim))
            noise *= c2
            for k in range(n):
                # BAOAB: half kick, half drift, Ornstein-Uhlenbeck velocity update, half drift, half kick
                v += half_dt_m * f
                x += half_dt * v
                v *= c1
                v += noise[k]
                x += half_dt * v
                f = forces(x)
                v += half_dt_m * f
                step += 1
                if step >= p.burn_in and (step - p.burn_in) % p.steps_per_frame == 0:
                    out[saved] = x
                    saved += 1
            if not np.all(np.isfinite(x)):
                raise UsageError(
                    f"simulate: the integration diverged (non-finite positions by step {step}); {_hint(p)}"
                )
    _check_stable(out, p)
    return out


def _hint(p: SimParams) -> str:
    return f"lower SimParams.dt (now {p.dt!r})"


def _check_stable(out: np.ndarray, p: SimParams) -> None:
    """Refuse a run that blew up: a bond stretched by 12 thermal widths costs 72 kT and does not happen."""
    limit = p.bond_length + 12.0 * math.sqrt(p.temperature / p.bond_k)
    b = out[:, 1:] - out[:, :-1]
    bonds = np.sqrt(_dot_last(b, b))
    if bonds.max() > limit:
        t, i = np.argwhere(bonds > limit)[0]
        raise UsageError(
            f"simulate: the integration became unstable (bond {i} of frame {t} is {bonds[t, i]:.3g} long, "
            f"over {limit:.3g}); {_hint(p)}"
        )
