"""Which of e3traj's reproducibility claims hold on every machine, and which only on one.

Run with the dev environment's interpreter: ``.venv/bin/python benchmarks/reproducibility.py [--epochs 2]``.

One machine can imitate others by forcing its libraries onto other CPU kernels. Each variant below runs the
installed ``e3traj`` console script in fresh subprocesses with one setting changed (nothing else in the
environment is touched, and nothing is written into the repository):

* ``OPENBLAS_CORETYPE`` (numpy's BLAS), ``NPY_DISABLE_CPU_FEATURES`` (numpy's SIMD loops), ``GLIBC_TUNABLES``
  (glibc's libm picks FMA variants by CPU);
* ``ATEN_CPU_CAPABILITY`` (torch's vectorised kernels) and ``MKL_ENABLE_INSTRUCTIONS`` (torch's BLAS).

onnxruntime picks its MLAS kernels by CPU too and offers no setting to force another (its graph optimisation
levels give the same bits here). What another CPU's float32 rounding would do is shown instead by a rollout
from the same start moved by one float32 ulp.

Per variant: ``simulate --seed 0`` (sha256 of the frames), ``train`` of the chapter's network (sha256 of the
weights, validation MSE), ``export`` of the default variant's checkpoint (sha256 of ``model.onnx``), and a
``rollout`` of the committed ``artifacts/sim-e3nn-velocity`` bundle (sha256, and the largest deviation from the default
variant's rollout after 10 and after all steps). Prints one Markdown table on stdout, progress on stderr.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from e3traj.runtime._data import frames_sha256, load_trajectory

ROOT = Path(__file__).resolve().parents[1]
EXE = Path(sys.executable).with_name("e3traj")
BUNDLE = ROOT / "artifacts" / "sim-e3nn-velocity"


def _variants() -> dict[str, dict[str, str]]:
    try:
        from numpy._core._multiarray_umath import __cpu_dispatch__, __cpu_features__
    except ImportError:  # numpy < 2
        from numpy.core._multiarray_umath import __cpu_dispatch__, __cpu_features__
    on = [f for f in __cpu_dispatch__ if __cpu_features__.get(f)]
    no_simd = [f for f in on if f.startswith("AVX512") or f in ("X86_V4", "X86_V3", "AVX2", "FMA3")]
    return {
        "default (OPENBLAS_CORETYPE unset)": {},
        "OPENBLAS_CORETYPE=Sandybridge": {"OPENBLAS_CORETYPE": "Sandybridge"},
        f"NPY_DISABLE_CPU_FEATURES={','.join(no_simd)}": {"NPY_DISABLE_CPU_FEATURES": ",".join(no_simd)},
        "GLIBC_TUNABLES=glibc.cpu.hwcaps=-AVX2,-FMA,-AVX512F": {
            "GLIBC_TUNABLES": "glibc.cpu.hwcaps=-AVX2,-FMA,-AVX512F"
        },
        "ATEN_CPU_CAPABILITY=avx2": {"ATEN_CPU_CAPABILITY": "avx2"},
        "ATEN_CPU_CAPABILITY=default": {"ATEN_CPU_CAPABILITY": "default"},
        "MKL_ENABLE_INSTRUCTIONS=AVX2": {"MKL_ENABLE_INSTRUCTIONS": "AVX2"},
    }


def _env(changes: dict[str, str]) -> dict[str, str]:
    drop = ("OPENBLAS_CORETYPE", "NPY_DISABLE_CPU_FEATURES", "GLIBC_TUNABLES", "ATEN_CPU_CAPABILITY",
            "MKL_ENABLE_INSTRUCTIONS")  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(changes)
    return env


def _cli(env: dict[str, str], *args: str) -> str:
    r = subprocess.run([str(EXE), *args], env=env, capture_output=True, text=True, timeout=1800)
    if r.returncode != 0:
        raise SystemExit(f"e3traj {' '.join(args)} failed ({r.returncode}): {r.stderr.strip()}")
    return r.stdout


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:12]


def _weights(path: Path) -> tuple[str, float]:
    import torch

    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    h = hashlib.sha256()
    for k in sorted(ckpt["state_dict"]):
        h.update(k.encode())
        h.update(ckpt["state_dict"][k].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:12], float(ckpt["metrics"]["val_mse"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=int, default=2, help="epochs of the chapter's network per variant")
    ap.add_argument("--steps", type=int, default=500, help="rollout steps")
    args = ap.parse_args()
    variants = _variants()
    rows = []
    ref_traj = None
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        for i, (name, changes) in enumerate(variants.items()):
            print(f"[{i + 1}/{len(variants)}] {name}", file=sys.stderr, flush=True)
            env = _env(changes)
            d = t / f"v{i}"
            d.mkdir()
            _cli(env, "simulate", "--seed", "0", "-o", str(d / "sim.npz"))
            sim = frames_sha256(load_trajectory(d / "sim.npz"))[:12]  # the digest bundles record (3D lift)
            _cli(env, "train", "--model", "e3nn", "--data", str(d / "sim.npz"), "-o", str(d / "m.pt"),
                 "--epochs", str(args.epochs), "--max-time", "900", "--threads", "1", "--quiet")  # fmt: skip
            weights, val = _weights(d / "m.pt")
            _cli(env, "export", str(t / "v0" / "m.pt"), "-o", str(d / "bundle"))
            onnx = _sha((d / "bundle" / "model.onnx").read_bytes())
            _cli(env, "rollout", str(BUNDLE), str(d / "sim.npz"), "--frames", "1700", "--steps", str(args.steps),
                 "--threads", "1", "-o", str(d / "roll.npz"))  # fmt: skip
            with np.load(d / "roll.npz", allow_pickle=False) as z:
                traj = np.asarray(z["traj"])
            if ref_traj is None:
                ref_traj = traj
            dev10 = float(np.max(np.abs(traj[:11] - ref_traj[:11])))
            dev_all = float(np.max(np.abs(traj - ref_traj)))
            rows.append(
                (name, sim, weights, f"{val:.6e}", onnx, _sha(traj.tobytes()), f"{dev10:.1e}", f"{dev_all:.1e}")
            )
        # what one float32 ulp does to a rollout (another CPU's kernels round differently)
        print("[ulp] rollout from a start moved by one float32 ulp", file=sys.stderr, flush=True)
        code = (
            "import sys, numpy as np\n"
            "from e3traj.runtime._bundle import Bundle\n"
            "from e3traj.runtime._data import load_trajectory\n"
            "from e3traj.runtime._rollout import rollout\n"
            "x = load_trajectory(sys.argv[2])\n"
            "x0 = x[1700:1701].astype(np.float32)\n"
            "x0 = np.nextafter(x0, np.float32(np.inf)).astype(np.float64)\n"
            "with Bundle.open(sys.argv[1], threads=1) as b:\n"
            "    np.save(sys.argv[3], rollout(b, x0, int(sys.argv[4]), previous=x[1699:1700]).traj)\n"
        )
        subprocess.run([sys.executable, "-c", code, str(BUNDLE), str(t / "v0" / "sim.npz"), str(t / "ulp.npy"),
                        str(args.steps)], env=_env({}), check=True, timeout=1800)  # fmt: skip
        moved = np.load(t / "ulp.npy", allow_pickle=False)
        ulp_dev10 = float(np.max(np.abs(moved[:11] - ref_traj[:11])))
        ulp_dev_all = float(np.max(np.abs(moved - ref_traj)))

    head = (
        f"setting | simulate sha256 | trained weights sha256 | validation MSE ({args.epochs} epochs) | "
        f"model.onnx sha256 | rollout sha256 ({args.steps} steps) | max deviation, 10 steps | ... all steps"
    )
    print(f"| {head} |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")
    print(f"| start moved by one float32 ulp (rollout only) | | | | | | {ulp_dev10:.1e} | {ulp_dev_all:.1e} |")


if __name__ == "__main__":
    main()
