"""The seeded, bounded fuzz test of the host commands (inspect, check, rollout, pack, bench and evaluate), shared
by its five parts: one test module per mutation family, ``tests/runtime/test_fuzz_{manifest,onnx,example,archive,
traj}.py`` (each module's docstring lists its mutations; the zip and ``.npy`` ones are :mod:`_fuzz_npz`'s).

What it does. Each case takes one of the committed reference bundles (``sim-e3nn``, ``sim-e3nn-velocity``), a
packed ``.tar.gz`` of ``sim-e3nn`` or a short simulated trajectory, applies one mutation of its family and runs two
of the commands that take that input through the installed console script, in a subprocess. Every run must end
with exit code 2-5 (0 only where the mutation can leave the input valid), at most one non-empty line on stderr, no
traceback, no output file and no leftover (temporary) file in the output folder, the working folder or
``$TMPDIR``, and a maximum RSS of the children under 1.5 GiB. Failures are collected and reported together at the
end of the family's test, each with its case id (``family(base):mutation -> command``), exit code and stderr.

How it is bounded. The whole run has ``BUDGET_S`` seconds and at least ``MIN_CASES`` cases, split evenly over the
families: each family's test (:func:`run_family`) draws every choice from one ``random.Random`` seeded with
``SEED`` and the family's name, so its sequence of cases is fixed, and stops once ``FAMILY_BUDGET_S`` seconds have
passed, but only after ``FAMILY_MIN_CASES`` cases (and asserts that many ran). Inputs are small (rollout
``--steps 3``, ``check --trials 1``, the smallest ``bench`` settings, a 64-frame trajectory); every subprocess has
a ``TIMEOUT_S`` timeout (a timeout is a failure) and an address-space limit (``AS_LIMIT``) so a memory bomb fails
the case instead of the machine. The pristine inputs are made once per session (:func:`prepare_inputs`, behind
the ``fuzz_inputs`` fixture of ``tests/runtime/conftest.py``).
"""

from __future__ import annotations

import gzip
import io
import json
import os
import random
import re
import resource
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

SEED = 20261201
BUDGET_S = 50.0
MIN_CASES = 30
MAX_CASES = 500
COMMANDS_PER_CASE = 2
TIMEOUT_S = 60
MAX_RSS_KIB = 1536 * 1024
AS_LIMIT = 4 << 30
ALLOWED_CODES = {0, 2, 3, 4, 5}
MAX_SHOWN = 30

#: the mutation families, one test module each; the budget and the minimum of cases are split evenly over them
FAMILIES = ("manifest", "onnx", "example", "archive", "traj")
FAMILY_BUDGET_S = BUDGET_S / len(FAMILIES)
FAMILY_MIN_CASES = MIN_CASES // len(FAMILIES)
FAMILY_MAX_CASES = MAX_CASES // len(FAMILIES)

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
E3TRAJ = Path(sys.executable).with_name("e3traj")
BASES = ("sim-e3nn", "sim-e3nn-velocity")

BUNDLE_COMMANDS = ("inspect", "check", "rollout", "bench", "evaluate", "pack")
TRAJ_COMMANDS = ("rollout", "evaluate")
ALL = frozenset(BUNDLE_COMMANDS)
NONE: frozenset[str] = frozenset()
NO_EXAMPLE = frozenset({"inspect", "pack", "rollout", "evaluate"})  # commands that never read example.npz
NO_SESSION = frozenset({"inspect", "pack"})  # commands that never create an onnxruntime session
TRAJ_OK = frozenset(TRAJ_COMMANDS)

#: names with control characters, unicode and other surprises (for manifest fields and member names)
WEIRD_NAMES = (
    "\x1b[31mred\x1b[0m.onnx",
    "new\nline.onnx",
    "carriage\rreturn.npz",
    "tab\there.onnx",
    "ü-ñ-漢字.onnx",
    "\u202eevil.onnx",
    "nul\x00byte.onnx",
    "a" * 300,
    " ",
    "-rf",
)
DISK_NAMES = tuple(n for n in WEIRD_NAMES if "\x00" not in n and len(n.encode()) < 200)


@dataclass(frozen=True)
class FuzzInputs:
    """The pristine inputs every case starts from (prepared once per session)."""

    bundles: dict[str, Path]
    archive: Path
    traj: Path
    setup_failures: tuple[str, ...] = ()


@dataclass(frozen=True)
class Mutation:
    """One mutated input: ``ok`` names the commands for which exit code 0 is legitimate."""

    label: str
    bundle: Path
    traj: Path
    ok: frozenset[str]
    commands: tuple[str, ...]


# --------------------------------------------------------------------------------------------- subprocess helpers


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (AS_LIMIT, AS_LIMIT))


def _run_e3traj(args: list[str], cwd: Path, tmpdir: Path) -> subprocess.CompletedProcess | None:
    """Run ``e3traj ARGS`` in ``cwd`` with ``TMPDIR=tmpdir``; None on a timeout."""
    env = dict(os.environ, TMPDIR=str(tmpdir), PYTHONDONTWRITEBYTECODE="1")
    try:
        return subprocess.run(
            [str(E3TRAJ), *args],
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=TIMEOUT_S,
            preexec_fn=_limit_memory,
        )
    except subprocess.TimeoutExpired:
        return None


def _children_max_rss_kib() -> int:
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss


def _command_args(command: str, m: Mutation, out: Path, rng: random.Random) -> tuple[list[str], list[Path]]:
    """The argv of one host command on a mutation, and the output paths it is asked to write."""
    bundle, traj = str(m.bundle), str(m.traj)
    if command == "inspect":
        return ["inspect", bundle] + (["--json"] if rng.random() < 0.3 else []), []
    if command == "check":
        return ["check", bundle, "--trials", "1", "--threads", "1"], []
    if command == "bench":
        small = ["--batch-sizes", "1", "--threads", "1", "--repeats", "1", "--seconds", "0.01"]
        return ["bench", bundle, *small, "--rollout-steps", "2", "--roofline-seconds", "0.01"], []
    if command == "evaluate":
        return ["evaluate", bundle, "--data", traj, "--starts", "1"], []
    if command == "pack":
        return ["pack", bundle, "-o", str(out / "packed.tar.gz")], [out / "packed.tar.gz"]
    if command == "rollout":
        outputs = [out / "roll.npz"] + ([out / "roll.xyz"] if rng.random() < 0.4 else [])
        args = ["rollout", bundle, traj, "-o", str(outputs[0]), "--steps", "3"]
        return args + (["--xyz", str(outputs[1])] if len(outputs) > 1 else []), outputs
    raise AssertionError(command)


def _stderr_lines(text: str) -> list[str]:
    return [ln for ln in re.split(r"[\r\n]+", text) if ln.strip()]


def _traceback_tail(text: str) -> str:
    lines = _stderr_lines(text)
    return lines[-1].strip()[:160] if lines else ""


#: what ``tempfile`` and e3traj name their temporaries; other TMPDIR entries are not ours (onnxruntime's import
#: drops a '.ses' marker file there, on success too)
_TEMP_PREFIXES = ("tmp", "e3traj", ".e3traj")


def _leftovers(folder: Path, allowed: set[Path], prefixes: tuple[str, ...] = ("",)) -> list[str]:
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if p not in allowed and p.name.startswith(prefixes))


def _judge(
    command: str, ok: frozenset[str], proc: subprocess.CompletedProcess, outputs: list[Path], dirs: dict[str, Path]
) -> list[str]:
    """Problems of one finished run (an empty list when it behaved)."""
    problems = []
    rc = proc.returncode
    stdout = proc.stdout.decode("utf-8", "replace")
    stderr = proc.stderr.decode("utf-8", "replace")
    if rc not in ALLOWED_CODES:
        problems.append(f"exit code {rc}")
    for name, text in (("stderr", stderr), ("stdout", stdout)):
        if "Traceback" in text:
            problems.append(f"traceback on {name}: {_traceback_tail(text)!r}")
    n_lines = len(_stderr_lines(stderr))
    if n_lines > 1:
        problems.append(f"{n_lines} lines on stderr")
    if rc == 0 and command not in ok:
        problems.append("exit 0 on an input this command must refuse")
    partial_ok = command == "rollout" and rc == 5  # an incomplete rollout keeps the frames before the failure
    if rc != 0 and not partial_ok:
        problems += [f"left output {p.name!r} after exit {rc}" for p in outputs if p.exists() or p.is_symlink()]
    if rc == 0:
        problems += [f"exit 0 but no {p.name!r}" for p in outputs if not p.is_file()]
    for where, folder in dirs.items():
        extra = _leftovers(folder, set(outputs), _TEMP_PREFIXES if where == "TMPDIR" else ("",))
        if extra:
            problems.append(f"leftovers in {where}: {extra[:5]}")
    return problems


# --------------------------------------------------------------------------------------------- byte helpers


def flip(data: bytes, pos: int, rng: random.Random) -> bytes:
    buf = bytearray(data)
    buf[pos] ^= 1 << rng.randrange(8)
    return bytes(buf)


def _sha256(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------------------------- bundle helpers


def copy_bundle(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest)
    return dest


def load_manifest(bundle: Path) -> dict:
    return json.loads((bundle / "manifest.json").read_text(encoding="utf-8"))


def write_manifest(bundle: Path, manifest: dict) -> None:
    (bundle / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def rehash(bundle: Path, manifest: dict | None = None) -> None:
    """Re-list the sha256 and size of every listed file that exists, so a mutated file passes verification."""
    manifest = load_manifest(bundle) if manifest is None else manifest
    for name, entry in manifest["files"].items():
        path = bundle / name
        if path.is_file():
            data = path.read_bytes()
            entry.update(sha256=_sha256(data), size=len(data))
    write_manifest(bundle, manifest)


# --------------------------------------------------------------------------------------------- archive helpers


def file_info(name: str, size: int, **pax) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.pax_headers = size, 0o644, pax
    return info


def special_info(name: str, kind: bytes, target: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode = kind, target, 0o755 if kind == tarfile.DIRTYPE else 0o644
    return info


def tar_bytes(members: list[tuple[tarfile.TarInfo, bytes | None]], fmt: int = tarfile.PAX_FORMAT) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=fmt) as tf:
        for info, data in members:
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    return raw.getvalue()


def bundle_members(files: dict[str, bytes], top: str, with_dir: bool = True) -> list:
    members = [(special_info(top, tarfile.DIRTYPE), None)] if with_dir else []
    return members + [(file_info(f"{top}/{name}", len(data)), data) for name, data in sorted(files.items())]


# --------------------------------------------------------------------------------------------- inputs and runs


def prepare_inputs(root: Path) -> FuzzInputs:
    """Copies of two reference bundles, a packed archive of sim-e3nn and a 64-frame simulated trajectory, in ``root``.

    If ``e3traj pack`` fails on the pristine bundle, an equivalent archive is built here so the other cases still
    run, and the failure is reported with the archive family's failures (``setup_failures``: that archive is its
    input).
    """
    bundles = {name: copy_bundle(ARTIFACTS / name, root / name) for name in BASES}
    archive, traj = root / "sim-e3nn.tar.gz", root / "traj.npz"
    simulate = subprocess.run(
        [str(E3TRAJ), "simulate", "--frames", "64", "-o", str(traj)], cwd=root, capture_output=True, timeout=TIMEOUT_S
    )
    assert simulate.returncode == 0, simulate.stderr.decode(errors="replace")
    pack = subprocess.run(
        [str(E3TRAJ), "pack", str(bundles["sim-e3nn"]), "-o", str(archive)],
        cwd=root,
        capture_output=True,
        timeout=TIMEOUT_S,
    )
    setup_failures = []
    if pack.returncode != 0 or not archive.is_file():
        stderr = pack.stderr.decode("utf-8", "replace")
        setup_failures.append(
            f"setup: e3traj pack of the pristine sim-e3nn exited {pack.returncode}: {stderr[-300:]!r}"
        )
        archive.write_bytes(pristine_archive(bundles["sim-e3nn"]))
    return FuzzInputs(bundles=bundles, archive=archive, traj=traj, setup_failures=tuple(setup_failures))


def pristine_archive(bundle: Path) -> bytes:
    """What ``e3traj pack`` writes: one top-level folder, sorted members, PAX headers, gzip without mtime."""
    files = {p.name: p.read_bytes() for p in sorted(bundle.iterdir())}
    return gzip.compress(tar_bytes(bundle_members(files, bundle.name)), mtime=0)


def _relative(args: list[str], case_dir: Path, inputs: FuzzInputs) -> str:
    text = " ".join(args)
    for folder, short in ((case_dir, "CASE"), (inputs.traj.parent, "INPUTS")):
        text = text.replace(str(folder), short)
    return text


def _run_case(
    case_dir: Path, mutation: Mutation, command: str, rng: random.Random, inputs: FuzzInputs, rss_before: int
) -> list[str]:
    """Run one command on one mutation; return its failure lines."""
    run_dir = case_dir / f"run-{command}"
    dirs = {"output folder": run_dir / "out", "cwd": run_dir / "cwd", "TMPDIR": run_dir / "tmp"}
    for folder in dirs.values():
        folder.mkdir(parents=True)
    args, outputs = _command_args(command, mutation, dirs["output folder"], rng)
    case_id = f"{mutation.label} -> {command}"
    proc = _run_e3traj(args, dirs["cwd"], dirs["TMPDIR"])
    if proc is None:
        return [f"{case_id}: timed out after {TIMEOUT_S} s [{_relative(args, case_dir, inputs)}]"]
    problems = _judge(command, mutation.ok, proc, outputs, dirs)
    rss = _children_max_rss_kib()
    if rss > MAX_RSS_KIB and rss > rss_before:
        problems.append(f"max RSS of the children {rss // 1024} MiB (limit {MAX_RSS_KIB // 1024} MiB)")
    if not problems:
        return []
    stderr = proc.stderr.decode("utf-8", "replace")[:300]
    return [
        f"{case_id}: {'; '.join(problems)} (exit {proc.returncode}) "
        f"[{_relative(args, case_dir, inputs)}] stderr: {stderr!r}"
    ]


#: a family's mutator: ``(rng, dest, inputs) -> Mutation`` with the mutated input written under ``dest``
Mutator = Callable[[random.Random, Path, FuzzInputs], Mutation]


def run_family(family: str, mutate: Mutator, inputs: FuzzInputs, tmp_path: Path, setup_failures=()) -> None:
    """Fuzz one family for its share of the budget; assert its minimum of cases ran and nothing misbehaved.

    ``setup_failures`` (the pristine inputs' problems) are reported with this family's failures.
    """
    assert family in FAMILIES, family
    rng = random.Random(f"{SEED}:{family}")
    failures: list[str] = list(setup_failures)
    n_cases = n_commands = 0
    start = time.monotonic()
    while n_cases < FAMILY_MAX_CASES and (n_cases < FAMILY_MIN_CASES or time.monotonic() - start < FAMILY_BUDGET_S):
        case_dir = tmp_path / f"case{n_cases:03d}"
        mutation = mutate(rng, case_dir / "input", inputs)
        commands = rng.sample(mutation.commands, min(COMMANDS_PER_CASE, len(mutation.commands)))
        case_failures = []
        for command in commands:
            rss_before = _children_max_rss_kib()
            case_failures += _run_case(case_dir, mutation, command, rng, inputs, rss_before)
            n_commands += 1
        if not case_failures:
            shutil.rmtree(case_dir, ignore_errors=True)  # keep only the failing cases on disk
        failures += case_failures
        n_cases += 1
    elapsed = time.monotonic() - start
    print(f"\nfuzz {family}: {n_cases} cases, {n_commands} commands, {len(failures)} failures, {elapsed:.1f} s")
    assert n_cases >= FAMILY_MIN_CASES, f"only {n_cases} {family} cases ran"
    shown = "\n".join(failures[:MAX_SHOWN])
    more = f"\n... and {len(failures) - MAX_SHOWN} more" if len(failures) > MAX_SHOWN else ""
    assert not failures, f"{len(failures)} of {n_commands} fuzzed host commands misbehaved:\n{shown}{more}"
