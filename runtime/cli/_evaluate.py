"""``e3traj evaluate``: score a bundle (any host) or a checkpoint (with the train extra) against the predictor
suite. The train extra builds the same command with a checkpoint scorer (``e3traj.train.cli``)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import click

from .._errors import MissingExtra, one_line
from .._evaluate import evaluate_bundle, format_evaluation, is_bundle_path
from .._sources import DataSource, resolve_many

__all__ = ["evaluate", "make_evaluate"]

DATA_HELP = "sim (embedded simulator, 2048 frames, seed 0), dmol (the chapter's paths.npz) or a trajectory file."

#: ``score(checkpoint_path, data, n_starts) -> report`` for checkpoints; None on a host without the train extra
CheckpointScorer = Callable[[Path, DataSource, int], dict]
#: ``beads(checkpoint_path) -> N``: the beads per frame a checkpoint was trained for
CheckpointBeads = Callable[[Path], int]


def make_evaluate(
    score_checkpoint: CheckpointScorer | None, checkpoint_beads: CheckpointBeads | None = None
) -> click.Command:
    """Build the ``evaluate`` command; checkpoints are scored by ``score_checkpoint`` when given (``--data sim``
    simulates the model's beads per frame: the bundle's, or ``checkpoint_beads``' for a checkpoint)."""

    @click.command(name="evaluate")
    @click.argument("model_path", metavar="MODEL", type=click.Path(exists=False))
    @click.option(
        "--data",
        multiple=True,
        default=("sim",),
        show_default=True,
        help=DATA_HELP + " Repeatable (the last 20% of each).",
    )
    @click.option(
        "--starts",
        type=click.IntRange(min=1),
        default=8,
        show_default=True,
        help="Starting frames in the validation part for k-step rollouts.",
    )
    @click.option("--json", "as_json", is_flag=True, help="Print JSON for machines.")
    def evaluate(model_path, data, starts, as_json):
        """Score MODEL (a bundle directory or .tar.gz, or a checkpoint) on the validation part of DATA.

        One-step validation MSE and the RMSD of k-step rollouts (k = 1, 10, 100) of the model and of the
        predictor suite: persistence, constant velocity, constant acceleration and the linear extrapolation
        AR(k) fitted on the training part (k chosen on validation from 1..8). The best of the suite is named
        and the model's ratio to it printed. Bundles need only the base install; checkpoints need the train
        extra.
        """
        p = Path(model_path)
        if not is_bundle_path(p) and score_checkpoint is None:
            raise MissingExtra(
                f"{p}: scoring a checkpoint needs the train extra: pip install 'e3traj[train]' "
                "(or export it and evaluate the bundle)"
            )
        if is_bundle_path(p):
            from .._manifest import manifest_n_beads
            from .._verify import verify_bundle

            n_beads = manifest_n_beads(verify_bundle(p))
        else:
            n_beads = checkpoint_beads(p) if checkpoint_beads is not None else None
        src = resolve_many(data, n_beads=n_beads)
        report = evaluate_bundle(p, src, n_starts=starts) if is_bundle_path(p) else score_checkpoint(p, src, starts)
        if as_json:
            click.echo(json.dumps(report, indent=2, sort_keys=True))
        else:
            text = format_evaluation(f"{report['model']['kind']} model {p} on {src.source}", report)
            click.echo("\n".join(one_line(line) for line in text.splitlines()))

    return evaluate


evaluate = make_evaluate(None)
