"""Fuzzed bundle archives through the host commands (family 4 of the fuzz test; the machinery is :mod:`_fuzz`).

``archive``: flips and truncation of the gzip stream, and archives rebuilt with ``tarfile``: extra and duplicate
members, huge pax headers, pax overrides, wrong sizes, links, devices, absolute paths, '..', nested folders.
"""

from __future__ import annotations

import gzip
import random
import tarfile
from pathlib import Path

from _fuzz import (
    ALL,
    BUNDLE_COMMANDS,
    DISK_NAMES,
    NONE,
    FuzzInputs,
    Mutation,
    bundle_members,
    file_info,
    flip,
    run_family,
    special_info,
    tar_bytes,
)


def _patch_tar_size(tar: bytes, member: str, size: int) -> bytes:
    """Rewrite the ustar size field (and checksum) of ``member``'s header block."""
    buf = bytearray(tar)
    pos = 0
    while pos + 512 <= len(buf):
        name = bytes(buf[pos : pos + 100]).rstrip(b"\0").decode()
        if name == member:
            buf[pos + 124 : pos + 136] = f"{size:011o}\0".encode()
            buf[pos + 148 : pos + 156] = b" " * 8
            buf[pos + 148 : pos + 156] = f"{sum(buf[pos : pos + 512]):06o}\0 ".encode()
            return bytes(buf)
        declared = int(bytes(buf[pos + 124 : pos + 136]).rstrip(b"\0 ") or b"0", 8)
        pos += 512 + -(-declared // 512) * 512
    raise AssertionError(member)


def _a_gzip_bytes(rng, files, archive):
    how = rng.choice(("flip", "flip", "truncate", "trailing-garbage", "concat", "header-flags", "plain-tar", "garbage"))
    if how == "flip":
        pos = rng.randrange(len(archive))
        return f"gz-flip@{pos}", flip(archive, pos, rng), ALL
    if how == "truncate":
        n = rng.randrange(int(len(archive) * 0.9))
        return f"gz-truncate@{n}", archive[:n], NONE
    if how == "trailing-garbage":
        return "gz-trailing-garbage", archive + rng.randbytes(rng.randint(1, 600)), ALL
    if how == "concat":
        return "gz-concat", archive + archive, ALL
    if how == "header-flags":
        flags = rng.choice((0x02, 0x04, 0x08, 0x10, 0xE0))
        return f"gz-header-flags={flags:#x}", archive[:3] + bytes([flags]) + archive[4:], ALL
    if how == "plain-tar":
        return "plain-tar-not-gzip", gzip.decompress(archive), NONE
    return "gzip-of-garbage", gzip.compress(rng.randbytes(4096), mtime=0), NONE


def _a_members(rng, files, archive):
    top = "sim-e3nn"
    members = bundle_members(files, top)
    how = rng.choice(
        (
            "extra",
            "duplicate",
            "symlink",
            "hardlink",
            "absolute",
            "dotdot",
            "nested",
            "two-tops",
            "empty",
            "fifo",
            "chardev",
            "many",
            "weird-extra",
        )
    )
    if how == "extra":
        members.append((file_info(f"{top}/extra.txt", 3), b"hi\n"))
    elif how == "duplicate":
        info, data = rng.choice(members[1:])
        members.append((file_info(info.name, len(data)), data))
    elif how in ("symlink", "hardlink"):
        target = rng.choice(("/etc/passwd", "example.npz", f"{top}/example.npz", "../../../../etc/hostname"))
        kind = tarfile.SYMTYPE if how == "symlink" else tarfile.LNKTYPE
        members = [m for m in members if not m[0].name.endswith("model.onnx")]
        members.append((special_info(f"{top}/model.onnx", kind, target), None))
        how += f"->{target}"
    elif how == "absolute":
        members = [(file_info("/" + info.name, info.size), data) for info, data in members if data is not None]
    elif how == "dotdot":
        name = rng.choice(("../evil.txt", f"{top}/../evil.txt", f"{top}/../{top}/extra.txt"))
        members.append((file_info(name, 3), b"hi\n"))
        how += f":{name}"
    elif how == "nested":
        members.append((special_info(f"{top}/sub", tarfile.DIRTYPE), None))
        members.append((file_info(f"{top}/sub/model.onnx", len(files["model.onnx"])), files["model.onnx"]))
    elif how == "two-tops":
        members += bundle_members(files, "other")
    elif how == "empty":
        members = []
    elif how in ("fifo", "chardev"):
        kind = tarfile.FIFOTYPE if how == "fifo" else tarfile.CHRTYPE
        members.append((special_info(f"{top}/dev", kind), None))
    elif how == "many":
        members += [(file_info(f"{top}/f{i:03d}", 1), b"x") for i in range(80)]
    else:
        name = rng.choice(DISK_NAMES)
        members.append((file_info(f"{top}/{name}", 3), b"hi\n"))
        how += f"={name!r}"
    return f"tar:{how}", gzip.compress(tar_bytes(members), mtime=0), NONE


def _a_headers(rng, files, archive):
    top = "sim-e3nn"
    how = rng.choice(("huge-pax", "pax-size", "pax-path", "wrong-size", "weird-top", "weird-top-broken", "layout"))
    if how == "huge-pax":
        n = rng.choice((1 << 20, 8 << 20, 30 << 20))
        members = bundle_members(files, top)
        members[1][0].pax_headers = {"comment": "x" * n}
        return f"tar:huge-pax={n}", gzip.compress(tar_bytes(members), mtime=0, compresslevel=1), ALL
    if how in ("pax-size", "pax-path"):
        value = rng.choice(("0", "1", "-1", "99999999999999999999", "1e3", "")) if how == "pax-size" else None
        value = value if value is not None else rng.choice(("../x", "/etc/x", f"{top}/sub/x", f"{top}/\n"))
        members = bundle_members(files, top)
        members[-1][0].pax_headers = {how[4:]: value}
        try:
            data = gzip.compress(tar_bytes(members), mtime=0)
        except (ValueError, tarfile.TarError, OSError):
            return f"tar:{how}={value!r}(unbuildable)", archive[:100], NONE
        return f"tar:{how}={value!r}", data, NONE
    if how == "wrong-size":
        name = rng.choice(sorted(files))
        delta = rng.choice((-1, 1, 512, 10**9, -len(files[name])))
        tar = tar_bytes(bundle_members(files, top), fmt=tarfile.USTAR_FORMAT)
        patched = _patch_tar_size(tar, f"{top}/{name}", len(files[name]) + delta)
        return f"tar:wrong-size:{name}{delta:+d}", gzip.compress(patched, mtime=0), NONE
    if how in ("weird-top", "weird-top-broken"):
        weird = rng.choice(DISK_NAMES)
        members = bundle_members(files, weird)
        if how == "weird-top-broken":
            members.append((file_info(f"{weird}/extra.txt", 3), b"hi\n"))
        return f"tar:{how}={weird!r}", gzip.compress(tar_bytes(members), mtime=0), ALL if how == "weird-top" else NONE
    layout = rng.choice(("no-dir-entry", "reversed", "ustar", "gnu"))
    members = bundle_members(files, top, with_dir=layout != "no-dir-entry")
    members = members[::-1] if layout == "reversed" else members
    fmt = {"ustar": tarfile.USTAR_FORMAT, "gnu": tarfile.GNU_FORMAT}.get(layout, tarfile.PAX_FORMAT)
    return f"tar:layout={layout}", gzip.compress(tar_bytes(members, fmt=fmt), mtime=0), ALL


ARCHIVE_OPS = (_a_gzip_bytes, _a_members, _a_members, _a_headers)


def _mutate_archive(rng: random.Random, dest: Path, inputs: FuzzInputs) -> Mutation:
    src = inputs.bundles["sim-e3nn"]
    files = {p.name: p.read_bytes() for p in sorted(src.iterdir())}
    label, data, ok = rng.choice(ARCHIVE_OPS)(rng, files, inputs.archive.read_bytes())
    dest.mkdir(parents=True)
    path = dest / "bundle.tar.gz"
    path.write_bytes(data)
    return Mutation(f"archive(sim-e3nn):{label}", path, inputs.traj, ok - {"pack"}, BUNDLE_COMMANDS)


# --------------------------------------------------------------------------------------------- test


def test_host_commands_survive_fuzzed_archives(fuzz_inputs, tmp_path):
    run_family("archive", _mutate_archive, fuzz_inputs, tmp_path, setup_failures=fuzz_inputs.setup_failures)
