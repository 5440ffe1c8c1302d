"""For export: the radial MLPs as a cubic Hermite table of the edge length, and e3nn's own work per frame."""

from __future__ import annotations

import torch

from ._config import E3nnConfig, build_reference_network, o3
from ._network import FixedGraphNetwork

__all__ = ["tabulate_radial", "reference_flops_per_frame"]


def tabulate_radial(
    model: torch.nn.Module, rtol: float = 1e-6, min_intervals: int = 64, max_intervals: int = 1024
) -> tuple[torch.nn.Module | None, dict]:
    """A frozen copy of ``model`` whose radial MLPs are replaced by a cubic Hermite table (for export).

    The radial MLPs are functions of the edge length alone, so on ``[0, max_radius]`` each output column is
    tabulated at ``intervals + 1`` equally spaced lengths with its exact derivative (forward-mode autodiff, float64)
    and evaluated as one cubic per interval by Horner's rule (four row Gathers, three Muls and Adds per pair)
    instead of the MLPs' MatMuls and SiLUs. Equivariance is untouched (the edge length is invariant).
    ``intervals`` doubles from ``min_intervals`` until the largest error, measured in float64 at 8 points inside
    every interval, is at most ``rtol`` times the largest output value (about float32's own rounding for
    ``rtol = 1e-6``).

    Args:
        model: a :class:`FixedGraphNetwork` or a module with one as ``.net`` (:class:`DisplacementModel`).
        rtol: relative error allowed, against the largest absolute MLP output on ``[0, max_radius]``.

    Returns:
        ``(copy, info)``; ``copy`` is None when no table up to ``max_intervals`` meets ``rtol`` (``info`` says why).
        ``info``: ``form`` (``"table"``/``"mlp"``), ``intervals``, ``max_abs_error``, ``max_abs_value``, ``rtol``.
    """
    import copy as _copy

    if not (isinstance(rtol, float | int) and not isinstance(rtol, bool) and 0 < rtol < 1):
        raise ValueError(f"rtol must be a number in (0, 1), got {rtol!r}")
    net = model if isinstance(model, FixedGraphNetwork) else getattr(model, "net", None)
    if not isinstance(net, FixedGraphNetwork):
        raise ValueError(f"tabulate_radial needs a FixedGraphNetwork or a model with one as .net, got {type(model)}")
    r_max = net.config.max_radius
    net64 = _copy.deepcopy(net).double()
    net64._radial_table = None
    with torch.no_grad():
        pres = net64._pre_matrices(torch.float64)

        def mlp(r: torch.Tensor) -> torch.Tensor:
            return net64._radial_mlp(r, pres)

        info: dict = {"form": "mlp", "rtol": float(rtol)}
        n_int = min_intervals
        while n_int <= max_intervals:
            grid = torch.linspace(0.0, r_max, n_int + 1, dtype=torch.float64)
            value, slope = torch.func.jvp(mlp, (grid,), (torch.ones_like(grid),))
            slope = slope * (r_max / n_int)  # d value / d f, f in [0, 1) across one interval
            v0, v1, d0, d1 = value[:-1], value[1:], slope[:-1], slope[1:]
            coef = torch.stack([v0, d0, 3 * (v1 - v0) - 2 * d0 - d1, 2 * (v0 - v1) + d0 + d1], dim=1)
            net64._radial_table = coef.reshape(n_int, -1)
            inner = (torch.arange(n_int, dtype=torch.float64)[:, None] + torch.arange(1, 9) / 9.0).reshape(-1)
            probe = inner * (r_max / n_int)
            err = float((net64._radial_from_table(probe) - mlp(probe)).abs().max())
            net64._radial_table = None
            scale = float(value.abs().max())
            info.update(intervals=n_int, max_abs_error=err, max_abs_value=scale)
            if err <= rtol * max(scale, 1e-30):
                break
            n_int *= 2
        else:
            info["why"] = f"no table up to {max_intervals} intervals reached rtol {rtol:g}"
            return None, info
    tabulated = _copy.deepcopy(model).eval()
    for p in tabulated.parameters():
        p.requires_grad_(False)  # the table is a snapshot of these weights: the copy is not for training
    target = tabulated if isinstance(tabulated, FixedGraphNetwork) else tabulated.net
    target._radial_table = coef.reshape(n_int, -1).to(next(net.parameters()).dtype)
    info["form"] = "table"
    return tabulated, info


def reference_flops_per_frame(config: E3nnConfig) -> float:
    """FLOPs torch's FlopCounterMode counts for e3nn's own ``Network`` on one frame whose ``n (n - 1)`` ordered
    pairs are all edges (the work the Performance issue measures a roofline by; it depends on the configuration
    and the number of edges only, not on the weights or the positions)."""
    from torch.utils.flop_counter import FlopCounterMode

    n = config.num_nodes
    t = torch.arange(n, dtype=torch.float64)
    pos = torch.stack([torch.cos(t), torch.sin(t), 0.3 * t], dim=1)  # a helix: no coincident beads
    pos = (pos - pos.mean(0)) * (0.8 * config.max_radius / float(torch.cdist(pos, pos).max()))
    data = {"pos": pos.to(torch.get_default_dtype())}
    if config.irreps_in is not None:
        data["x"] = torch.ones(n, o3.Irreps(config.irreps_in).dim)
    net = build_reference_network(config)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        net(data)
    return float(counter.get_total_flops())
