"""Export a checkpoint to a bundle: ONNX (and TorchScript on request) over the fixed graph of its N beads.

For e3nn models the radial MLPs are exported as a cubic table of the edge length whose error is measured first
(:func:`e3traj.train.tabulate_radial`; ``radial="mlp"`` keeps them). Nothing is written unless every check
passes: exported vs eager parity on training and random frames, the ONNX graph's shape (no NonZero, weights
inside, ``onnx.checker`` full check), equivariance of the exported model through the runtime's own checker (e3nn
models), and a final re-open of the finished bundle with the runtime, the way a host will open it.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from e3traj.runtime import (
    Bundle,
    CheckFailed,
    InputError,
    UsageError,
    atomic_output_dir,
    check_equivariance,
    write_manifest,
)
from e3traj.runtime import contract as C
from e3traj.train import (
    KINDS,
    build_model,
    checkpoint_n_beads,
    load_checkpoint,
    reference_flops_per_frame,
    tabulate_radial,
)

from ._manifest import MIN_ONNXRUNTIME, _manifest
from ._onnx import _eager, _finish_onnx, _metadata_props, _parity, _quiet, _run, _session, _torch_export

__all__ = ["export_checkpoint", "ExportSettings", "DEFAULT_OPSET", "MIN_ONNXRUNTIME"]

DEFAULT_OPSET = 18
INPUT = C.POSITIONS
PREVIOUS = C.PREVIOUS_DISPLACEMENT
OUTPUT = C.OUTPUT_NAME


@dataclass
class ExportSettings:
    """Options of :func:`export_checkpoint`."""

    formats: tuple[str, ...] = ("onnx",)
    opset: int = DEFAULT_OPSET
    exporter: str = "auto"  # auto: the TorchScript-based exporter first (fast), dynamo if parity fails
    parity_tol: float = 1e-5
    equivariance_tol: float = 1e-4
    n_random: int = 16
    seed: int = 0
    force: bool = False
    radial: str = "table"  # e3nn kinds: the radial MLPs as a cubic table of the edge length ("mlp": as MatMuls)
    single_frame: bool = True  # e3nn kinds with the table, N <= 16: also the single-frame graph (one-start runs)
    radial_rtol: float = 1e-6

    def __post_init__(self) -> None:
        if self.exporter not in ("auto", "torchscript", "dynamo"):
            raise UsageError(f"exporter {self.exporter!r} is unknown; use auto, torchscript or dynamo")
        if self.radial not in ("table", "mlp"):
            raise UsageError(f"radial {self.radial!r} is unknown; use table or mlp")
        if (
            isinstance(self.radial_rtol, bool)
            or not isinstance(self.radial_rtol, int | float)
            or not (0 < self.radial_rtol < 1)
        ):
            raise UsageError(f"radial_rtol {self.radial_rtol!r} is not a number in (0, 1); the default is 1e-6")
        if not 17 <= self.opset <= 21:
            raise UsageError(f"opset {self.opset!r} is outside 17..21")


def _input_names(kind: str) -> list[str]:
    """The graph's inputs: the kind's input meanings, which are also their names."""
    return list(KINDS[kind].inputs)


def _example_inputs(ckpt: dict[str, Any], n_random: int, seed: int) -> dict[str, np.ndarray]:
    """Training frames carried by the checkpoint plus random frames around them (and, for the velocity model,
    the previous displacements). Shapes: each ``(F, N, 3)`` float32, N the checkpoint's beads per frame."""
    rng = np.random.default_rng(seed)
    n = checkpoint_n_beads(ckpt)
    sample = ckpt.get("sample_frames")
    if isinstance(sample, torch.Tensor) and sample.ndim == 3 and sample.shape[1:] == (n, 3):
        real = sample.double().numpy()
    else:
        real = np.zeros((0, n, 3))
    center = real.mean(axis=(0, 1)) if len(real) else np.zeros(3)
    spread = float(real.std()) if len(real) else 1.0
    rand = center + rng.normal(scale=max(spread, 0.3), size=(n_random, n, 3))
    # planar random frames too: the chapter's data is planar and the check verifies planar stays planar
    rand[: n_random // 2, :, 2] = center[2]
    out = {INPUT: np.concatenate([real, rand]).astype(np.float32)}
    if C.PREVIOUS_DISPLACEMENTS in KINDS[ckpt["kind"]].inputs:
        h = int(ckpt["spec"]["history"])
        past = ckpt.get("sample_past")
        if isinstance(past, torch.Tensor) and len(real) and past.shape[1] >= h:
            p = past.double().numpy()[:, past.shape[1] - h :]
            real_d = np.stack(C.past_displacements(real, p, h), axis=1)
        else:
            real_d = np.zeros((0, h, n, 3))
        step = float(ckpt.get("input_scale", 0.005))
        rand_d = rng.normal(scale=step, size=(n_random, h, n, 3))
        rand_d[: n_random // 2, ..., 2] = 0.0
        out[C.PREVIOUS_DISPLACEMENTS] = np.concatenate([real_d, rand_d]).astype(np.float32)
    if PREVIOUS in KINDS[ckpt["kind"]].inputs:
        prev = ckpt.get("sample_previous")
        real_v = real - prev.double().numpy() if isinstance(prev, torch.Tensor) and len(real) else np.zeros((0, n, 3))
        step = float(ckpt.get("input_scale", 0.005))
        rand_v = rng.normal(scale=step, size=(n_random, n, 3))
        rand_v[: n_random // 2, :, 2] = 0.0
        out[PREVIOUS] = np.concatenate([real_v, rand_v]).astype(np.float32)
    return out


def export_checkpoint(
    checkpoint: str | os.PathLike,
    output: str | os.PathLike,
    settings: ExportSettings | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Export ``checkpoint`` to the bundle directory ``output``; return the manifest.

    Raises:
        InputError: unreadable checkpoint or NaN/Inf weights.
        UsageError: ``output`` exists (without ``force``) or is the checkpoint itself.
        CheckFailed: parity or equivariance out of tolerance; nothing is written then.
    """
    s = settings or ExportSettings()
    say = log or (lambda msg: None)
    ckpt_path, out = Path(checkpoint), Path(output)
    if out.resolve() == ckpt_path.resolve():
        raise UsageError(f"{out}: the bundle path is the checkpoint itself; choose another output folder")
    if out.exists() and not s.force:
        raise UsageError(f"{out}: already exists; pass --force to replace it or choose another output folder")
    if not out.parent.is_dir() and str(out.parent):
        raise UsageError(f"{out}: folder {out.parent} does not exist; create it or choose another output folder")
    ckpt = load_checkpoint(ckpt_path)
    kind = ckpt["kind"]
    model = build_model(ckpt, name=str(ckpt_path))
    inputs = _example_inputs(ckpt, s.n_random, s.seed)
    names = _input_names(kind)
    trace_args = tuple(torch.from_numpy(inputs[n][:2]) for n in names)
    ref = _eager(model, inputs).astype(np.float64)  # the eager model with its MLPs: what every path must match
    n_frames = len(ref)
    if not np.all(np.isfinite(ref)):
        raise InputError(f"{ckpt_path}: the model gives non-finite outputs on training frames; retrain it")
    radial: dict[str, Any] | None = {"form": "mlp"} if KINDS[kind].e3nn else None
    if radial is not None and s.radial == "table":
        t0 = time.perf_counter()
        tabulated, radial = tabulate_radial(model, rtol=s.radial_rtol)
        if tabulated is not None:
            model = tabulated
            say(
                f"radial table: {radial['intervals']} intervals, max error {radial['max_abs_error']:.3g} "
                f"(largest value {radial['max_abs_value']:.3g}), {time.perf_counter() - t0:.1f} s"
            )
        else:
            say(f"radial table not used: {radial['why']}; the MLPs are exported")
    if callable(getattr(model, "graph_form", None)):  # the same function in fewer operations (langevin, history)
        model = model.graph_form()

    timings: dict[str, float] = {}
    with atomic_output_dir(out, force=s.force) as tmp:
        onnx_path = tmp / "model.onnx"
        tried: list[str] = []
        exporters = ["torchscript", "dynamo"] if s.exporter == "auto" else [s.exporter]
        parity = float("inf")
        used = None
        for name in exporters:
            t0 = time.perf_counter()
            with tempfile.TemporaryDirectory() as work:
                raw = Path(work) / "model.onnx"
                with torch.no_grad(), _quiet():
                    _torch_export(model, trace_args, raw, s.opset, dynamo=(name == "dynamo"), names=names)
                graph = _finish_onnx(raw, {})
                candidate = _session(raw)
                parity = _parity(lambda x, c=candidate: _run(c, x), inputs, ref)
                timings[f"export_{name}_s"] = time.perf_counter() - t0
                tried.append(f"{name}: parity {parity:.3g}")
                say(f"{name} exporter: {timings[f'export_{name}_s']:.1f} s, parity {parity:.3g}")
                if parity <= s.parity_tol:
                    os.replace(raw, onnx_path)
                    used = name
                    break
        if used is None:
            raise CheckFailed(
                f"{out}: no exporter matched PyTorch within {s.parity_tol:g} ({'; '.join(tried)}); bundle not written"
            )
        manifest = _manifest(ckpt, kind, graph, used, s, parity, n_frames)
        if radial is not None:
            manifest["onnx"]["radial"] = radial
            # e3nn's own Network's work per frame: hosts' `e3traj bench` gives the roofline fraction by it too
            manifest["model"]["reference_flops_per_frame"] = reference_flops_per_frame(model.net.config)
        _finish_onnx(onnx_path, _metadata_props(manifest))
        sess = _session(onnx_path)
        parity = _parity(lambda x: _run(sess, x), inputs, ref)
        if parity > s.parity_tol:
            raise CheckFailed(f"{out}: ONNX parity {parity:.3g} > {s.parity_tol:g} after adding metadata; not written")
        manifest["verification"]["parity_max_abs"] = parity

        report = _equivariance(lambda inp: _run(sess, inp), kind, names, inputs, s)
        manifest["verification"]["equivariance"] = report.to_dict()
        if KINDS[kind].equivariant and not report.passed:
            raise CheckFailed(f"{out}: the exported model is not equivariant:\n{report.table()}")
        say("equivariance PASS" if report.passed else f"equivariance FAIL (expected for the {kind}, not equivariant)")

        single = _single_frame(model, kind, names, inputs, ref, s, tmp, out, say) if s.single_frame and radial else None
        if single is not None:
            manifest["onnx"]["single_frame"], manifest["verification"]["single_frame"] = single

        if "torchscript" in s.formats:
            ts_path = tmp / "model.torchscript.pt"
            with torch.no_grad(), _quiet():
                traced = torch.jit.trace(model, trace_args, check_trace=False)
                buf = io.BytesIO()
                torch.jit.save(traced, buf)
                ts_path.write_bytes(buf.getvalue())
                loaded = torch.jit.load(str(ts_path))
            ts_parity = _parity(lambda x: _eager(loaded, x), inputs, ref)
            if ts_parity > s.parity_tol:
                raise CheckFailed(f"{out}: TorchScript parity {ts_parity:.3g} > {s.parity_tol:g}; bundle not written")
            manifest["torchscript"] = {"file": ts_path.name, "parity_max_abs": ts_parity}
            manifest["verification"]["torchscript_parity_max_abs"] = ts_parity

        np.savez(tmp / "example.npz", **inputs, **{OUTPUT: ref.astype(np.float32)})
        manifest["verification"]["timings"] = timings
        write_manifest(tmp, manifest)
        # open the finished bundle the way a host will, and re-check its example
        with Bundle.open(tmp) as bundle:
            bundle.recheck_example()
    say(f"wrote {out}")
    return json.loads((out / "manifest.json").read_text())


def _equivariance(run, kind: str, names, inputs: dict[str, np.ndarray], s: ExportSettings):
    """The runtime's equivariance check of ``run`` (an exported graph) on the example inputs, as the kind promises.

    Shapes: ``run(inputs) -> (B, N, 3)``; each input ``(B, N, 3)`` (``previous_displacements`` ``(B, H, N, 3)``)."""
    return check_equivariance(
        lambda inp: run(inp).astype(np.float64),
        {n: n for n in names},  # the graph's input names are the meanings
        KINDS[kind].output,
        {k: v.astype(np.float64) for k, v in inputs.items()},
        trials=3,
        seed=s.seed,
        tolerance=s.equivariance_tol,
        permutation=KINDS[kind].permutation,
    )


SINGLE_FILE = "model_single.onnx"
#: Largest N that gets a single-frame graph: its neighbour sums are dense (n, n (n - 1)) MatMuls, so its time grows
#: as n**3; against the batched graph at B = 1 it took 0.55x (N = 8), 0.72x (12), 0.81x (16), 1.06x (20), 1.32x (24)
SINGLE_FRAME_MAX_BEADS = 16


def _single_frame(
    model, kind: str, names, inputs, ref, s: ExportSettings, tmp: Path, out: Path, say
) -> tuple[dict, dict] | None:
    """Write the model's single-frame graph (batch 1, static shapes) as ``model_single.onnx``, gated as the
    batched graph is: parity on every example frame and the runtime's equivariance check. Returns its manifest
    entry and its verification record, or None for a model without a single-frame form (or with its MLPs).

    Raises:
        CheckFailed: parity or equivariance out of tolerance; nothing is written then.
    """
    form = getattr(model, "single_frame_form", None)
    net = getattr(model, "net", None)
    if not callable(form) or getattr(net, "_radial_table", None) is None:
        return None
    if net.n_nodes > SINGLE_FRAME_MAX_BEADS:
        say(
            f"single-frame graph not written: {net.n_nodes} beads > {SINGLE_FRAME_MAX_BEADS} "
            "(slower than the batched graph there)"
        )
        return None
    try:
        graph_module = form().eval()
    except NotImplementedError as exc:  # an activation it has no form for: the batched graph serves every call
        say(f"single-frame graph not written: {exc}")
        return None
    one = tuple(torch.from_numpy(inputs[n][:1]) for n in names)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as work:
        raw = Path(work) / SINGLE_FILE
        with torch.no_grad(), _quiet():
            _torch_export(graph_module, one, raw, s.opset, dynamo=False, names=names, dynamic_batch=False)
        graph = _finish_onnx(raw, {})
        sess = _session(raw)

        def run(batch: dict[str, np.ndarray]) -> np.ndarray:  # frame by frame: the graph takes batch 1
            count = len(next(iter(batch.values())))
            return np.concatenate([_run(sess, {k: v[i : i + 1] for k, v in batch.items()}) for i in range(count)])

        parity = _parity(run, inputs, ref)
        if parity > s.parity_tol:
            raise CheckFailed(
                f"{out}/{SINGLE_FILE}: single-frame parity {parity:.3g} > {s.parity_tol:g}; bundle not written"
            )
        report = _equivariance(run, kind, names, inputs, s)
        if not report.passed:
            raise CheckFailed(f"{out}/{SINGLE_FILE}: the single-frame graph is not equivariant:\n{report.table()}")
        os.replace(raw, tmp / SINGLE_FILE)
    took = time.perf_counter() - t0
    say(f"single-frame graph: {graph['nodes']} nodes, parity {parity:.3g}, equivariance PASS, {took:.1f} s")
    entry = {"file": SINGLE_FILE, "batch": 1, "opset": graph["opset"], "ir_version": graph["ir_version"]}
    entry.update(nodes=graph["nodes"], op_types=graph["op_types"])
    return entry, {"parity_max_abs": parity, "equivariance": report.to_dict()}
