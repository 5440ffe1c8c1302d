"""``e3traj train`` and ``e3traj evaluate``: thin wrappers over :mod:`e3traj.train`."""

from __future__ import annotations

from pathlib import Path

import click

from e3traj.runtime import check_output_path, format_one_step, replacing, resolve_many
from e3traj.runtime.cli import DATA_HELP as _DATA_HELP
from e3traj.runtime.cli import make_evaluate

from ._kinds import KINDS

__all__ = ["train", "evaluate"]


@click.command()
@click.option(
    "--model",
    "kind",
    type=click.Choice(list(KINDS)),
    default="e3nn",
    show_default=True,
    help="; ".join(f"{k.name}: {k.help}" for k in KINDS.values()),
)
@click.option(
    "--data",
    multiple=True,
    default=("sim",),
    show_default=True,
    help=_DATA_HELP + " Repeat for several trajectories: pairs never cross a file, the last 20% of each validates.",
)
@click.option(
    "--val-data",
    multiple=True,
    help="Trajectories held out whole for validation (repeatable); the --data files then train whole.",
)
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Checkpoint to write (.pt).")
@click.option("--epochs", type=click.IntRange(min=1), default=200, show_default=True, help="Epoch budget.")
@click.option(
    "--max-time",
    type=click.FloatRange(min=0, min_open=True),
    default=120.0,
    show_default=True,
    help="Wall-time budget in seconds.",
)
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@click.option(
    "--lr",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Adam learning rate [default: 1e-3 e3nn, 3e-3 e3nn-velocity, 1e-2 baseline].",
)
@click.option(
    "--patience",
    type=click.IntRange(min=1),
    default=5,
    show_default=True,
    help="Early stopping: epochs without a better validation MSE.",
)
@click.option(
    "--history",
    type=click.IntRange(min=2, max=8),
    default=None,
    help="e3nn-history, langevin: frames in the window (K), i.e. AR(K) and K-1 previous displacements "
    "[default: e3nn-history the AR order the predictor suite chooses on validation; langevin 2].",
)
@click.option(
    "--unroll",
    type=click.IntRange(min=1, max=16),
    default=1,
    show_default=True,
    help="e3nn-history: autoregressive steps in the loss (1: the one-step loss).",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--threads", type=click.IntRange(min=1), default=None, help="torch threads [default: torch's].")
@click.option("--irreps-hidden", default=None, help="e3nn hidden irreps [default: 5x0e + 5x0o + 5x1e + 5x1o].")
@click.option(
    "--layers",
    type=click.IntRange(min=1),
    default=None,
    help="e3nn gate layers [default: 3; e3nn-history 2].",
)
@click.option("--lmax", type=click.IntRange(min=1), default=None, help="Spherical harmonics degree [default: 3].")
@click.option("--max-radius", type=click.FloatRange(min=0, min_open=True), default=None, help="Cutoff [default: 3.5].")
@click.option("--radial-neurons", type=click.IntRange(min=1), default=None, help="Radial MLP width [default: 128].")
@click.option(
    "--resume",
    "resume_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="Continue from a checkpoint (same model and data); --epochs counts from its start.",
)
@click.option(
    "--beads",
    type=click.IntRange(min=3, max=1024),
    default=None,
    help="Beads per frame: what --data sim simulates, and what a file must hold [default: the data's; sim 12].",
)
@click.option("--force", is_flag=True, help="Replace an existing checkpoint.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def train(
    kind,
    data,
    val_data,
    output,
    epochs,
    max_time,
    batch_size,
    lr,
    patience,
    history,
    unroll,
    seed,
    threads,
    irreps_hidden,
    layers,
    lmax,
    max_radius,
    radial_neurons,
    resume_path,
    beads,
    force,
    quiet,
):
    """Train a model of one kind (--model) on the chapter's 80:20 split.

    Prints the best validation MSE next to the predictor suite (persistence, constant velocity, constant
    acceleration, the fitted AR(k)) and the ratio to the best of them.
    """
    from ._checkpoint import load_checkpoint
    from ._train import TrainConfig, train_model

    inputs = [resume_path] + [d for d in (*data, *val_data) if d not in ("sim", "dmol")]
    out = check_output_path(output, inputs, force=force)  # resuming writes a new file: -o must not exist
    overrides = {
        k: v
        for k, v in {
            "irreps_hidden": irreps_hidden,
            "layers": layers,
            "lmax": lmax,
            "max_radius": max_radius,
            "radial_neurons": radial_neurons,
        }.items()
        if v is not None
    }
    if not KINDS[kind].e3nn and overrides:
        raise click.UsageError(f"e3nn options ({', '.join(overrides)}) do not apply to --model {kind}")
    resume = load_checkpoint(resume_path) if resume_path else None
    cfg = TrainConfig(
        model=kind,
        epochs=epochs,
        max_time=max_time,
        batch_size=batch_size,
        lr=lr,
        patience=patience,
        seed=seed,
        threads=threads,
        history=history,
        unroll=unroll,
        e3nn=overrides,
    )
    if resume is not None and resume.get("config"):
        cfg.e3nn = {**resume["config"], **overrides}
    if resume is not None and KINDS[kind].window:
        cfg.history = resume.get("train", {}).get("history") or history
    if resume is not None and beads is None:
        from ._checkpoint import checkpoint_n_beads

        beads = checkpoint_n_beads(resume)
    src = resolve_many(data, val_specs=val_data, n_beads=beads)
    with replacing(force):  # no-clobber holds at the checkpoint's final rename too
        result = train_model(src, cfg, output=out, resume=resume, progress=not quiet)
    if result.path is None:  # a rank other than 0 of a distributed run: rank 0 reports and writes
        return
    m = result.checkpoint["metrics"]
    click.echo(f"stopped: {result.stopped_because}; best epoch {m['best_epoch']} after {m['train_seconds']:.1f} s")
    click.echo(format_one_step(m))
    click.echo(f"wrote {out}")


def _score_checkpoint(path: Path, data, n_starts: int) -> dict:
    from ._checkpoint import load_checkpoint
    from ._train import evaluate_checkpoint

    ckpt = load_checkpoint(path)
    report = evaluate_checkpoint(ckpt, data, n_starts=n_starts)
    report["model"] = {"path": str(path), "kind": ckpt["kind"]}
    report["data"] = {"source": data.source, "sha256": data.sha256}
    return report


def _checkpoint_beads(path: Path) -> int:
    from ._checkpoint import checkpoint_n_beads, load_checkpoint

    return checkpoint_n_beads(load_checkpoint(path))


#: the runtime's evaluate command (bundles), able to score checkpoints too
evaluate = make_evaluate(_score_checkpoint, _checkpoint_beads)
