"""Host commands: ``e3traj check``, ``inspect`` and ``pack`` (numpy, onnxruntime and click only; ``rollout`` is in
:mod:`e3traj.runtime.cli._rollout`)."""

from __future__ import annotations

import json
from pathlib import Path

import click
import numpy as np

from .._errors import CheckFailed, UsageError, one_line
from ._options import MAX_THREADS, MAX_TRIALS, positive, threads_option

__all__ = ["check", "inspect", "pack"]

_BUNDLE_ARG = click.argument("bundle", type=click.Path(path_type=Path))


@click.command()
@_BUNDLE_ARG
@click.option("--trials", default=3, show_default=True, type=int, help="Random draws per symmetry case.")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the random transformations.")
@click.option("--tolerance", default=1e-4, show_default=True, type=float, help="Largest relative error that passes.")
@threads_option
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def check(bundle, trials, seed, tolerance, threads, as_json):
    """Check BUNDLE's equivariance (rotations, inversion, mirror, translation, bead permutation, planarity)
    on its example frames and re-run its example against the stored reference outputs.

    Exits 0 when every case passes, 4 otherwise. A bundle whose manifest says equivariant: false (the
    baseline) is expected to FAIL.
    """
    from .._bundle import Bundle
    from .._equivariance import check_bundle

    positive("--trials", trials, maximum=MAX_TRIALS)
    if not (np.isfinite(tolerance) and tolerance >= 0):
        raise UsageError(f"--tolerance: got {tolerance}; pass a non-negative number")
    positive("--threads", threads, maximum=MAX_THREADS)
    with Bundle.open(bundle, threads=threads) as b:
        report = check_bundle(b, trials=trials, seed=seed, tolerance=tolerance)
        kind, equivariant, sha = b.kind, b.equivariant, b.sha256
    if as_json:
        data = report.to_dict()
        data.update({"bundle": str(bundle), "bundle_sha256": sha, "kind": kind, "equivariant": equivariant})
        click.echo(json.dumps(data, indent=2))
    else:
        click.echo(one_line(f"bundle {bundle} (kind {kind}, sha256 {sha[:12]}...)"))
        click.echo("\n".join(one_line(line) for line in report.table().splitlines()))
        if not equivariant:
            click.echo(
                f"note: this {kind} model is not equivariant by design (manifest model.equivariant: false); "
                "FAIL rows are expected for it"
            )
    if not report.passed:
        expected = " (expected for this non-equivariant model)" if not equivariant else ""
        raise CheckFailed(f"{bundle}: check failed for {', '.join(report.failed)}{expected}")


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True)
    return str(value)


def _section(title: str, data) -> list[str]:
    if not isinstance(data, dict) or not data:
        return []
    lines = [f"{title}:"]
    for key in sorted(data):
        lines.append(f"  {key:<24} {_fmt(data[key])}")
    return lines


def _io_line(spec: dict) -> str:
    shape = ", ".join(str(s) for s in spec.get("shape", []))
    return f"  {spec.get('name', '?'):<24} {spec.get('dtype', '?')} ({shape})  meaning {spec.get('meaning', '?')}"


@click.command()
@_BUNDLE_ARG
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON.")
def inspect(bundle, as_json):
    """Verify BUNDLE's files against its manifest and show what the model is and how it was made."""
    from .._verify import _ort_version, verify_bundle

    manifest = verify_bundle(bundle)
    if as_json:
        click.echo(json.dumps(manifest, indent=2, sort_keys=True))
        return
    model = manifest.get("model", {}) if isinstance(manifest.get("model"), dict) else {}
    onnx = manifest["onnx"]
    lines = [
        f"bundle      {bundle}",
        f"format      {manifest['format']} v{manifest['format_version']} "
        f"(e3traj {manifest.get('e3traj_version', '?')}, created {manifest.get('created_utc', '?')})",
        f"model       kind {model.get('kind', '?')}, equivariant {model.get('equivariant', '?')}, "
        f"dtype {model.get('dtype', '?')}, nodes {model.get('num_nodes', '?')}, "
        f"target_scale {_fmt(model.get('target_scale', '?'))}",
        f"onnx        {onnx['file']} opset {onnx.get('opset', '?')}, IR {onnx.get('ir_version', '?')}, "
        f"needs onnxruntime >= {onnx.get('min_onnxruntime', '?')} (this host: {_ort_version()})",
        *(
            [
                f"single      {single['file']} (batch 1, {single.get('nodes', '?')} nodes): single-start rollouts "
                "run it, everything else the graph above"
            ]
            if isinstance(single := onnx.get("single_frame"), dict)
            else []
        ),
        f"example     {manifest['example']['file']} (atol {manifest['example'].get('atol', 1e-5):g})",
        *_history_lines(model),
        "inputs:",
        *[_io_line(s) for s in manifest["inputs"]],
        "outputs:",
        *[_io_line(s) for s in manifest["outputs"]],
    ]
    lines += _section("hyperparameters", model.get("hyperparameters"))
    training = manifest.get("training") if isinstance(manifest.get("training"), dict) else {}
    summary = {k: v for k, v in training.items() if k not in ("metrics", "history")}
    if isinstance(training.get("history"), list) and training["history"]:
        summary["history"] = f"{len(training['history'])} epochs recorded (e3traj plot training)"
    lines += _section("training", summary)
    lines += _section("training metrics", training.get("metrics"))
    lines += _section("versions", manifest.get("versions"))
    lines += _section("verification", manifest.get("verification"))
    lines.append("files:")
    total = 0
    for name, entry in sorted(manifest["files"].items()):
        total += entry["size"]
        lines.append(f"  {name:<24} {entry['size']:>12,d} bytes  sha256 {entry['sha256'][:16]}...")
    lines.append(f"verified    {len(manifest['files'])} file(s), {total:,d} bytes: sizes and sha256 match the manifest")
    click.echo("\n".join(one_line(line) for line in lines))  # names from the file system and the manifest


def _history_lines(model: dict) -> list[str]:
    """What a step needs and promises: the AR window and its coefficients, and the relabellings it commutes with."""
    lines = []
    coefs = model.get("ar_coefficients")
    if isinstance(coefs, list) and coefs:
        k = len(coefs) + 1
        c = [1 + coefs[0]] + [coefs[i] - coefs[i - 1] for i in range(1, len(coefs))] + [-coefs[-1]]
        lines.append(
            f"history     {k} frames (the current one and {k - 1} before); the output corrects AR({k}): "
            f"x_t + sum_j b_j (x_(t-j+1) - x_(t-j)), b = [{', '.join(f'{v:.6g}' for v in coefs)}] "
            f"(= sum_i c_i x_(t-i), c = [{', '.join(f'{v:.6g}' for v in c)}])"
        )
    noise = model.get("noise_scale")
    if isinstance(noise, int | float) and not isinstance(noise, bool):
        why = {
            "thermostat": "a thermostat: the noise whose steady state under the fitted damping has the training "
            "frames' motion",
        }.get(model.get("noise_rule"), "the RMS one-step training residual")
        lines.append(f"sampling    noise_scale {noise:.4g} per coordinate ({why}; rollout --noise fitted)")
    perm = model.get("permutation", "any")
    lines.append(
        "symmetry    E(3) and any relabelling of the beads"
        if perm == "any"
        else "symmetry    E(3) and the chain's reversal (the model knows the bonds: no other relabelling)"
    )
    return lines if model.get("equivariant", True) else lines[:-1]


@click.command()
@_BUNDLE_ARG
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path), help="NAME.tar.gz")
@click.option("--force", is_flag=True, help="Replace an existing archive.")
def pack(bundle, output, force):
    """Verify the bundle folder BUNDLE and pack it into one .tar.gz (a single top-level folder) for shipping."""
    from .._pack import pack_bundle

    out = pack_bundle(bundle, output, force=force)
    click.echo(one_line(f"wrote {out} ({out.stat().st_size:,d} bytes)"))
