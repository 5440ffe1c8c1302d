"""``e3traj simulate``: the embedded bead-spring simulator."""

from __future__ import annotations

import click

from .._data import save_trajectory
from .._errors import one_line
from .._io import check_output_path

__all__ = ["simulate"]


@click.command()
@click.option("--frames", default=2048, show_default=True, type=click.IntRange(min=2), help="Frames to write.")
@click.option("--seed", default=0, show_default=True, type=int, help="Random seed (the run is deterministic for it).")
@click.option("--dim", default=2, show_default=True, type=click.Choice(["2", "3"]), help="2: planar like the chapter.")
@click.option(
    "--beads",
    default=12,
    show_default=True,
    type=click.IntRange(min=3, max=1024),
    help="Beads per chain (12: the chapter's).",
)
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Output .npz (key 'arr').")
@click.option("--force", is_flag=True, help="Replace an existing output file.")
def simulate(frames: int, seed: int, dim: str, beads: int, output: str, force: bool) -> None:
    """Simulate a bead-spring polymer of --beads beads (bonds, angles, Lennard-Jones, Langevin thermostat).

    The output is in the dmol-book format (.npz, key 'arr', shape (frames, beads, dim)), so every command
    takes it in place of the chapter's paths.npz.
    """
    from .._simulate import simulate as run

    out = check_output_path(output, force=force)
    traj = run(frames=frames, seed=seed, dim=int(dim), n_beads=beads)
    save_trajectory(out, traj, replace=force)
    click.echo(
        one_line(f"wrote {out}: {traj.shape[0]} frames of {traj.shape[1]} beads in {traj.shape[2]}D (seed {seed})")
    )
