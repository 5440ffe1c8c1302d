"""The Langevin model: a learned integrator of the chain's own kind of dynamics, built to stay stable for long
rollouts and, sampled with a thermostat's noise, to keep the reference's temperature.

    x_{t+1} = x_t + sum_j b_j d_j + F(x_t) + wall(x_t),   H = K - 1 previous displacements

- ``sum_j b_j d_j`` (``d_j = x_{t-j+1} - x_{t-j}``): the velocity's memory, the damping of a Langevin integrator
  (one coefficient at the default K = 2: ``d_{t+1} = b d_t + ...``, ``b < 1`` the friction).
- ``F``: forces with a potential (:class:`ChainForces`), so nothing in them pumps energy into the chain between
  thermostat kicks, and they conserve momentum:
  - central pair forces, ``F_i = sum_c sum_m w_{c,m} sum_{j in c(i)} phi_m(r_ij / L) u_ij / r_ij``
    (``u_ij = x_j - x_i``, L the mean bond length), one radial basis per class c of chain separation ``|i - j|``
    (1: bonds, 2: across an angle, 3, and >= 4: the non-bonded core), see :data:`CLASSES`;
  - bond-angle forces, ``-grad sum_i cos(theta_i)^m`` for m = 1..:data:`ANGLE_DEGREE` (:class:`AngleForces`).
    Measured: pair forces alone (a 1-3 distance stands in for the angle) give 1.33x AR(8)'s one-step MSE on the
    simulator and 13.6x AR(5)'s on the chapter's data, and W1 of the bond angle 36x the noise floor after
    10,000 sampled steps; with the angle forces 0.94x, 3.1x and 11x.
- ``b`` and ``w`` are fitted jointly by ridge regression on the training displacements (they are not the suite's
  AR(K), which has no forces to hold the chain together and so freezes or drifts).
- ``wall``: the fitted forces know nothing outside the distances the training frames reach, and a chain pushed
  there falls through the learned potential (measured: without it, beads overlap; with a wall only below the
  closest distances, the chain stretches out over thousands of steps, bonds 0.58 against 0.37). Per class, a
  little (:data:`WALL_MARGIN`) below the smallest distance of the training frames and (for separations 1, 2, 3)
  above the largest, a linear restoring force of stiffness :data:`WALL_STIFFNESS` (per frame squared) pushes the
  pair back, and a hard core (:data:`CORE_DEPTH`, :data:`CORE_STIFFNESS`) well below the closest distances stops
  what the soft wall lets through. Both are zero on every training frame, like the short-range pair potential
  (ZBL) NequIP adds for close approaches its data never shows.
- No network on top. Measured on the simulator (2,000 sampled steps from 8 starts): the chapter's gate network as
  a correction (trained on the one-step loss, its share starting at 0 as in the history model; pair forces only
  then) gained 2.6% in one-step validation MSE (5.66e-8 against 5.81e-8) and broke the thermostat's balance:
  given the displacements, it heated the chain to 1.6-2.1x the reference's motion and 2 of 8 starts broke;
  given the positions only, 1.14x and 2 of 8 broke. Without it: 0.8x, and none broke.

Sampled rollouts use a thermostat: the noise whose steady state under the fitted damping has the training
frames' mean squared displacement (fluctuation-dissipation, :func:`e3traj.runtime.thermostat_scale`), not the
one-step residual, which is smaller and leaves the chain too cold.

Every term is built from differences of positions with scalar weights and depends on the beads' labels only
through the chain separation: E(3)-equivariant and equivariant under the chain's reversal
(``permutation: chain_reversal``).
"""

from __future__ import annotations

import math

import torch

from ._history import register_fit

__all__ = [
    "PairForces",
    "AngleForces",
    "ChainForces",
    "Wall",
    "LangevinModel",
    "LangevinGraph",
    "distance_range",
    "CLASSES",
    "WALL_STIFFNESS",
    "WALL_MARGIN",
    "CORE_DEPTH",
    "CORE_STIFFNESS",
    "JOINT_RIDGE",
]

#: (smallest separation, largest or None, radial centres (start, stop, count) in units of L, width in units of L)
CLASSES = (
    (1, 1, (0.0, 3.0, 13), 0.25),
    (2, 2, (0.0, 4.0, 9), 0.5),
    (3, 3, (0.0, 5.0, 11), 0.5),
    (4, None, (0.0, 2.0, 9), 0.25),
)
#: Ridge strength of the joint fit, relative to the mean diagonal of the Gram matrix.
JOINT_RIDGE = 1e-6
#: The wall's stiffness per frame squared (about 3x the simulator's bonds, 85 x (3 x 0.002)^2; a pair at the
#: wall oscillates at 0.14 rad per frame, far below the 2 where a leapfrog step turns unstable), and where it
#: starts: this fraction outside the training frames' range. Measured on the simulator (10,000 sampled steps from
#: 4 starts): 0.1 and no margin, 100% stable but the validation MSE 12x worse (7.4e-7: validation frames reach
#: past the training range); 0.003, 75% stable; 0.01 with 5%, 100% stable and the validation MSE unchanged.
WALL_STIFFNESS = 0.01
WALL_MARGIN = 0.05
#: The hard core below ``CORE_DEPTH`` x the closest distance of each class in the training frames, stiffness per
#: frame squared (a pair in it oscillates at 1 rad per frame, still below 2). Measured on the simulator: the soft
#: wall alone let a non-bonded pair through in 1 of 16 starts (10,000 sampled steps); validation frames reach
#: 0.75x the training minimum (a core there costs 1.7x in one-step MSE) but not 0.6x (no cost).
CORE_DEPTH = 0.6
#: The most bytes of pair vectors :func:`distance_range` holds at once.
PAIR_BLOCK_BYTES = 1 << 27
#: Degree of the angle potentials, polynomials in cos(theta).
ANGLE_DEGREE = 4
CORE_STIFFNESS = 0.5


def _pairs(pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``u_ij = x_j - x_i`` ``(B, N, N, 3)`` and ``r_ij`` ``(B, N, N)`` (0 on the diagonal, never NaN)."""
    u = pos[:, None, :, :] - pos[:, :, None, :]
    return u, torch.sqrt((u * u).sum(-1) + 1e-30)


def _separation(n: int) -> torch.Tensor:
    i = torch.arange(n)
    return (i[:, None] - i[None, :]).abs()


def _class_masks(n: int) -> list[torch.Tensor]:
    """One boolean ``(N, N)`` mask per class of :data:`CLASSES`."""
    sep = _separation(n)
    return [(sep >= lo) & (sep <= (hi if hi is not None else n)) for lo, hi, _, _ in CLASSES]


class PairForces(torch.nn.Module):
    """Central pair-force features by chain separation (see the module docstring).

    Shapes: pos ``(B, N, 3)`` (``d``, the last displacement, is not used) -> ``(B, N, 3, n_features)``, in units
    of ``length_scale``.
    """

    def __init__(self, n_beads: int, length_scale: float) -> None:
        super().__init__()
        if not math.isfinite(float(length_scale)) or float(length_scale) <= 0:
            raise ValueError(f"length_scale must be a finite number > 0, got {length_scale!r}")
        self.register_buffer("length_scale", torch.tensor(float(length_scale)))
        centres, widths, owner = [], [], []
        for c, (_, _, (start, stop, count), width) in enumerate(CLASSES):
            centres.append(torch.linspace(start, stop, count))
            widths.append(torch.full((count,), width))
            owner += [c] * count
        self.register_buffer("masks", torch.stack(_class_masks(n_beads)).float())  # (C, N, N)
        self.register_buffer("centres", torch.cat(centres))  # (F,)
        self.register_buffer("widths", torch.cat(widths))  # (F,)
        self.register_buffer("owner", torch.nn.functional.one_hot(torch.tensor(owner)).float().T)  # (C, F)

    @property
    def n_features(self) -> int:
        return int(self.centres.numel())

    def forward(self, pos: torch.Tensor, d: torch.Tensor | None = None) -> torch.Tensor:
        u, r = _pairs(pos / self.length_scale.to(pos.dtype))
        unit = u / (r[..., None] + 1e-12)
        phi = torch.exp(-(((r[..., None] - self.centres.to(pos.dtype)) / self.widths.to(pos.dtype)) ** 2))
        # each feature counts only the pairs of its own class: (B, N, N, F) * (N, N, F)
        mask = torch.einsum("cij,cf->ijf", self.masks.to(pos.dtype), self.owner.to(pos.dtype))
        return torch.einsum("bijk,bijf->bikf", unit, phi * mask)


def _cosines(pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``cos theta`` at each inner bead and its gradients with respect to the two bond vectors ``a`` (to the
    previous bead) and ``b`` (to the next). Shapes: pos ``(B, N, 3)`` -> ``(B, N - 2, 1)``, ``(B, N - 2, 3)`` x 2."""
    a = pos[:, :-2] - pos[:, 1:-1]
    b = pos[:, 2:] - pos[:, 1:-1]
    na = torch.sqrt((a * a).sum(-1, keepdim=True) + 1e-30)
    nb = torch.sqrt((b * b).sum(-1, keepdim=True) + 1e-30)
    c = (a * b).sum(-1, keepdim=True) / (na * nb)
    return c, b / (na * nb) - c * a / (na * na), a / (na * nb) - c * b / (nb * nb)


class AngleForces(torch.nn.Module):
    """Forces of bond-angle potentials: for m = 1..``degree``, ``F = -grad sum_i cos(theta_i)^m`` (theta_i the
    angle at inner bead i between its two bonds), times the length scale. Any potential polynomial in
    ``cos theta`` of that degree is a weighted sum of them (the simulator's cosine-harmonic angle is degree 2).

    Shapes: pos ``(B, N, 3)`` -> ``(B, N, 3, degree)``.
    """

    def __init__(self, length_scale: float, degree: int = ANGLE_DEGREE) -> None:
        super().__init__()
        self.degree = int(degree)
        self.register_buffer("length_scale", torch.tensor(float(length_scale)))

    @property
    def n_features(self) -> int:
        return self.degree

    def forward(self, pos: torch.Tensor) -> torch.Tensor:
        c, dc_da, dc_db = _cosines(pos)
        pad = torch.nn.functional.pad
        out = []
        for m in range(1, self.degree + 1):
            g = m * c ** (m - 1) * self.length_scale.to(pos.dtype)  # d(c^m)/dc, in units of the length scale
            f = pad(-g * dc_da, (0, 0, 0, 2)) + pad(-g * dc_db, (0, 0, 2, 0)) + pad(g * (dc_da + dc_db), (0, 0, 1, 1))
            out.append(f)
        return torch.stack(out, dim=-1)


class ChainForces(torch.nn.Module):
    """The model's force features: :class:`PairForces` then :class:`AngleForces`.

    Shapes: pos ``(B, N, 3)`` -> ``(B, N, 3, n_features)``.
    """

    def __init__(self, n_beads: int, length_scale: float) -> None:
        super().__init__()
        self.pairs = PairForces(n_beads, length_scale)
        self.angles = AngleForces(length_scale)

    @property
    def n_features(self) -> int:
        return self.pairs.n_features + self.angles.n_features

    def forward(self, pos: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.pairs(pos), self.angles(pos)], dim=-1)


class Wall(torch.nn.Module):
    """Linear restoring forces outside the distances the training frames reach, per class of chain separation
    (see the module docstring): below ``low[c]`` the pair is pushed apart, above ``high[c]`` pulled together,
    and below ``core[c]`` a core of stiffness ``core_stiffness`` pushes it apart too.

    ``low``, ``core``: one distance per class of :data:`CLASSES`; ``high``: one per bonded class (separations 1,
    2, 3; the non-bonded class has no upper wall). Position units.
    Shapes: pos ``(B, N, 3)`` -> ``(B, N, 3)`` (a displacement per frame).
    """

    def __init__(
        self,
        n_beads: int,
        low,
        high,
        core=None,
        stiffness: float = WALL_STIFFNESS,
        core_stiffness: float = CORE_STIFFNESS,
    ) -> None:
        super().__init__()
        low, high = [float(v) for v in low], [float(v) for v in high]
        core = [0.0] * len(CLASSES) if core is None else [float(v) for v in core]
        if len(low) != len(CLASSES) or len(core) != len(CLASSES) or len(high) != len(CLASSES) - 1:
            raise ValueError(
                f"wall: {len(low)} lower / {len(core)} core / {len(high)} upper distances; expected 4 / 4 / 3"
            )
        values = [("low", v) for v in low] + [("high", v) for v in high] + [("core", v) for v in core]
        for name, value in values + [("stiffness", stiffness), ("core_stiffness", core_stiffness)]:
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"wall {name} must be a finite number >= 0, got {value!r}")
        r_low, r_core = torch.zeros(n_beads, n_beads), torch.zeros(n_beads, n_beads)
        r_high = torch.full((n_beads, n_beads), 1e30)  # no inf in the graph
        for mask, lo, hi, co in zip(_class_masks(n_beads), low, high + [1e30], core):
            r_low, r_high, r_core = (
                torch.where(mask, lo, r_low),
                torch.where(mask, hi, r_high),
                torch.where(mask, co, r_core),
            )
        self.register_buffer("r_low", r_low)  # (N, N), 0 on the diagonal
        self.register_buffer("r_high", r_high)
        self.register_buffer("r_core", r_core)
        self.register_buffer("stiffness", torch.tensor(float(stiffness)))
        self.register_buffer("core_stiffness", torch.tensor(float(core_stiffness)))

    def forward(self, pos: torch.Tensor) -> torch.Tensor:
        u, r = _pairs(pos)
        out = torch.clamp(self.r_low.to(pos.dtype) - r, min=0.0) - torch.clamp(r - self.r_high.to(pos.dtype), min=0.0)
        out = self.stiffness.to(pos.dtype) * out
        out = out + self.core_stiffness.to(pos.dtype) * torch.clamp(self.r_core.to(pos.dtype) - r, min=0.0)
        return -torch.einsum("bijk,bij->bik", u, out / (r + 1e-12))


class LangevinModel(torch.nn.Module):
    """``F(pos) + wall(pos)``: the correction to the fitted damping ``x_t + sum_j b_j d_j`` (see the module
    docstring). Everything is fitted in closed form; nothing is trained by gradient descent.

    Buffers: ``ar_coefficients`` ``(H,)`` (float64, the damping ``b``, read by export and the next-frame rule),
    ``head_weights`` ``(F,)`` (the pair-force weights ``w``), ``scale`` (the RMS training correction, for the
    reports), and the wall's ``r_low``, ``r_high`` and ``stiffness``.

    The graph's only input is the positions: the host applies the damping from the frames before (the output is
    an ``ar_correction`` with ``model.ar_coefficients``).

    Shapes: pos ``(B, N, 3)`` -> ``(B, N, 3)``.
    """

    def __init__(
        self,
        n_beads: int,
        *,
        history: int,
        length_scale: float,
        scale: float = 1.0,
        ar_coefficients=None,
        head_weights=None,
        wall_low=(0.0,) * 4,
        wall_high=(1e30,) * 3,
        wall_core=None,
    ) -> None:
        super().__init__()
        if isinstance(history, bool) or not isinstance(history, int) or history < 1:
            raise ValueError(f"history must be an integer >= 1 (previous displacements), got {history!r}")
        if not math.isfinite(float(scale)) or float(scale) <= 0:
            raise ValueError(f"scale must be a finite number > 0, got {scale!r}")
        self.history = history
        self.features = ChainForces(n_beads, length_scale)
        self.wall = Wall(n_beads, wall_low, wall_high, wall_core)
        register_fit(self, history, self.features.n_features, ar_coefficients, head_weights)
        self.register_buffer("scale", torch.tensor(float(scale)))

    def forward(self, pos: torch.Tensor) -> torch.Tensor:
        return self.features(pos) @ self.head_weights.to(pos.dtype) + self.wall(pos)

    def graph_form(self) -> LangevinGraph:
        """The same function with the fitted weights folded in: what export writes (:class:`LangevinGraph`)."""
        return LangevinGraph(self)


class LangevinGraph(torch.nn.Module):
    """:class:`LangevinModel`'s function in fewer, cheaper operations, for export (the parity gate compares it with
    the model): the pair vectors once for forces and walls; per pair only its own class's radial basis (13 values
    instead of the 42 of every class), weighted by the fitted ``w`` and summed into one scalar per pair; the walls
    added to that scalar; one contraction with the pair vectors; and the angle forces through one polynomial
    ``G(c) = L sum_m m w_m c^(m-1)`` instead of a force per degree. Equal to the model up to rounding
    (tests/train/test_langevin.py). Its buffers have the dtype of the model it was built from, and the positions
    must have that dtype too (export: float32).

    Shapes: pos ``(B, N, 3)`` -> ``(B, N, 3)``.
    """

    def __init__(self, model: LangevinModel) -> None:
        super().__init__()
        pairs, w = model.features.pairs, model.head_weights.detach().double()
        dtype = model.head_weights.dtype  # the model's (float32 for export): folded in float64, rounded once
        n = pairs.masks.shape[-1]
        counts = [int((pairs.owner[c] > 0).sum()) for c in range(len(CLASSES))]
        k = max(counts)
        centre = torch.zeros(n, n, k, dtype=torch.float64)
        inv_width = torch.ones(n, n, k, dtype=torch.float64)
        weight = torch.zeros(n, n, k, dtype=torch.float64)
        first = 0
        for c, count in enumerate(counts):
            mask = pairs.masks[c].bool()
            cols = slice(first, first + count)
            centre[mask, :count] = pairs.centres[cols].double()
            inv_width[mask, :count] = 1.0 / pairs.widths[cols].double()
            weight[mask, :count] = w[cols]
            first += count
        self.register_buffer("centre", centre.to(dtype))  # (N, N, K): the pair's own class's basis, 0 weights padded
        self.register_buffer("inv_width", inv_width.to(dtype))
        self.register_buffer("weight", weight.to(dtype))
        self.register_buffer("length_scale", pairs.length_scale.clone())
        wall = model.wall
        for name in ("r_low", "r_high", "r_core", "stiffness", "core_stiffness"):
            self.register_buffer(name, getattr(wall, name).clone())
        deg = model.features.angles.degree
        wa = w[first : first + deg]
        # G(c) = L sum_m m w_m c^(m-1), Horner's coefficients from the highest power down
        self.register_buffer("angle_poly", (torch.arange(1, deg + 1, dtype=torch.float64) * wa).flip(0).to(dtype))

    def forward(self, pos: torch.Tensor) -> torch.Tensor:
        u = pos[:, None, :, :] - pos[:, :, None, :]  # (B, N, N, 3): u_ij = x_j - x_i
        r = torch.sqrt((u * u).sum(-1) + 1e-30)  # (B, N, N)
        z = (r[..., None] / self.length_scale - self.centre) * self.inv_width
        g = (torch.exp(-(z * z)) * self.weight).sum(-1)  # the pair force's size, position units
        s = self.stiffness * (torch.clamp(self.r_low - r, min=0.0) - torch.clamp(r - self.r_high, min=0.0))
        s = s + self.core_stiffness * torch.clamp(self.r_core - r, min=0.0)
        # the model's own denominators: the learned term's in units of L (u/L over r/L + 1e-12), the wall's in
        # position units, so that near-coincident beads get the same forces too
        pair = torch.einsum("bijk,bij->bik", u, g / (r + 1e-12 * self.length_scale) - s / (r + 1e-12))
        c, dc_da, dc_db = _cosines(pos)
        g_angle = self.angle_poly[0]
        for coef in self.angle_poly[1:]:
            g_angle = g_angle * c + coef
        g_angle = g_angle * self.length_scale
        fa, fb = -g_angle * dc_da, -g_angle * dc_db
        pad = torch.nn.functional.pad
        return pair + pad(fa, (0, 0, 0, 2)) + pad(fb, (0, 0, 2, 0)) - pad(fa + fb, (0, 0, 1, 1))


def distance_range(frames, margin: float = WALL_MARGIN) -> dict[str, list[float]]:
    """The wall's distances from ``frames`` ``(T, N, 3)``, per class of :data:`CLASSES`: ``wall_low``, the
    smallest distance times ``1 - margin``; ``wall_core``, the smallest times :data:`CORE_DEPTH`; and for the
    bonded classes (separations 1, 2, 3) ``wall_high``, the largest times ``1 + margin``."""
    frames = torch.as_tensor(frames, dtype=torch.float64)
    masks = _class_masks(frames.shape[1])
    block = max(1, PAIR_BLOCK_BYTES // (8 * 3 * frames.shape[1] ** 2))  # pair vectors of at most 128 MB at once
    lo_hi = [(math.inf, -math.inf)] * len(masks)
    for start in range(0, len(frames), block):
        _, r = _pairs(frames[start : start + block])
        lo_hi = [
            (min(a, float(r[:, m].min())), max(b, float(r[:, m].max()))) if bool(m.any()) else (a, b)
            for (a, b), m in zip(lo_hi, masks)
        ]
    # a short chain has no pair in the far classes (N = 3: none 3 apart): no wall there
    least = [a if math.isfinite(a) else 0.0 for a, _ in lo_hi]
    most = [b * (1 + margin) if math.isfinite(b) else 1e30 for _, b in lo_hi[:-1]]
    return {
        "wall_low": [v * (1 - margin) for v in least],
        "wall_high": most,
        "wall_core": [v * CORE_DEPTH for v in least],
    }
