"""``e3traj plot``: the chapter's figures from trajectory files, bundles and rollouts (needs the plot extra).

Everything is computed with numpy and onnxruntime (no torch); the figures are drawn by :mod:`.._plot`, which
imports matplotlib only when a figure is drawn.
"""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path

import click
import numpy as np

from .._data import check_beads
from .._errors import InputError, UsageError
from .._figures import _equivariance, _fidelity, _parity, _rmsd, _str_field, _training, _trajectory, load_rollout
from .._io import check_output_path, replacing
from ._options import MAX_TRIALS, positive

__all__ = ["plot", "load_rollout", "ALL_FIGURES"]

_SPECIAL_DATA = ("sim", "dmol")

#: The files ``e3traj plot all`` writes, in order.
ALL_FIGURES = ("trajectory", "parity", "rmsd", "equivariance", "training")


def _output_option(f):
    f = click.option("--force", is_flag=True, help="Replace an existing output file.")(f)
    return click.option(
        "-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path), help="OUT.png or OUT.svg."
    )(f)


def _data_inputs(data: str) -> list[str]:
    return [] if data in _SPECIAL_DATA else [data]


def _not_in_bundle(out: Path, bundles) -> None:
    """Refuse an output inside a bundle folder (it would add a file the manifest does not list)."""
    for b in bundles:
        b = Path(b)
        if not b.is_dir():
            continue
        try:
            out.resolve().relative_to(b.resolve())
        except ValueError:
            continue
        raise UsageError(f"{out}: is inside the bundle folder {b}; write figures somewhere else")


def _honours_force(fn):
    """Run a plot command with its ``--force`` as the output policy, down to the final rename of each figure."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with replacing(kwargs.get("force", False)):
            return fn(*args, **kwargs)

    return wrapper


def _prepare(out: Path, inputs, bundles, force: bool) -> Path:
    from .._plot import figure_format

    figure_format(out)
    _not_in_bundle(out, bundles)
    return check_output_path(out, [*inputs, *bundles], force=force)


def _data_label(ds) -> str:
    return ds.source if ds.path is None or ds.source == "dmol" else Path(ds.path).name


def _labels(kinds: list[str], paths) -> list[str]:
    """Manifest kind per bundle; the bundle's name is added where two bundles share a kind."""
    out = []
    for k, p in zip(kinds, paths, strict=True):
        name = Path(p).name.removesuffix(".tar.gz").removesuffix(".tgz")
        out.append(f"{k} ({name})" if kinds.count(k) > 1 else k)
    return out


def _has_history(manifest: dict) -> bool:
    training = manifest.get("training")
    return isinstance(training, dict) and bool(training.get("history"))


# --------------------------------------------------------------------------------------------- loading


# --------------------------------------------------------------------------------------------- figure makers


def _manifest_where(path: Path) -> str:
    return f"{path}/manifest.json" if path.is_dir() else f"{path}:manifest.json"


def _open_all(stack: contextlib.ExitStack, paths):
    from .._bundle import Bundle

    return [stack.enter_context(Bundle.open(p)) for p in paths]


# --------------------------------------------------------------------------------------------- commands


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def plot():
    """Draw the chapter's figures as PNG (150 dpi) or SVG, chosen by the output's suffix.

    Needs matplotlib (pip install 'e3traj[plot]'). DATA is a trajectory file, 'sim' (the embedded
    simulator, 2048 frames, seed 0) or 'dmol' (the chapter's data); validation figures use the chapter's
    80:20 split without shuffling.
    """


@plot.command()
@click.argument("data")
@click.argument("rollout", type=click.Path(path_type=Path))
@_output_option
@click.option("--start", default=0, show_default=True, type=int, help="Which of the rollout's starting frames.")
@click.option("--label", default=None, help="Model name in the title [default: the rollout's bundle sha256].")
@click.option("--full-view", is_flag=True, help="Fit every predicted frame, however far it drifts.")
@_honours_force
def trajectory(data, rollout, output, force, start, label, full_view):
    """True frames of DATA next to the frames of ROLLOUT (from 'e3traj rollout'), one starting frame.

    Each frame is drawn as the polymer (beads and bonds, x-y projection) coloured by the steps since the
    starting frame; both panels share axes limits and colour scale. A prediction that drifts more than
    1.5 true extents away is cut off at that distance (the title says how far it went) unless --full-view.
    """
    from .._sources import resolve_data

    out = _prepare(output, [*_data_inputs(data), rollout], [], force)
    if not rollout.exists():
        raise InputError(f"{rollout}: file not found; pass a rollout .npz written by 'e3traj rollout'")
    ds = resolve_data(data, min_frames=1, n_beads=load_rollout(rollout)["traj"].shape[2])
    summary = _trajectory(ds, _data_label(ds), rollout, start, out, label, full_view)
    click.echo(f"wrote {out}: {summary}")


@plot.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--data", required=True, help="Trajectory file, 'sim' or 'dmol'.")
@_output_option
@_honours_force
def parity(bundle, data, output, force):
    """Predicted vs true one-step displacements of BUNDLE on the validation part of DATA, with R².

    Planar (2D) data: the z coordinate, 0 everywhere, is left out.
    """
    from .._bundle import Bundle
    from .._sources import resolve_data

    out = _prepare(output, _data_inputs(data), [bundle], force)
    with Bundle.open(bundle) as b:
        ds = resolve_data(data, n_beads=b.n_beads)
        summary = _parity(b, b.kind, ds, _data_label(ds), out)
    click.echo(f"wrote {out}: {summary}")


@plot.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--data", required=True, help="Trajectory file, 'sim' or 'dmol'.")
@_output_option
@click.option("--starts", "n_starts", default=16, show_default=True, type=int, help="Validation starting frames.")
@click.option("--horizon", default=100, show_default=True, type=int, help="Steps to roll out (capped to the data).")
@_honours_force
def rmsd(bundle, data, output, force, n_starts, horizon):
    """Rollout RMSD vs steps of BUNDLE and the predictor suite (persistence, constant velocity and acceleration,
    the fitted AR(k)), from validation starting frames of DATA (mean and min..max band, log-log).
    """
    from .._bundle import Bundle
    from .._sources import resolve_data

    positive("--starts", n_starts)
    positive("--horizon", horizon)
    out = _prepare(output, _data_inputs(data), [bundle], force)
    with Bundle.open(bundle) as b:
        ds = resolve_data(data, n_beads=b.n_beads)
        summary = _rmsd(b, b.kind, ds, _data_label(ds), n_starts, horizon, out)
    click.echo(f"wrote {out}: {summary}")


@plot.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--data", required=True, help="Trajectory file, 'sim' or 'dmol'.")
@_output_option
@click.option("--steps", default=1000, show_default=True, type=int, help="Steps of every rollout.")
@click.option("--starts", "n_starts", default=8, show_default=True, type=int, help="Seeded starting frames.")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the starts (and of the reference).")
@_honours_force
def fidelity(bundle, data, output, force, steps, n_starts, seed):
    """Long rollouts of BUNDLE and the predictor suite from seeded frames of DATA (see 'e3traj fidelity'): the
    share of starts still physical against steps, and bond-length and radius-of-gyration densities of the
    stable parts against the reference's.
    """
    from .._bundle import Bundle
    from .._sources import resolve_data
    from ._fidelity import MAX_STARTS, MAX_STEPS

    positive("--steps", steps, maximum=MAX_STEPS)
    positive("--starts", n_starts, maximum=MAX_STARTS)
    positive("--seed", seed, zero_ok=True)
    out = _prepare(output, _data_inputs(data), [bundle], force)
    with Bundle.open(bundle) as b:
        ds = resolve_data(data, n_beads=b.n_beads)
        summary = _fidelity(b, b.kind, ds, _data_label(ds), steps, n_starts, seed, out, simulated=data == "sim")
    click.echo(f"wrote {out}: {summary}")


def _check_tolerance(tolerance: float) -> None:
    if not (np.isfinite(tolerance) and tolerance > 0):
        raise UsageError(f"--tolerance: got {tolerance}; pass a positive number")


@plot.command()
@click.argument("bundles", nargs=-1, required=True, type=click.Path(path_type=Path))
@_output_option
@click.option("--trials", default=3, show_default=True, type=int, help="Random draws per symmetry case.")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the random transformations.")
@click.option("--tolerance", default=1e-4, show_default=True, type=float, help="Relative tolerance (the red line).")
@_honours_force
def equivariance(bundles, output, force, trials, seed, tolerance):
    """Max relative error per symmetry case for each of BUNDLES (grouped bars, log scale, tolerance line).

    The same checks as 'e3traj check'; failed cases are hatched.
    """
    positive("--trials", trials, maximum=MAX_TRIALS)
    _check_tolerance(tolerance)
    out = _prepare(output, [], bundles, force)
    with contextlib.ExitStack() as stack:
        opened = _open_all(stack, bundles)
        labels = _labels([b.kind for b in opened], bundles)
        summary = _equivariance(opened, labels, trials, seed, tolerance, out)
    click.echo(f"wrote {out}: {summary}")


@plot.command()
@click.argument("bundles", nargs=-1, required=True, type=click.Path(path_type=Path))
@_output_option
@_honours_force
def training(bundles, output, force):
    """Validation MSE vs wall time from each bundle's training history (manifest training.history), with
    the persistence, constant-velocity and fitted AR(k) MSE as horizontal lines.
    """
    from .._plot_data import training_curve
    from .._verify import verify_bundle

    out = _prepare(output, [], bundles, force)
    manifests = [verify_bundle(p) for p in bundles]
    kinds = [str((m.get("model") or {}).get("kind", "unknown")) for m in manifests]
    curves = [
        training_curve(m, lab, _manifest_where(Path(p)))
        for m, lab, p in zip(manifests, _labels(kinds, bundles), bundles, strict=True)
    ]
    summary = _training(curves, manifests, out)
    click.echo(f"wrote {out}: {summary}")


@plot.command(name="all")
@click.option("--data", required=True, help="Trajectory file, 'sim' or 'dmol'.")
@click.option("--bundle", "bundles", multiple=True, required=True, type=click.Path(path_type=Path), help="Repeatable.")
@click.option("--rollout", required=True, type=click.Path(path_type=Path), help="Rollout .npz from 'e3traj rollout'.")
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path), help="Folder for the figures.")
@click.option("--format", "fmt", default="png", show_default=True, type=click.Choice(["png", "svg"]))
@click.option("--force", is_flag=True, help="Replace existing figures in the folder.")
@click.option("--start", default=0, show_default=True, type=int, help="Which of the rollout's starting frames.")
@click.option("--starts", "n_starts", default=16, show_default=True, type=int, help="Starts for the RMSD figure.")
@click.option("--horizon", default=100, show_default=True, type=int, help="Steps for the RMSD figure.")
@click.option("--trials", default=3, show_default=True, type=int, help="Random draws per symmetry case.")
@click.option("--full-view", is_flag=True, help="Trajectory figure: fit every predicted frame.")
@_honours_force
def all_figures(data, bundles, rollout, output, fmt, force, start, n_starts, horizon, trials, full_view):
    """Write trajectory, parity, rmsd, equivariance and training figures into the folder OUTPUT.

    Parity and RMSD use the first --bundle; equivariance shows every bundle; training shows the bundles
    whose manifest holds a training history (skipped when none does).
    """
    from .._plot_data import training_curve
    from .._sources import resolve_data

    positive("--starts", n_starts)
    positive("--horizon", horizon)
    positive("--trials", trials, maximum=MAX_TRIALS)
    if output.exists() and not output.is_dir():
        raise UsageError(f"{output}: exists and is not a folder; pass a folder for the figures")
    _not_in_bundle(output / "x", bundles)
    paths = {name: output / f"{name}.{fmt}" for name in ALL_FIGURES}
    if output.is_dir():
        for p in paths.values():
            _prepare(p, [*_data_inputs(data), rollout], bundles, force)
    elif not (output.parent if str(output.parent) else Path(".")).is_dir():
        raise UsageError(f"{output}: folder {output.parent} does not exist; create it or choose another folder")
    if not rollout.exists():
        raise InputError(f"{rollout}: file not found; pass a rollout .npz written by 'e3traj rollout'")
    with contextlib.ExitStack() as stack:
        opened = _open_all(stack, bundles)
        ds = resolve_data(data, min_frames=3, n_beads=load_rollout(rollout)["traj"].shape[2])
        for b in opened:  # every figure draws the same frames: one N for the data, the rollout and the bundles
            check_beads(ds.frames.shape[1], str(data), b.n_beads)
        name = _data_label(ds)
        labels = _labels([b.kind for b in opened], bundles)
        curves = [
            training_curve(b.manifest, lab, _manifest_where(b.path))
            for b, lab in zip(opened, labels, strict=True)
            if _has_history(b.manifest)
        ]
        r = load_rollout(rollout)
        sha = _str_field(r, "bundle_sha256")
        rollout_label = next((lab for b, lab in zip(opened, labels, strict=True) if b.sha256 == sha), None)
        output.mkdir(exist_ok=True)
        makers = {
            "trajectory": lambda p: _trajectory(ds, name, rollout, start, p, rollout_label, full_view),
            "parity": lambda p: _parity(opened[0], labels[0], ds, name, p),
            "rmsd": lambda p: _rmsd(opened[0], labels[0], ds, name, n_starts, horizon, p),
            "equivariance": lambda p: _equivariance(opened, labels, trials, 0, 1e-4, p),
            "training": lambda p: _training(curves, [b.manifest for b in opened if _has_history(b.manifest)], p),
        }
        for fig in ALL_FIGURES:
            if fig == "training" and not curves:
                click.echo("skipped training: no bundle's manifest holds a training history")
                continue
            summary = makers[fig](paths[fig])
            click.echo(f"wrote {paths[fig]}: {summary}")
