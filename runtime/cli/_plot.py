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

from .._errors import InputError, UsageError
from .._io import check_output_path, replacing

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


def _positive(name: str, value: int) -> None:
    if value < 1:
        raise UsageError(f"{name}: got {value}; pass a positive integer")


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


def load_rollout(path: Path) -> dict[str, np.ndarray]:
    """Read a rollout ``.npz`` written by ``e3traj rollout`` (never unpickles).

    Shapes: ``traj`` ``(T, B, 12, 3)``, ``starts`` ``(B,)``.
    """
    import zipfile

    where = str(path)
    if not path.exists():
        raise InputError(f"{where}: file not found; pass a rollout .npz written by 'e3traj rollout'")
    if path.is_dir():
        raise InputError(f"{where}: is a folder; pass a rollout .npz written by 'e3traj rollout'")
    try:
        z = np.load(path, allow_pickle=False)
        if not isinstance(z, np.lib.npyio.NpzFile):
            raise InputError(f"{where}: holds a single array, not a rollout .npz; pass the output of 'e3traj rollout'")
        with z:
            missing = [k for k in ("traj", "starts") if k not in z.files]
            if missing:
                raise InputError(
                    f"{where}: arrays {missing} missing (has {sorted(z.files)}); "
                    "pass a rollout .npz from 'e3traj rollout'"
                )
            out = {k: z[k] for k in z.files}
    except InputError:
        raise
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        text = str(exc).strip().splitlines()
        raise InputError(
            f"{where}: could not read the rollout ({text[0] if text else type(exc).__name__}); "
            "pass a rollout .npz from 'e3traj rollout'"
        ) from None
    traj, starts = out["traj"], out["starts"]
    if traj.ndim != 4 or traj.shape[2:] != (12, 3) or traj.shape[0] < 1 or traj.dtype.kind != "f":
        raise InputError(f"{where}: traj has shape {traj.shape} ({traj.dtype}); expected float (T, B, 12, 3)")
    if starts.shape != (traj.shape[1],) or starts.dtype.kind not in "iu":
        raise InputError(f"{where}: starts has shape {starts.shape} ({starts.dtype}); expected ({traj.shape[1]},) ints")
    return out


def _str_field(arrays, key: str, default: str = "") -> str:
    v = arrays.get(key)
    return str(v) if v is not None and v.shape == () else default


# --------------------------------------------------------------------------------------------- figure makers


def _trajectory(
    ds, data_name: str, rollout_path: Path, start: int, out: Path, label: str | None = None, full_view: bool = False
) -> str:
    from .._plot import plot_trajectory

    r = load_rollout(rollout_path)
    traj, starts = r["traj"], r["starts"]
    if not 0 <= start < len(starts):
        raise UsageError(
            f"--start: got {start}; {rollout_path} holds {len(starts)} starting frame(s), pass 0..{len(starts) - 1}"
        )
    s = int(starts[start])
    frames = ds.frames
    if not 0 <= s < len(frames):
        raise InputError(
            f"{rollout_path}: starts at frame {s}, but {data_name} has {len(frames)} frames; "
            "pass the trajectory the rollout was made from"
        )
    pred = traj[:, start]
    gap = float(np.max(np.abs(pred[0] - frames[s])))
    if not gap <= 1e-6 * max(1.0, float(np.max(np.abs(frames[s])))):
        raise InputError(
            f"{rollout_path}: its starting frame differs from frame {s} of {data_name} by up to {gap:.3g}; "
            "pass the trajectory the rollout was made from"
        )
    true = frames[s : s + len(pred)]
    note = ""
    complete = r.get("complete")
    if complete is not None and complete.shape == () and not bool(complete):
        note = f"rollout stopped early: {len(pred) - 1} of {int(r.get('steps_requested', len(pred) - 1))} steps"
    if len(true) < len(pred):
        note = (note + "; " if note else "") + f"data ends after {len(true) - 1} steps"
    if label is None:
        sha = _str_field(r, "bundle_sha256")
        label = f"bundle {sha[:8]}" if sha else "model"
    plot_trajectory(true, pred, out, start=s, source=data_name, kind=label, note=note, full_view=full_view)
    return f"true frames {s}..{s + len(true) - 1} vs {len(pred) - 1} predicted steps"


def _step_fn(b):
    if b.needs_previous:
        return lambda x, prev: b.step(x, prev)
    return lambda x, prev: b.step(x)


def _parity(b, label: str, ds, data_name: str, out: Path) -> str:
    from .._data import split_pairs
    from .._plot import plot_parity
    from .._plot_data import r2_score

    split = split_pairs(ds.frames)
    x, y, prev = split.val_x, split.val_y, split.val_prev
    with np.errstate(all="ignore"):
        pred = b.step(x, prev) if b.needs_previous else b.step(x)
        pred_d, true_d = pred - x, y - x
    note = ""
    if np.all(ds.frames[..., 2] == 0.0):  # planar data: z is 0 and carries nothing
        z = np.abs(pred_d[..., 2])
        zmax = float(np.max(z)) if np.isfinite(z).all() else float("inf")
        if zmax > 0:
            note = f"z left out (data planar); max |predicted z| {zmax:.2g}"
        pred_d, true_d = pred_d[..., :2], true_d[..., :2]
    plot_parity(
        true_d,
        pred_d,
        out,
        title=f"Parity: {label} one-step displacements\n({data_name}, validation, {len(x)} pairs)",
        note=note,
    )
    ok = np.isfinite(pred_d)
    return f"R² = {r2_score(pred_d[ok], true_d[ok]):.4f} over {int(ok.sum())} coordinates of {len(x)} validation pairs"


def _rmsd(b, label: str, ds, data_name: str, n_starts: int, horizon: int, out: Path) -> str:
    from .._data import split_pairs
    from .._metrics import constant_velocity_step, persistence_step, rollout_starts
    from .._plot import plot_rmsd
    from .._plot_data import rollout_rmsd_curves

    split = split_pairs(ds.frames)
    n_val = len(split.frames) - 1 - split.val_start
    capped = min(horizon, n_val)
    starts = rollout_starts(split, capped, n_starts)
    curves = rollout_rmsd_curves(
        {"model": _step_fn(b), "persistence": persistence_step, "constant_velocity": constant_velocity_step},
        split.frames,
        starts,
        capped,
    )
    cap = f", capped from {horizon} to fit the validation part" if capped < horizon else ""
    plot_rmsd(
        curves,
        out,
        title=f"Rollout RMSD: {label} vs trivial predictors\n({data_name}, {len(starts)} validation starts{cap})",
        labels={"model": f"model ({label})"},
    )
    last = {k: float(np.nanmean(v[-1])) if np.isfinite(v[-1]).any() else float("nan") for k, v in curves.items()}
    return (
        f"mean RMSD after {capped} steps from {len(starts)} starts: model {last['model']:.3g}, "
        f"persistence {last['persistence']:.3g}, constant velocity {last['constant_velocity']:.3g}"
    )


def _equivariance(bundles, labels, trials: int, seed: int, tolerance: float, out: Path) -> str:
    from .._equivariance import check_bundle
    from .._plot_reports import plot_equivariance

    reports = [
        (lab, check_bundle(b, trials=trials, seed=seed, tolerance=tolerance).to_dict())
        for b, lab in zip(bundles, labels, strict=True)
    ]
    plot_equivariance(reports, out)
    parts = []
    for lab, rep in reports:
        failed = [c["case"] for c in rep["cases"] if not c["passed"]]
        parts.append(f"{lab}: {'PASS' if not failed else 'FAIL ' + ','.join(failed)}")
    return "; ".join(parts)


def _training(curves, manifests, out: Path) -> str:
    from .._plot_reports import plot_training

    sources = {str((m.get("training") or {}).get("data_source")) for m in manifests}
    data = f" (data: {sources.pop()})" if len(sources) == 1 and "None" not in sources else ""
    plot_training(curves, out, title=f"Training: validation MSE vs wall time{data}")
    return ", ".join(f"{c.label}: {len(c.time)} epochs" for c in curves)


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
    ds = resolve_data(data, min_frames=1)
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
    ds = resolve_data(data)
    with Bundle.open(bundle) as b:
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
    """Rollout RMSD vs steps of BUNDLE, persistence and constant velocity, from validation starting frames
    of DATA (mean and min..max band, log-log).
    """
    from .._bundle import Bundle
    from .._sources import resolve_data

    _positive("--starts", n_starts)
    _positive("--horizon", horizon)
    out = _prepare(output, _data_inputs(data), [bundle], force)
    ds = resolve_data(data)
    with Bundle.open(bundle) as b:
        summary = _rmsd(b, b.kind, ds, _data_label(ds), n_starts, horizon, out)
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
    _positive("--trials", trials)
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
    the persistence and constant-velocity MSE as horizontal lines.
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

    _positive("--starts", n_starts)
    _positive("--horizon", horizon)
    _positive("--trials", trials)
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
    ds = resolve_data(data, min_frames=3)
    name = _data_label(ds)
    with contextlib.ExitStack() as stack:
        opened = _open_all(stack, bundles)
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
