"""Host footprint: the same rollout on a light host (numpy + onnxruntime + click) and in PyTorch on a dev machine.

Run with the dev environment's interpreter: ``/work/main/.venv/bin/python benchmarks/host_footprint.py``.

What it does (nothing is written into the repository):

1. Makes (or reuses) a light virtual environment, by default ``/tmp/e3traj-light-host``, holding only the base
   package, installed non-editable from a temporary copy of this source tree with ``constraints.txt``.
2. In a temporary folder, trains a quick e3nn checkpoint (``e3traj train --epochs 1 --max-time 20``) and exports
   it with ``--format both`` (ONNX + TorchScript), so every path runs the same weights.
3. Rolls out ``--steps`` steps from one starting frame on 1 thread in fresh processes (1 warm-up, then
   ``--repeats`` timed, medians reported): ONNX through the runtime in the light venv (and the installed
   ``e3traj rollout`` console script), ONNX in the dev venv, TorchScript and the eager ``DisplacementModel``
   (rebuilt from the checkpoint) in the dev venv.

Reported per path: wall time from process spawn to the end of imports and to the first prediction, the rollout
time, the process's wall time, and its peak RSS (the process's own ``VmHWM``; for the console script, through
the same entry point). Sizes are the apparent sizes of the files under each venv's site-packages. Prints one
Markdown report on stdout; progress on stderr.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from e3traj.runtime._bench import cpu_model

ROOT = Path(__file__).resolve().parents[1]
CONSTRAINTS = ROOT / "constraints.txt"
DEFAULT_LIGHT = Path("/tmp/e3traj-light-host")
#: Top-level entries of a fresh venv's site-packages that belong to the installer, not to the host.
SEED = ("pip", "setuptools", "pkg_resources", "_distutils_hack", "distutils-precedence.pth")
_COPY_IGNORE = shutil.ignore_patterns(
    ".git", ".venv", "venv", "build", "dist", "*.egg-info", "__pycache__", "*.pyc", ".pytest_cache", ".ruff_cache",
    "demo-out", "tmp", "tests", "artifacts",
)  # fmt: skip

# A child process prints one JSON line: epoch times (time.time()) after imports, after loading, after the first
# prediction, the rollout's duration, and the final frame's file. argv: mode, model path, trajectory, steps, out.
CHILD = r"""
import json, sys, time
mode, model_path, traj_path, steps, out = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
import numpy as np
from e3traj.runtime._data import load_trajectory
if mode == "onnx":
    from e3traj.runtime._bundle import Bundle
    from e3traj.runtime._rollout import rollout
else:
    import torch
    torch.set_num_threads(1)
    if mode == "eager":
        from e3traj.train._checkpoint import build_model, load_checkpoint
t_import = time.time()
if mode == "onnx":
    model = Bundle.open(model_path, threads=1)
elif mode == "torchscript":
    model = torch.jit.load(model_path).eval()
else:
    model = build_model(load_checkpoint(model_path), name=model_path).eval()
x0 = load_trajectory(traj_path)[-1:]  # (1, 12, 3) float64
t_load = time.time()
first = []
def mark(_n=1):
    if not first:
        first.append(time.time())
t0 = time.perf_counter()
if mode == "onnx":
    traj = rollout(model, x0, steps, progress=mark).traj
else:
    frames = [x0]
    x = x0
    with torch.no_grad():
        for _ in range(steps):
            y = model(torch.from_numpy(x.astype(np.float32))).numpy().astype(np.float64)
            x = x + y
            frames.append(x)
            mark()
    traj = np.stack(frames)
rollout_s = time.perf_counter() - t0
np.save(out, traj)
hwm = int(open("/proc/self/status").read().split("VmHWM:", 1)[1].split()[0])  # kB, this process's own peak
print(json.dumps({"t_import": t_import, "t_load": t_load, "t_first": first[0], "rollout_s": rollout_s, "hwm_kb": hwm}))
"""

# The installed console script is ``from e3traj.runtime.cli import main; sys.exit(main())``; this is the same plus
# a report of the process's peak RSS on stderr at exit.
CLI_WRAPPER = r"""
import atexit, sys
def _report():
    hwm = int(open("/proc/self/status").read().split("VmHWM:", 1)[1].split()[0])
    sys.stderr.write(f"\nVmHWM_kB {hwm}\n")
atexit.register(_report)
from e3traj.runtime.cli import main
sys.argv[0] = "e3traj"
sys.exit(main())
"""

VERSIONS = r"""
import importlib.metadata as m, json, platform
out = {"python": platform.python_version()}
for name in ("numpy", "onnxruntime", "click", "torch", "e3nn", "e3traj"):
    try:
        out[name] = m.version(name)
    except m.PackageNotFoundError:
        pass
print(json.dumps(out))
"""


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV", "CONDA"))}
    env.update({"PYTHONNOUSERSITE": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
    return env


def _run(cmd: list, cwd: Path, timeout: float = 900) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(map(str, cmd))} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def ensure_light_venv(venv: Path, work: Path) -> Path:
    """Create ``venv`` if absent and (re)install the base package from a temporary copy of the tree."""
    python = venv / "bin" / "python"
    if not python.exists():
        _log(f"creating {venv}")
        base = getattr(sys, "_base_executable", None) or sys.executable
        _run([base, "-m", "venv", venv], work)
    src = work / "src"
    shutil.copytree(ROOT, src, ignore=_COPY_IGNORE, symlinks=True)
    _log(f"installing the base package into {venv}")
    _run([python, "-m", "pip", "install", "--quiet", "-c", CONSTRAINTS, src], work)
    listed = {d["name"].lower() for d in json.loads(_run([python, "-m", "pip", "list", "--format=json"], work).stdout)}
    if "torch" in listed:
        raise SystemExit(f"{venv} holds torch; remove it (rm -r {venv}) and rerun")
    return python


def _site_packages(python: Path) -> Path:
    code = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    return Path(subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=True).stdout.strip())


def _tree_bytes(path: Path) -> int:
    if path.is_symlink() or path.is_file():
        return path.lstat().st_size
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for f in files:
            total += os.lstat(os.path.join(dirpath, f)).st_size
    return total


def site_sizes(python: Path) -> dict:
    """Apparent size (bytes) of each top-level entry of the venv's site-packages."""
    site = _site_packages(python)
    return {p.name: _tree_bytes(p) for p in site.iterdir()}


def _mb(n: float) -> str:
    return f"{n / 1e6:,.0f}"


def measure(cmd: list, cwd: Path) -> dict:
    """Run ``cmd`` once: its wall time from spawn, and what it reports (CHILD's JSON line or VmHWM on stderr).

    Peak RSS is the child's own ``VmHWM`` (``/proc/self/status``): ``ru_maxrss`` from ``wait4``/``RUSAGE_CHILDREN``
    would include the parent's RSS, which Linux carries over into a (v)forked child's high-water mark at exec.
    """
    t_spawn = time.time()
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env=_env(), capture_output=True, text=True, timeout=900)
    wall = time.time() - t_spawn
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(map(str, cmd))} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    result = {"wall": wall}
    last = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    if last.startswith("{"):
        data = json.loads(last)
        result.update(
            import_s=data["t_import"] - t_spawn,
            load_s=data["t_load"] - t_spawn,
            first_s=data["t_first"] - t_spawn,
            rollout_s=data["rollout_s"],
            rss_mb=data["hwm_kb"] * 1024 / 1e6,
        )
    hwm = [line.split()[1] for line in proc.stderr.splitlines() if line.startswith("VmHWM_kB ")]
    if hwm:
        result["rss_mb"] = int(hwm[-1]) * 1024 / 1e6
    return result


def bench(cmd: list, cwd: Path, repeats: int) -> dict:
    measure(cmd, cwd)  # warm-up: page cache, pyc files
    runs = [measure(cmd, cwd) for _ in range(repeats)]
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


def machine() -> str:
    model = cpu_model()
    mem = ""
    try:
        kb = int(Path("/proc/meminfo").read_text().split("MemTotal:", 1)[1].split()[0])
        mem = f", {kb / 2**20:.0f} GiB RAM"
    except (OSError, IndexError, ValueError):
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{model}, {os.cpu_count()} logical cores ({usable} usable){mem}; {platform.system()} {platform.release()}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--light-venv", type=Path, default=DEFAULT_LIGHT, help=f"default {DEFAULT_LIGHT}")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3, help="timed fresh processes per path (median)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (checkpoint, bundle)")
    args = parser.parse_args(argv)
    dev_python = Path(sys.executable)
    if importlib.util.find_spec("torch") is None:  # not imported: keep this process small
        raise SystemExit("run this with the dev environment's python (it needs torch): .venv/bin/python") from None
    dev_e3traj = dev_python.parent / "e3traj"

    load_before = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="e3traj-footprint-"))
    try:
        light_python = ensure_light_venv(args.light_venv, work)
        light_e3traj = args.light_venv / "bin" / "e3traj"
        ckpt, bundle, traj = work / "tmp.pt", work / "tmpbundle", work / "traj.npz"
        _log("training a quick checkpoint (<= 20 s) and exporting it with --format both")
        _run([dev_e3traj, "train", "--model", "e3nn", "--data", "sim", "--epochs", 1, "--max-time", 20]
             + ["--threads", 1, "--quiet", "-o", ckpt], work)  # fmt: skip
        _run([dev_e3traj, "export", ckpt, "-o", bundle, "--format", "both"], work)
        _run([light_e3traj, "simulate", "--frames", 50, "-o", traj], work)
        child = work / "child.py"
        child.write_text(CHILD)

        steps = args.steps
        paths = [
            ("ONNX, onnxruntime (light venv)", [light_python, child, "onnx", bundle, traj, steps, work / "onnx.npy"]),
            ("ONNX, onnxruntime (dev venv)", [dev_python, child, "onnx", bundle, traj, steps, work / "onnx-dev.npy"]),
            (
                "TorchScript, torch (dev venv)",
                [dev_python, child, "torchscript", bundle / "model.torchscript.pt", traj, steps, work / "ts.npy"],
            ),
            ("eager DisplacementModel (dev venv)", [dev_python, child, "eager", ckpt, traj, steps, work / "eager.npy"]),
        ]
        results = {}
        for name, cmd in paths:
            _log(f"timing {name}")
            results[name] = bench(cmd, work, args.repeats)
        cli_cmd = [light_e3traj, "rollout", bundle, traj, "--steps", steps, "--threads", 1]
        cli_cmd += ["-o", work / "cli.npz", "--force"]
        _log("timing e3traj rollout (light venv console script; peak RSS through the same entry point + VmHWM)")
        cli = bench(cli_cmd, work, args.repeats)
        wrapper = work / "cli_wrapper.py"
        wrapper.write_text(CLI_WRAPPER)
        cli["rss_mb"] = bench([light_python, wrapper] + cli_cmd[1:], work, args.repeats)["rss_mb"]

        import numpy as np

        ref = np.load(work / "onnx.npy")
        diffs = {}
        for name, cmd in paths:
            diffs[name] = float(np.max(np.abs(np.load(cmd[-1]) - ref)))
        with np.load(work / "cli.npz", allow_pickle=False) as data:
            cli_diff = float(np.max(np.abs(data["traj"] - ref)))

        light_sizes, dev_sizes = site_sizes(light_python), site_sizes(dev_python)
        light_v = json.loads(_run([light_python, "-c", VERSIONS], work).stdout)
        load_after = os.getloadavg()
        dev_v = json.loads(_run([dev_python, "-c", VERSIONS], work).stdout)
    finally:
        if args.keep:
            _log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    def top(sizes: dict, n: int = 4) -> str:
        big = sorted(((v, k) for k, v in sizes.items() if not k.endswith((".dist-info", ".libs"))), reverse=True)
        return ", ".join(f"{k} {_mb(v)}" for v, k in big[:n])

    light_total = sum(light_sizes.values())
    light_seed = sum(v for k, v in light_sizes.items() if k.startswith(SEED))
    dev_total = sum(dev_sizes.values())
    torch_mb = sum(v for k, v in dev_sizes.items() if k == "torch" or k.startswith(("torch-", "torch.libs")))

    lines = [
        f"## Host footprint: {steps}-step rollout from 1 starting frame, 1 thread",
        "",
        f"Machine: {machine()}; load average (1 min) {load_before[0]:.2f} before, {load_after[0]:.2f} after  ",
        f"Light venv ({args.light_venv}): " + ", ".join(f"{k} {v}" for k, v in light_v.items()) + "  ",
        f"Dev venv ({Path(sys.prefix)}): " + ", ".join(f"{k} {v}" for k, v in dev_v.items()) + "  ",
        f"Model: a 1-epoch e3nn checkpoint exported with --format both; medians of {args.repeats} fresh processes "
        "after 1 warm-up. Times are wall seconds from process spawn.",
        "",
        "| path | site-packages (MB) | imports done (s) | first prediction (s) | "
        f"{steps} steps (s) | process wall (s) | peak RSS (MB) | max abs diff vs light ONNX |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, _cmd in paths:
        r = results[name]
        size = _mb(light_total) if "light" in name else _mb(dev_total)
        lines.append(
            f"| {name} | {size} | {r['import_s']:.2f} | {r['first_s']:.2f} | {r['rollout_s']:.3f} | "
            f"{r['wall']:.2f} | {r['rss_mb']:.0f} | {diffs[name]:.1e} |"
        )
    lines.append(
        f"| `e3traj rollout` CLI (light venv) | {_mb(light_total)} | | | | {cli['wall']:.2f} | {cli['rss_mb']:.0f} "
        f"| {cli_diff:.1e} |"
    )
    lines += [
        "",
        f"Light site-packages: {_mb(light_total)} MB, of which {_mb(light_seed)} MB is pip/setuptools from "
        f"`python -m venv` (host packages alone: {_mb(light_total - light_seed)} MB). Largest: {top(light_sizes)}.  ",
        f"Dev site-packages: {_mb(dev_total)} MB, torch alone {_mb(torch_mb)} MB. Largest: {top(dev_sizes)}.",
    ]
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
