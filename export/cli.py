"""``e3traj export``: a thin wrapper over :func:`e3traj.export.export_checkpoint`."""

from __future__ import annotations

import click

__all__ = ["export"]


@click.command()
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False), help="Bundle directory to write.")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["onnx", "torchscript", "both"]),
    default="onnx",
    show_default=True,
    help="torchscript/both add model.torchscript.pt for dev machines (hosts never load it); ONNX is always written.",
)
@click.option("--opset", type=click.IntRange(17, 21), default=18, show_default=True)
@click.option(
    "--exporter",
    type=click.Choice(["auto", "torchscript", "dynamo"]),
    default="auto",
    show_default=True,
    help="torch.onnx exporter; auto tries the fast one first and keeps whichever matches PyTorch.",
)
@click.option(
    "--tolerance",
    type=click.FloatRange(min=0, min_open=True),
    default=1e-5,
    show_default=True,
    help="Max abs parity error exported vs eager.",
)
@click.option(
    "--radial",
    type=click.Choice(["table", "mlp"]),
    default="table",
    show_default=True,
    help="e3nn models: radial MLPs as a cubic table of the edge length (faster; error <= 1e-6 of their range, "
    "recorded in the manifest) or as exported MatMuls.",
)
@click.option(
    "--single-frame/--no-single-frame",
    default=True,
    show_default=True,
    help="e3nn models with the radial table: also write model_single.onnx, the same function for one frame in "
    "fewer operations, which hosts run for single-start rollouts (parity- and equivariance-checked too).",
)
@click.option("--force", is_flag=True, help="Replace an existing bundle (only once the new one is complete).")
def export(checkpoint, output, fmt, opset, exporter, tolerance, radial, single_frame, force):
    """Export CHECKPOINT to a verified bundle (ONNX over the fixed 12-node graph + manifest + example).

    Refuses to write anything when the exported model differs from PyTorch by more than --tolerance, or when
    an e3nn model fails the equivariance check.
    """
    from ._export import ExportSettings, export_checkpoint

    formats = ("onnx",) if fmt == "onnx" else ("onnx", "torchscript")
    settings = ExportSettings(
        formats=formats,
        opset=opset,
        exporter=exporter,
        parity_tol=tolerance,
        radial=radial,
        single_frame=single_frame,
        force=force,
    )
    manifest = export_checkpoint(checkpoint, output, settings, log=lambda m: click.echo(m, err=True))
    v = manifest["verification"]
    eq = v.get("equivariance", {})
    click.echo(
        f"{manifest['model']['kind']} bundle {output}: parity {v['parity_max_abs']:.3g} "
        f"({manifest['onnx']['exporter']}, {manifest['onnx']['nodes']} nodes), "
        f"equivariance {'PASS' if eq.get('passed') else 'FAIL'}"
        + (f"; single-frame graph {single['nodes']} nodes" if (single := manifest["onnx"].get("single_frame")) else "")
    )
