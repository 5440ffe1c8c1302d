"""``e3traj fidelity``: long rollouts of a bundle and of the predictor suite, judged by stability and by the
distributions of the chain's structure and motion (a thin wrapper over :mod:`e3traj.runtime._fidelity`)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from .._errors import one_line
from ._evaluate import DATA_HELP
from ._options import positive, threads_option

__all__ = ["fidelity"]

#: Caps checked before any work (frames held: steps x starts x predictors).
MAX_STEPS = 100_000
MAX_STARTS = 256


@click.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--data", default="sim", show_default=True, help=DATA_HELP)
@click.option("--steps", default=1000, show_default=True, type=int, help="Steps of every rollout.")
@click.option("--starts", "n_starts", default=8, show_default=True, type=int, help="Seeded starting frames.")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the starts (and of the reference).")
@threads_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON for machines.")
def fidelity(bundle, data, steps, n_starts, seed, threads, as_json):
    """Roll BUNDLE and the predictor suite out from seeded frames of DATA; report stability and distributions.

    Per predictor: the share of starts stable to the end (thresholds printed; a non-finite value, a stretched or
    collapsed bond or two overlapping beads end a start's stable part), the Wasserstein-1 distance of bond
    length, bond angle, radius of gyration and end-to-end distance to the reference (in units of the
    reference's spread), internal motion (mean squared displacement relative to the centre of mass) as a ratio
    to the reference's at lags 1, 10, 100, and the centre of mass's drift. With --data sim the reference is an
    independent long simulation and the noise floor (two independent simulations) is printed; otherwise the
    reference is DATA's own frames. RMSD is not reported: at long horizons it measures chaos, not quality.
    """
    from .._bundle import Bundle
    from .._fidelity import fidelity_report, format_fidelity
    from .._sources import resolve_data

    positive("--steps", steps, maximum=MAX_STEPS)
    positive("--starts", n_starts, maximum=MAX_STARTS)
    positive("--seed", seed, zero_ok=True)
    with Bundle.open(bundle, threads=threads) as b:
        src = resolve_data(data, n_beads=b.n_beads)
        report = fidelity_report(b, src, steps=steps, n_starts=n_starts, seed=seed, simulated=data == "sim")
    rows, bands = report.pop("_rows"), report.pop("_bands")
    if as_json:
        click.echo(json.dumps(report, indent=2, sort_keys=True))
        return
    click.echo(
        f"fidelity of {bundle} on {src.source}: {steps} steps from {len(report['starts'])} starts "
        f"(seed {seed}); reference: {report['reference']}"
    )
    text = format_fidelity(rows, bands, floor=report["floor"], data_floor=report["data_floor"])
    click.echo("\n".join(one_line(line) for line in text.splitlines()))
