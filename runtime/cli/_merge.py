"""``e3traj merge``: join the shards of one ``rollout --shard`` run into the file one run writes (a thin wrapper
over :func:`e3traj.runtime._shards.merge_rollouts`)."""

from __future__ import annotations

from pathlib import Path

import click

from .._errors import RolloutIncomplete, UsageError, one_line
from .._io import atomic_output, check_output_path

__all__ = ["merge"]


@click.command()
@click.argument("shards", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path), help="Merged .npz.")
@click.option("--force", is_flag=True, help="Replace an existing output file.")
def merge(shards, output, force):
    """Merge the SHARDS of one 'rollout --shard I/N' run into OUTPUT, bit for bit the file one run would write.

    The shards must come from one run (same bundle, data, starts, steps and noise) and hold every shard once;
    anything else is refused with one line. A stopped rollout merges as one run stops: every start keeps the
    frames before the first failing step (exit 5).
    """
    from .._rollout import write_rollout_file
    from .._shards import merge_rollouts

    if len(set(p.resolve() for p in shards)) != len(shards):
        raise UsageError("merge: a shard file is named twice; pass each once")
    check_output_path(output, list(shards), force=force)
    result, fields = merge_rollouts(shards)
    with atomic_output(output, suffix=".tmp", replace=force) as tmp:
        write_rollout_file(tmp, result, **fields)
    if result.interrupted:
        raise RolloutIncomplete(
            f"merged {len(shards)} shards into {output}: a shard was interrupted after step {result.steps_done} of "
            f"{result.steps_requested}; every start keeps its {result.traj.shape[0]} kept frames (complete=False, "
            "interrupted=True)"
        )
    if not result.complete:
        raise RolloutIncomplete(
            f"merged {len(shards)} shards into {output}: the run stopped at step {result.failed_step} "
            f"of {result.steps_requested}; every start keeps its {result.traj.shape[0]} kept frames before it "
            "(complete=False)"
        )
    click.echo(one_line(f"merged {len(shards)} shards into {output}: traj {tuple(result.traj.shape)}"))
