"""``Bundle``: a verified bundle with its onnxruntime session, and the ways to run it (predict, step, rollouts).

Verification is :mod:`e3traj.runtime._verify`, the format :mod:`e3traj.runtime._manifest`, the session
:mod:`e3traj.runtime._session` and the rollout's fast step :mod:`e3traj.runtime._stepper`.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ._bundle_fields import ManifestFields
from ._contract import (
    POSITIONS,
    PREVIOUS_DISPLACEMENT,
    PREVIOUS_DISPLACEMENTS,
    as_past,
    next_frame,
    past_displacements,
)
from ._errors import CheckFailed, InputError, UsageError
from ._manifest import _DTYPES, _is_int, manifest_history, manifest_n_beads
from ._session import CHUNK, _default_threads, _run_failed, make_session
from ._stepper import make_stepper
from ._verify import _load_example, _read_bundle, _Verified

__all__ = ["Bundle"]


class Bundle(ManifestFields):
    """A verified bundle with an onnxruntime session. Open with :meth:`Bundle.open`; use as a context manager.

    Shapes: every input and output is ``(B, N, 3)``, except ``previous_displacements`` ``(B, H, N, 3)``;
    ``predict`` and ``step`` return float64.
    """

    def __init__(self, *, path: Path, verified: _Verified, session, threads=None):
        self._path = path
        self._root = verified.root
        self._label = verified.label
        self._files = verified.files
        self._manifest = verified.manifest
        self._sha256 = verified.sha256
        self._session = session
        self._verified = verified
        self._single_session = None  # the single-frame graph's session, made on first use (single_frame_session)
        self._threads = _default_threads() if threads is None else int(threads)
        self._pool = None
        self._pool_lock = threading.Lock()
        self._example: tuple[dict[str, np.ndarray], np.ndarray] | None = None
        manifest = verified.manifest
        inputs = manifest["inputs"]
        self._input_meanings = {i["name"]: i["meaning"] for i in inputs}
        self._input_dtypes = {i["name"]: _DTYPES[i.get("dtype", "float32")] for i in inputs}
        self._output_name = manifest["outputs"][0]["name"]
        self._history = manifest_history(manifest)
        self._n_beads = manifest_n_beads(manifest)

    # ---- construction

    @classmethod
    def open(cls, path: str | os.PathLike, threads: int | None = None) -> Bundle:
        """Verify a bundle folder or ``.tar.gz`` and create a CPU onnxruntime session for it.

        Args:
            path: bundle folder, or an archive from :func:`~e3traj.runtime.pack_bundle` (read and verified in
                memory; nothing is extracted to disk).
            threads: CPU threads for large batches (``None``: the CPUs this process may use). A batch is split
                into sub-batches of :data:`CHUNK` frames that run concurrently on ``threads`` threads, each
                onnxruntime call on one thread: this graph's ops are too small for onnxruntime's intra-op
                parallelism (measured ~1.0x at 2 threads, vs ~1.8x for concurrent sub-batches). One sub-batch
                (e.g. B = 1) always runs on the calling thread.

        Raises:
            InputError: the bundle fails verification or onnxruntime cannot load the model.
            UsageError: ``threads`` < 1.
        """
        if threads is not None and (not _is_int(threads) or threads < 1):
            raise UsageError(f"threads: got {threads!r}; pass a positive integer")
        verified = _read_bundle(path)
        session = make_session(verified)
        return cls(path=Path(path), verified=verified, session=session, threads=threads)

    def close(self) -> None:
        """Release the session and its worker threads."""
        pool, self._pool = getattr(self, "_pool", None), None
        if pool is not None:
            pool.shutdown(wait=True)
        self._session = self._single_session = None

    def __enter__(self) -> Bundle:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):  # pragma: no cover - exercised by garbage collection
        try:
            self.close()
        except Exception:
            pass

    def __repr__(self) -> str:
        return f"Bundle({str(self._path)!r}, kind={self.kind!r}, sha256={self._sha256[:12]}...)"

    # ---- properties

    @property
    def manifest(self) -> dict:
        """The parsed ``manifest.json``."""
        return self._manifest

    @property
    def path(self) -> Path:
        """The path the bundle was opened from (a folder or an archive)."""
        return self._path

    @property
    def root(self) -> Path | None:
        """The bundle folder, or ``None`` for an archive (read in memory; nothing of it is on disk)."""
        return self._root

    def file_bytes(self, name: str) -> bytes:
        """The verified bytes of ``model.onnx`` or ``example.npz`` (as hashed when the bundle was opened)."""
        if name not in self._files:
            raise KeyError(f"{name!r}: not a file the host reads (has {sorted(self._files)})")
        return bytes(self._files[name])

    @property
    def sha256(self) -> str:
        """sha256 of ``manifest.json`` (which pins every file of the bundle)."""
        return self._sha256

    # ---- running

    def predict(self, inputs: Mapping[str, np.ndarray], chunk: int | None = None) -> np.ndarray:
        """Run the model on a batch.

        Shapes: each input ``(B, N, 3)`` -> output ``(B, N, 3)`` float64. Inputs are cast to the bundle dtype;
        the batch runs in ``ceil(B / chunk)`` near-equal sub-batches (``chunk`` default :data:`CHUNK`), concurrently
        on :attr:`threads` threads. On the project machines the sub-batching does not change any output bit as long
        as every sub-batch holds at least 8 frames (true for ``B >= 8`` and ``chunk >= 16``); onnxruntime may
        round batches of fewer frames, or on other CPUs other shapes, differently in float32 (~1e-9 on the
        reference bundles).

        Raises:
            UsageError: an input is missing/unknown, the shapes disagree, or ``chunk`` < 1.
            InputError: an input holds NaN or Inf.
        """
        if self._session is None:
            raise UsageError(f"{self._path}: bundle is closed; open it again")
        if chunk is not None and (not _is_int(chunk) or chunk < 1):
            raise UsageError(f"chunk: got {chunk!r}; pass a positive integer")
        feed, batch = self._feed(inputs)
        out = np.empty((batch, self._n_beads, 3), dtype=np.float64)
        self._run_chunks(feed, out, CHUNK if chunk is None else chunk)
        return out

    def predict_single_frame(self, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
        """Run the bundle's single-frame graph (``onnx.single_frame``) on each frame of a batch, one call per frame,
        as a single-start rollout does; for checks (``check`` runs its equivariance cases on it too).

        Shapes: as :meth:`predict`. Raises: as :meth:`predict`, and UsageError for a bundle without that graph.
        """
        session = self.single_frame_session()
        feed, batch = self._feed(inputs)
        out = np.empty((batch, self._n_beads, 3), dtype=np.float64)
        where = f"{self._label}/{self._manifest['onnx']['single_frame']['file']}"
        for i in range(batch):
            out[i : i + 1] = self._call(session, {n: a[i : i + 1] for n, a in feed.items()}, 1, where, where)
        return out

    def _call(self, session, feed: dict[str, np.ndarray], rows: int, where: str, shape_where) -> np.ndarray:
        """One onnxruntime call: a failure is one line naming ``where``, a wrong output shape one naming
        ``shape_where``. Shapes: each input ``(rows, N, 3)`` -> ``(rows, N, 3)``."""
        try:
            y = session.run([self._output_name], feed)[0]
        except Exception as exc:  # onnxruntime's Fail/RuntimeException/...: one line of ours
            raise _run_failed(where, exc) from None
        if not isinstance(y, np.ndarray) or y.shape != (rows, self._n_beads, 3):
            shape = getattr(y, "shape", type(y).__name__)
            raise InputError(f"{shape_where}: model returned shape {shape}; expected ({rows}, {self._n_beads}, 3)")
        return y

    def _feed(self, inputs: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], int]:
        """The checked, contiguous model inputs in the bundle dtype, and the batch size.

        Shapes: each input ``(B, N, 3)`` (``previous_displacements`` ``(B, H, N, 3)``), returned as given."""
        names = list(self._input_meanings)
        missing = [n for n in names if n not in inputs]
        extra = [n for n in inputs if n not in self._input_meanings]
        if missing or extra:
            raise UsageError(f"{self._path}: inputs {sorted(inputs)} do not match the model's {names}")
        arrays = {}
        batch = None
        for n in names:
            a = np.asarray(inputs[n])
            want = self._input_shape(n)
            if a.ndim != len(want) + 1 or a.shape[1:] != want:
                raise UsageError(f"input {n!r}: shape {a.shape}; expected (B, {', '.join(map(str, want))})")
            if batch is None:
                batch = a.shape[0]
            elif a.shape[0] != batch:
                raise UsageError(f"input {n!r}: batch {a.shape[0]} differs from the other inputs' {batch}")
            if a.dtype.kind not in "fiu":
                raise UsageError(f"input {n!r}: dtype {a.dtype} is not numeric")
            if not np.all(np.isfinite(a)):
                raise InputError(f"input {n!r}: holds NaN or Inf; pass finite positions")
            arrays[n] = a
        with np.errstate(over="ignore"):
            feed = {n: np.ascontiguousarray(a, dtype=self._input_dtypes[n]) for n, a in arrays.items()}
        return feed, batch

    def _run_chunks(self, feed: dict[str, np.ndarray], out: np.ndarray, chunk: int) -> None:
        """Run contiguous model inputs in sub-batches of ``chunk`` rows into ``out`` (float64), on the threads."""
        session, where = self._session, f"{self._label}/{self._manifest['onnx']['file']}"
        batch = out.shape[0]
        # ceil(batch / chunk) near-equal sub-batches: none is tiny (onnxruntime rounds batches of < 8 frames
        # differently in float32), and the threads get equal shares
        n_sub = max(1, -(-batch // chunk))
        bounds = [(batch * i // n_sub, batch * (i + 1) // n_sub) for i in range(n_sub)]

        def work(part: list[tuple[int, int]]) -> None:
            for lo, hi in part:
                out[lo:hi] = self._call(session, {n: a[lo:hi] for n, a in feed.items()}, hi - lo, where, self._path)

        n_work = min(self._threads, len(bounds))
        if n_work <= 1:
            work(bounds)
            return
        parts = [bounds[len(bounds) * i // n_work : len(bounds) * (i + 1) // n_work] for i in range(n_work)]
        futures = [self._executor().submit(work, part) for part in parts[1:]]
        try:
            work(parts[0])
        finally:
            errors = [f.exception() for f in futures]
        for err in errors:
            if err is not None:
                raise err

    def _input_shape(self, name: str) -> tuple[int, ...]:
        if self._input_meanings[name] == PREVIOUS_DISPLACEMENTS:
            return (self._history, self._n_beads, 3)
        return (self._n_beads, 3)

    @property
    def has_single_frame(self) -> bool:
        """Whether the bundle holds a single-frame graph (``onnx.single_frame``), which single-start rollouts run."""
        return bool(self._manifest["onnx"].get("single_frame"))

    def single_frame_session(self):
        """The onnxruntime session of the single-frame graph (made from the bytes verified at open, on first use).

        Raises:
            UsageError: the bundle is closed or has no single-frame graph.
            InputError: onnxruntime cannot load it, or its inputs differ from the manifest's.
        """
        if self._session is None:
            raise UsageError(f"{self._path}: bundle is closed; open it again")
        if not self.has_single_frame:
            raise UsageError(f"{self._path}: the bundle has no single-frame graph (onnx.single_frame); re-export it")
        if self._single_session is None:
            self._single_session = make_session(self._verified, single_frame=True)
        return self._single_session

    def _stepper(self, batch: int, run_starts: int | None = None):
        """The rollout's fast step function (see :func:`e3traj.runtime._stepper.make_stepper`): the single-frame
        graph when the whole run has one start (``run_starts``, default ``batch``) and the bundle holds one."""
        single = batch == 1 and (batch if run_starts is None else run_starts) == 1 and self.has_single_frame
        return make_stepper(self, batch, single=single)

    def _executor(self):
        with self._pool_lock:
            if self._pool is None:
                from concurrent.futures import ThreadPoolExecutor

                self._pool = ThreadPoolExecutor(max_workers=self._threads - 1, thread_name_prefix="e3traj-bundle")
            return self._pool

    def model_inputs(self, positions: np.ndarray, previous: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Build the model's inputs for frames ``positions`` (and the frames before them, if needed).

        Shapes: ``positions`` ``(B, N, 3)``; ``previous`` ``(B, H, N, 3)``, the :attr:`history` frames before,
        oldest first (or ``(B, N, 3)`` when one frame is needed).
        """
        x = np.asarray(positions, dtype=np.float64)
        return self._inputs(x, self._past(x, previous))

    def _inputs(self, x: np.ndarray, past: np.ndarray | None) -> dict[str, np.ndarray]:
        feed = {}
        for name, meaning in self._input_meanings.items():
            if meaning == POSITIONS:
                feed[name] = x
            elif meaning == PREVIOUS_DISPLACEMENT:
                feed[name] = x - past[:, -1]
            else:
                feed[name] = np.stack(past_displacements(x, past, self._history), axis=1)
        return feed

    def _past(self, x: np.ndarray, previous) -> np.ndarray | None:
        if self._history == 0:
            return None
        if previous is None:
            raise UsageError(
                f"{self._path}: this {self.kind} bundle needs the {self._history} frame(s) before the current one "
                "too; pass previous="
            )
        try:
            return as_past(np.asarray(previous, dtype=np.float64), self._history, x.shape)
        except ValueError as exc:
            raise UsageError(str(exc)) from None

    def step(self, positions: np.ndarray, previous: np.ndarray | None = None) -> np.ndarray:
        """Next frames according to ``outputs[0].meaning``, in float64 (:func:`contract.next_frame`).

        ``displacement``: x + y; ``next_positions``: y; ``velocity_correction``: x + (x - previous) + y;
        ``ar_correction``: the AR extrapolation of the manifest's coefficients + y.

        Shapes: ``positions`` ``(B, N, 3)``; ``previous`` as in :meth:`model_inputs` -> ``(B, N, 3)`` float64.
        """
        x = np.asarray(positions, dtype=np.float64)
        past = self._past(x, previous)
        y = self.predict(self._inputs(x, past))
        with np.errstate(all="ignore"):
            return next_frame(self.output_meaning, x, y, past, self.ar_coefficients)

    # ---- the stored example

    def load_example(self) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """The example inputs (float64, by input name) and the reference output stored at export.

        Shapes: each input ``(B, N, 3)`` (``previous_displacements`` ``(B, H, N, 3)``); reference ``(B, N, 3)``.
        """
        if self._example is None:
            ex_file = self._manifest["example"]["file"]
            where = f"{self._label}/{ex_file}"
            arrays = _load_example(self._files[ex_file], where)
            names = list(self._input_meanings) + [self._output_name]
            missing = [n for n in names if n not in arrays]
            if missing:
                raise InputError(f"{where}: arrays {missing} missing (has {sorted(arrays)}); re-export the bundle")
            batches = {arrays[n].shape[:1] for n in names}
            bad = [
                n
                for n in names
                if arrays[n].shape[1:] != (self._input_shape(n) if n in self._input_meanings else (self._n_beads, 3))
            ]
            if bad or len(batches) != 1:
                shapes = {n: arrays[n].shape for n in names}
                n = self._n_beads
                raise InputError(
                    f"{where}: example arrays have shapes {shapes}; expected (B, {n}, 3) (history: (B, H, {n}, 3))"
                )
            inputs = {n: arrays[n].astype(np.float64) for n in self._input_meanings}
            for n, a in inputs.items():
                if not np.all(np.isfinite(a)):
                    raise InputError(f"{where}[{n}]: holds NaN or Inf; re-export the bundle")
            self._example = (inputs, arrays[self._output_name].astype(np.float64))
        inputs, ref = self._example
        return {k: v.copy() for k, v in inputs.items()}, ref.copy()

    def example_error(self, single_frame: bool = False) -> tuple[float, float]:
        """Max abs and max relative error of the model (``single_frame``: its single-frame graph) on the example
        vs the stored reference outputs."""
        inputs, ref = self.load_example()
        got = self.predict_single_frame(inputs) if single_frame else self.predict(inputs)
        err = float(np.max(np.abs(got - ref))) if ref.size else 0.0
        scale = float(np.max(np.abs(ref))) if ref.size else 0.0
        return err, err / max(scale, 1e-12)

    def recheck_example(self, atol: float | None = None) -> float:
        """Re-run the stored example and return the max abs error vs the reference outputs.

        Raises:
            CheckFailed: the error exceeds ``atol`` (default: the manifest's ``example.atol``).
        """
        tol = self.example_atol if atol is None else float(atol)
        err, _ = self.example_error()
        if not err <= tol:
            raise CheckFailed(
                f"{self._path}: example outputs differ from the export's reference by {err:.3g} (> atol {tol:g}); "
                "this onnxruntime does not reproduce the exported model"
            )
        return err
