"""``e3traj bench``: a bundle's throughput and latency on this CPU, beside the machine's matmul roofline."""

from __future__ import annotations

import json
import re
from pathlib import Path

import click

from .._errors import UsageError, one_line
from ._options import MAX_THREADS, positive

__all__ = ["bench", "parse_int_list", "MAX_BATCH", "MAX_THREADS"]

#: Caps checked before anything is allocated: the largest batch (frames per call; 65,536 frames of the
#: 12-bead graph need about 0.5 GB of onnxruntime intermediates in 32-frame sub-batches), the most threads.
MAX_BATCH = 65536
_MAX_REPEATS = 1000
_MAX_SECONDS = 600.0
_MAX_ROLLOUT_STEPS = 1_000_000


def parse_int_list(option: str, text: str, maximum: int | None = None) -> list[int]:
    """Parse ``"1,64,256"`` into ``[1, 64, 256]``.

    Raises:
        UsageError: an item is not a positive integer (or over ``maximum``), or the list is empty.
    """
    items = [t.strip() for t in str(text).split(",") if t.strip()]
    if not items:
        raise UsageError(f"{option}: {text!r} is empty; pass comma-separated positive integers like 1,64,256")
    out = []
    for item in items:
        if not re.fullmatch(r"\d+", item) or int(item) < 1:
            raise UsageError(
                f"{option}: cannot read {item!r} in {text!r}; pass comma-separated positive integers like 1,64,256"
            )
        if maximum is not None and int(item) > maximum:
            raise UsageError(f"{option}: {item} is over the limit of {maximum}; pass a smaller value")
        out.append(int(item))
    return out


@click.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--batch-sizes", default="1,64,256,1024", show_default=True, help="Frames per predict call.")
@click.option("--threads", "threads_spec", default="1,2", show_default=True, help="Thread counts to compare.")
@click.option("--repeats", type=int, default=5, show_default=True, help="Timed repeats per setting (median).")
@click.option("--seconds", type=float, default=0.5, show_default=True, help="Time budget of one setting.")
@click.option("--rollout-steps", type=int, default=100, show_default=True, help="Steps of the B=1 rollout (0: skip).")
@click.option("--roofline-seconds", type=float, default=1.0, show_default=True, help="Time of the matmul roofline.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of the table.")
def bench(bundle, batch_sizes, threads_spec, repeats, seconds, rollout_steps, roofline_seconds, as_json):
    """Measure BUNDLE's throughput and latency on this CPU.

    Times Bundle.predict per thread count and batch size (median of repeats) and the rollout loop at B=1,
    and prints frames/s, latency and the fraction of this machine's single-thread numpy float32 matmul speed
    (the roofline) that the model's MatMul work reaches. Machines are noisy: compare rows of one run.
    """
    from .._bench import bench_bundle, bundle_size, machine_info
    from .._flops import matmul_roofline_detail
    from .._verify import verify_bundle

    sizes = parse_int_list("--batch-sizes", batch_sizes, MAX_BATCH)
    threads = parse_int_list("--threads", threads_spec, MAX_THREADS)
    positive("--repeats", repeats, maximum=_MAX_REPEATS)
    positive("--seconds", seconds, integer=False, maximum=_MAX_SECONDS)
    positive("--rollout-steps", rollout_steps, zero_ok=True, maximum=_MAX_ROLLOUT_STEPS)
    positive("--roofline-seconds", roofline_seconds, integer=False, maximum=_MAX_SECONDS)
    manifest = verify_bundle(bundle)
    roof = matmul_roofline_detail(seconds=roofline_seconds, threads=1)
    rows = bench_bundle(
        bundle,
        batch_sizes=sizes,
        threads=threads,
        repeats=repeats,
        seconds=seconds,
        rollout_steps=rollout_steps,
        roofline=roof["gflops"],
    )
    info = machine_info()
    size = bundle_size(bundle)
    flops = rows[0]["flops_per_frame"]
    scaling = _scaling(rows)
    if as_json:
        click.echo(
            json.dumps(
                {
                    "bundle": str(bundle),
                    "kind": manifest.get("model", {}).get("kind"),
                    "bundle_bytes": size,
                    "flops_per_frame": flops,
                    "reference_flops_per_frame": rows[0].get("reference_flops_per_frame"),
                    "roofline": roof,
                    "machine": info,
                    "scaling": scaling,
                    "rows": rows,
                },
                default=list,
            )
        )
        return
    from .._bench import format_rows

    shapes = ", ".join(f"{tuple(p['shape'])} {p['gflops']:.1f}" for p in roof["per_shape"])
    opens = ", ".join(dict.fromkeys(f"{r['open_s']:.3f} s ({r['threads']} thr)" for r in rows))
    load = " ".join(f"{v:g}" for v in info["load_average"]) if info["load_average"] else "?"
    n = manifest.get("model", {}).get("num_nodes", 12)
    kind = manifest.get("model", {}).get("kind", "?")
    click.echo(one_line(f"bundle    {bundle} ({kind}, {n} beads: {n * (n - 1)} edges, {size / 1024:.0f} KiB)"))
    click.echo(
        f"machine   {info['cpu']}, {info['cores']} CPUs, load {load}; onnxruntime {info['onnxruntime']}, "
        f"numpy {info['numpy']}"
    )
    click.echo(f"work      {flops / 1e6:.3f} MFLOP of MatMul per frame (counted from the graph)")
    ref = rows[0].get("reference_flops_per_frame")
    if ref is not None:
        click.echo(
            f"reference {ref / 1e6:.3f} MFLOP per frame: e3nn's own Network on the complete graph (from the manifest); "
            "column (e3nn) is the roofline fraction by this work"
        )
    click.echo(f"roofline  {roof['gflops']:.1f} GFLOP/s numpy float32 matmul, 1 thread; (M, K, N) GFLOP/s: {shapes}")
    click.echo(f"open      {opens} (median Bundle.open: verify + session)")
    click.echo(format_rows(rows))
    single = manifest.get("onnx", {}).get("single_frame")
    if single and any(r.get("graph") == "single-frame" for r in rows):
        click.echo(
            f"rollout   runs the single-frame graph ({single['file']}, {single.get('nodes', '?')} nodes); its "
            "work and roofline columns count the batched graph's MatMuls"
        )
    for line in scaling:
        click.echo(
            f"scaling   {line['threads']} threads vs 1 at B={line['batch']}: {line['ratio']:.2f}x "
            f"({line['frames_per_s']:.0f} vs {line['frames_per_s_1']:.0f} frames/s)"
        )


def _scaling(rows: list[dict]) -> list[dict]:
    """Frames/s at each thread count > 1 over 1 thread, at the largest batch."""
    pred = [r for r in rows if r["mode"] == "predict"]
    if not pred:
        return []
    big = max(r["batch"] for r in pred)
    one = [r for r in pred if r["batch"] == big and r["threads"] == 1]
    if not one:
        return []
    out = []
    for r in pred:
        if r["batch"] == big and r["threads"] > 1:
            out.append(
                {
                    "threads": r["threads"],
                    "batch": big,
                    "ratio": r["frames_per_s"] / one[0]["frames_per_s"],
                    "frames_per_s": r["frames_per_s"],
                    "frames_per_s_1": one[0]["frames_per_s"],
                }
            )
    return out
