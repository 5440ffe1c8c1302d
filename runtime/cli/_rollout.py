"""``e3traj rollout``: trajectories from a bundle on a host (numpy, onnxruntime and click only), sampled,
stopped at the physical band, thinned with --every, or one shard of an ensemble."""

from __future__ import annotations

import contextlib
import re
import shutil
import sys
import time
from pathlib import Path

import click
import numpy as np

from .._errors import EXIT_INTERRUPTED, EXIT_TERMINATED, InputError, RolloutIncomplete, UsageError, one_line
from .._io import check_output_path
from ._options import MAX_THREADS, positive, threads_option

__all__ = ["rollout", "recover", "parse_frames"]

#: Show a progress bar (on a terminal) when steps x starts reaches this.
PROGRESS_THRESHOLD = 200_000

_BUNDLE_ARG = click.argument("bundle", type=click.Path(path_type=Path))


def parse_frames(spec: str | None, n_frames: int) -> list[int]:
    """Parse ``--frames``: ``all``, or a comma list of indices and inclusive ranges (``0,5,10-20,-1``).

    Negative indices count from the end as in Python. Default (``None``): the last frame.

    Raises:
        UsageError: a malformed item or an index outside ``-n_frames .. n_frames-1``.
    """
    if spec is None:
        return [n_frames - 1]
    text = spec.strip()
    if text.lower() == "all":
        return list(range(n_frames))
    out: list[int] = []

    def norm(i: int) -> int:
        if not -n_frames <= i < n_frames:
            raise UsageError(
                f"--frames: frame {i} is out of range for a trajectory of {n_frames} frame(s) "
                f"(valid {-n_frames}..{n_frames - 1})"
            )
        return i % n_frames

    for item in text.split(","):
        item = item.strip()
        m = re.fullmatch(r"(-?\d+)(?:\s*-\s*(-?\d+))?", item)
        if not m:
            raise UsageError(f"--frames: cannot read {item!r} in {spec!r}; use e.g. 0,5,10-20 or -1 or all")
        lo = norm(int(m.group(1)))
        if m.group(2) is None:
            out.append(lo)
            continue
        hi = norm(int(m.group(2)))
        if hi < lo:
            raise UsageError(f"--frames: range {item!r} runs backwards; write it as low-high")
        out.extend(range(lo, hi + 1))
    if not out:
        raise UsageError(f"--frames: {spec!r} selects no frame")
    return out


def _bundle_outputs_guard(bundle: Path, out: Path) -> None:
    """Refuse an output inside a bundle folder (it would add an unlisted file) or equal to the archive."""
    if bundle.is_dir():
        try:
            out.resolve().relative_to(bundle.resolve())
        except ValueError:
            return
        raise UsageError(f"{out}: is inside the bundle folder {bundle}; write outputs somewhere else")


@click.command()
@_BUNDLE_ARG
@click.argument("init", type=click.Path(path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path), help="Output .npz.")
@click.option("--steps", required=True, type=int, help="Steps to extrapolate from each starting frame (>= 1).")
@click.option("--frames", "frames_spec", default=None, help="Starting frames: 0,5,10-20, -1 or all [default: last].")
@click.option("--xyz", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Also write extended XYZ.")
@threads_option
@click.option("--max-distance", type=float, default=None, help="Stop when a bead strays this far from its start.")
@click.option(
    "--noise",
    default="none",
    show_default=True,
    help="Sampled rollouts: 'fitted' adds isotropic Gaussian noise of the bundle's model.noise_scale (its RMS "
    "one-step training residual, or a langevin bundle's thermostat) to every predicted frame, in the chain's plane "
    "for planar frames; a number sets the scale. This samples trajectories instead of predicting one.",
)
@click.option(
    "--seed", default=0, show_default=True, type=int, help="Noise seed; each start is seeded by (seed, frame)."
)
@click.option(
    "--stop-unstable",
    is_flag=True,
    help="Stop at the first frame outside the physical band of INIT's frames (a bond beyond 0.5x..1.5x their "
    "shortest..longest, or two non-bonded beads closer than half their closest pair); exit 5, frames kept.",
)
@click.option(
    "--every", default=1, show_default=True, type=int, help="Keep every N-th frame (memory: steps / N frames)."
)
@click.option(
    "--shard",
    default=None,
    help="Roll out share I of N of the starts (I/N, 0-based; or 'slurm': the job array's task); "
    "'e3traj merge' joins the shards into the file one run writes.",
)
@click.option("--force", is_flag=True, help="Replace existing output files.")
def rollout(
    bundle,
    init,
    output,
    steps,
    frames_spec,
    xyz,
    threads,
    max_distance,
    noise,
    seed,
    stop_unstable,
    every,
    shard,
    force,
):
    """Extrapolate trajectories from frames of INIT with BUNDLE (a folder or a .tar.gz).

    INIT is a trajectory (T, N, 2|3) in the dmol-book format or one frame. All starting frames roll out
    together in one batch; OUT.npz holds traj (steps+1, B, N, 3) and the start indices. If a frame becomes
    non-finite (or strays beyond --max-distance), the frames before it are written with complete=False and
    the command exits with code 5.
    """
    from .._bundle import Bundle
    from .._data import check_beads, frames_before, read_trajectory
    from .._rollout import rollout as run
    from .._spool import Spool

    if steps < 1:
        raise UsageError(f"--steps: got {steps}; pass a positive number of steps (>= 1)")
    positive("--every", every)
    if every > steps:
        raise UsageError(f"--every {every} is more than --steps {steps}: only the start would be kept; pass fewer")
    positive("--threads", threads, maximum=MAX_THREADS)
    if max_distance is not None and not (np.isfinite(max_distance) and max_distance > 0):
        raise UsageError(f"--max-distance: got {max_distance}; pass a positive distance")
    outputs = [output] + ([xyz] if xyz is not None else [])
    for out in outputs:
        _bundle_outputs_guard(bundle, out)
        check_output_path(out, [init, bundle], force=force)
    if xyz is not None and xyz.resolve() == output.resolve():
        raise UsageError(f"{xyz}: --xyz and -o name the same file; choose two paths")

    frames, init_sha = read_trajectory(init)
    starts = parse_frames(frames_spec, len(frames))
    shard_extra = None
    run_starts = len(starts)  # the whole run's starts (a shard rolls out a block of them)
    if shard is not None:  # a deterministic block of the starts; the file records the whole run
        from .._shards import parse_shard, shard_fields, shard_rows

        index, count = parse_shard(shard)
        lo, hi = shard_rows(len(starts), index, count)
        shard_extra = shard_fields(index, count, lo, starts)
        starts = starts[lo:hi]
    stop = None
    reason = ""
    if stop_unstable:
        from .._fidelity import bands_from, unstable_rows

        if len(frames) < 2:
            raise InputError(f"{init}: has one frame; --stop-unstable derives its band from INIT's frames (>= 2)")
        bands = bands_from(frames)
        stop = lambda f: unstable_rows(f, bands)  # noqa: E731
        reason = "left the physical band: " + bands.describe().split(", ", 1)[1]
    with Bundle.open(bundle, threads=threads) as b:
        check_beads(frames.shape[1], str(init), b.n_beads)
        previous = None
        h = b.history
        if h:
            what = "velocity-aware" if h == 1 else f"history ({h + 1}-frame window)"
            before = "the previous frame" if h == 1 else f"the {h} previous frames"
            if len(frames) < h + 1:
                have = "one frame" if len(frames) == 1 else f"{len(frames)} frames"
                raise InputError(f"{init}: has {have}; this {what} bundle needs {before} of each start too")
            early = [s for s in starts if s < h]
            if early:
                raise UsageError(
                    f"--frames: frame {early[0]} lacks {before}, which this {what} bundle needs; start at {h} or later"
                )
            previous = frames_before(frames, starts, h)
        init_frames = frames[np.asarray(starts)]
        scale, sampler = _noise_of(b, noise, seed, starts)
        _check_disk(output, steps // every + 1, init_frames.shape, xyz is not None)
        fields = dict(
            starts=np.asarray(starts, dtype=np.int64),
            bundle_sha256=b.sha256,
            source=str(init),
            noise_scale=scale,
            noise_seed=seed if sampler is not None else -1,
            init_sha256=init_sha,
            stop="; ".join(
                ([f"max_distance {max_distance:g}"] if max_distance is not None else [])
                + ([f"stop_unstable: {reason}"] if stop_unstable else [])
            ),
            steps_requested=steps,
            every=every,
            extra=shard_extra,
        )
        spool = Spool(output, init_frames.shape, fields, xyz=xyz, replace=force)
        t0 = time.perf_counter()
        with contextlib.ExitStack() as stack:
            bar = None
            if steps * len(starts) >= PROGRESS_THRESHOLD and _on_terminal():  # (a log gets the outcome only)
                bar = stack.enter_context(click.progressbar(length=steps, label="rollout", file=sys.stderr))
            try:
                result = run(
                    b, init_frames, steps, previous=previous, max_distance=max_distance, stop=stop,
                    stop_reason=reason, noise=sampler, progress=None if bar is None else bar.update, every=every,
                    sink=spool, run_starts=run_starts,
                )  # fmt: skip
            except BaseException as exc:
                _stopped(spool, exc, steps, every, init_frames.shape, output, xyz)
                raise
        elapsed = time.perf_counter() - t0
        kept = (spool.count, *init_frames.shape)
        result.traj = np.zeros((0, *init_frames.shape))  # the spooled frames' map closes before its folder goes
        _finish(spool, result)
    written = _written(output, xyz)
    if not result.complete:
        bad = [starts[i] for i in result.failed_starts]
        shown = ", ".join(str(s) for s in bad[:10]) + (f" and {len(bad) - 10} more" if len(bad) > 10 else "")
        raise RolloutIncomplete(
            f"rollout stopped at step {result.failed_step} of {steps}: starting frame(s) {shown} {result.reason}; "
            f"wrote the {kept[0]} kept frames before it to {written} (complete=False)"
        )
    click.echo(
        one_line(f"wrote {written}: traj {kept} from {len(starts)} starting frame(s), {steps} steps in {elapsed:.2f} s")
    )


def _on_terminal() -> bool:
    return sys.stderr.isatty()


def _written(output: Path, xyz: Path | None) -> str:
    return f"{output}" + (f" and {xyz}" if xyz is not None else "")


#: On SIGTERM (a time limit: SIGKILL follows within SLURM's KillWait, 30 s by default), spools larger than this are
#: left for 'e3traj recover' instead of copied into the rollout file.
TERM_COPY_BYTES = 256 << 20


def _stopped(spool, exc: BaseException, steps: int, every: int, shape, output: Path, xyz: Path | None) -> None:
    """The rollout loop ended by ``exc``: keep what it made (an interrupt or a disk error), or nothing (a bug)."""
    from .._spool import cut_short
    from . import _Terminated

    label = spool.label
    if isinstance(exc, OSError):  # a full disk while spooling, say: the frames so far stay for recover
        spool.close()
        raise InputError(
            f"{exc.filename or spool.folder}: {exc.strerror or exc} while the rollout ran; the {spool.count} frames "
            f"before it are kept in {label}: free disk space (or fix the cause), then 'e3traj recover {label}'"
        ) from None
    if not isinstance(exc, KeyboardInterrupt | _Terminated):
        spool.discard()  # another failure: no unfinished output is kept, as for every command
        return
    name, code = ("SIGTERM", EXIT_TERMINATED) if isinstance(exc, _Terminated) else ("SIGINT", EXIT_INTERRUPTED)
    if spool.count == 0:
        spool.discard()
        raise RolloutIncomplete(f"rollout interrupted ({name}) before its first step; nothing kept", exit_code=code)
    result = cut_short(spool.count, steps, every, shape, f"was interrupted ({name})")
    done = result.steps_done
    if name == "SIGTERM" and spool.nbytes > TERM_COPY_BYTES:  # no time to copy it before the SIGKILL
        spool.record(result)
        raise RolloutIncomplete(
            f"rollout terminated (SIGTERM) after step {done} of {steps}: its {spool.count} kept frames are in "
            f"{label} ({spool.nbytes / 2**30:.1f} GiB, too many to copy before a SIGKILL); write them out with "
            f"'e3traj recover {label}'",
            exit_code=code,
        ) from None
    _finish(spool, result, code)
    raise RolloutIncomplete(
        f"rollout interrupted ({name}) after step {done} of {steps}: wrote the {spool.count} kept frames to "
        f"{_written(output, xyz)} (complete={done == steps}, interrupted={done != steps})",
        exit_code=code,
    ) from None


def _finish(spool, result, code: int | None = None) -> None:
    """Write the outputs from the spool; an interrupt or a disk error now leaves the spool folder and says how to
    recover it."""
    from . import _Terminated

    label = spool.label
    try:
        spool.finish(result)
    except (KeyboardInterrupt, _Terminated) as exc:
        raise RolloutIncomplete(
            f"interrupted while writing {spool.output.name}; the frames are kept in {label}: write them out with "
            f"'e3traj recover {label}'",
            exit_code=EXIT_TERMINATED if isinstance(exc, _Terminated) else EXIT_INTERRUPTED,
        ) from None
    except OSError as exc:  # a full disk, say: the frames stay for a later try
        raise InputError(
            f"{exc.filename or spool.output}: {exc.strerror or exc} while writing the rollout; the frames are kept in "
            f"{label}: free disk space (or fix the cause), then 'e3traj recover {label}'"
        ) from None


def _check_disk(output: Path, kept: int, shape: tuple[int, ...], xyz: bool) -> None:
    """Refuse a rollout whose files cannot fit on the output's disk: the spooled frames, the rollout file and
    the XYZ text (about 45 bytes a bead)."""
    frame_bytes = int(np.prod(shape)) * 8
    need = 2 * kept * frame_bytes + (kept * frame_bytes // 24 * 45 if xyz else 0)
    try:
        free = shutil.disk_usage(output.parent if str(output.parent) else ".").free
    except OSError:
        return
    if need > free:
        raise UsageError(
            f"{output}: the rollout needs about {need / 2**30:.2f} GiB on its disk (the frames spooled, then the "
            f"file{' and the XYZ text' if xyz else ''}) and {free / 2**30:.2f} GiB are free; keep fewer frames "
            "(--every), roll out fewer steps or starts, or write somewhere else"
        )


def _noise_of(b, noise: str, seed: int, starts):
    """``--noise`` as (scale, sampler or None)."""
    from .._noise import RolloutNoise

    if noise == "none":
        return 0.0, None
    if noise == "fitted":
        if b.noise_scale is None:
            raise UsageError(
                f"--noise fitted: {b.path} records no model.noise_scale (exported before sampled rollouts); "
                "pass a number or re-export the checkpoint"
            )
        scale = b.noise_scale
    else:
        try:
            scale = float(noise)
        except ValueError:
            raise UsageError(f"--noise: got {noise!r}; pass none, fitted or a number >= 0") from None
    positive("--seed", seed, zero_ok=True)
    if not (np.isfinite(scale) and scale >= 0):
        raise UsageError(f"--noise: got {noise!r}; pass none, fitted or a finite number >= 0")
    return scale, RolloutNoise(scale, seed, starts)


@click.command()
@click.argument("partial", type=click.Path(path_type=Path))
@click.option("--force", is_flag=True, help="Replace an existing OUT (and XYZ) file.")
def recover(partial, force):
    """Write the rollout file of PARTIAL, the OUT.partial folder a killed 'e3traj rollout -o OUT' left.

    The frames written before the kill (all but at most the last second's) become OUT beside the folder (and the
    XYZ file the rollout was asked for), with the outcome the rollout recorded or else complete=False and
    interrupted=True; the folder is removed. Exits 5 for an incomplete rollout, 0 for a complete one.
    """
    from .._io import check_output_path
    from .._spool import recover as run

    target = Path(str(partial).rstrip("/")).with_suffix("") if str(partial).rstrip("/").endswith(".partial") else None
    if target is not None:
        check_output_path(target, [], force=force)
    files, result = run(partial, replace=force)
    names = " and ".join(str(f) for f in files)
    if result.complete:
        click.echo(one_line(f"recovered the whole rollout ({result.steps_done} steps) into {names}"))
        return
    raise RolloutIncomplete(
        f"recovered {result.steps_done} of {result.steps_requested} steps ({result.steps_done // result.every + 1} "
        f"kept frames) into {names} (complete=False, interrupted={result.interrupted})"
    )
