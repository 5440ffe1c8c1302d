"""Fuzzed manifests through the host commands (family 1 of the fuzz test; the shared machinery is :mod:`_fuzz`).

``manifest``: byte flips, truncation, JSON edits (delete or re-type a key at any depth, 100,000-deep nesting, huge
numbers, control characters and unicode in names, lists where strings belong, a non-object root).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from _fuzz import (
    ALL,
    BASES,
    BUNDLE_COMMANDS,
    DISK_NAMES,
    NO_SESSION,
    NONE,
    WEIRD_NAMES,
    FuzzInputs,
    Mutation,
    copy_bundle,
    flip,
    load_manifest,
    run_family,
    write_manifest,
)

HUGE_NUMBERS = ("1e999", "-1e999", "1" + "0" * 5000, "NaN", "Infinity", str(2**64), "1e-400", "-0", "9" * 400)
DEEP = 100_000

# --------------------------------------------------------------------------------------------- json helpers


def _json_paths(obj, prefix: tuple = ()) -> list[tuple]:
    """Every path (tuple of keys and indices) below ``obj``."""
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ()
    out = []
    for key, value in items:
        out.append(prefix + (key,))
        out += _json_paths(value, prefix + (key,))
    return out


def _get(obj, path: tuple):
    for key in path:
        obj = obj[key]
    return obj


def _dotted(path: tuple) -> str:
    return ".".join(str(p) for p in path) or "<root>"


def _other_type_value(rng: random.Random, old) -> tuple[str, object]:
    pool = [
        ("null", None),
        ("bool", True),
        ("int", -1),
        ("int", 0),
        ("float", 1.5),
        ("float", 1e308),
        ("str", ""),
        ("str", "x"),
        ("list", []),
        ("list", [1, "a", None]),
        ("dict", {}),
        ("dict", {"a": {"b": 1}}),
        ("int", 2**64),
    ]
    kinds = {type(None): "null", bool: "bool", int: "int", float: "float", str: "str", list: "list", dict: "dict"}
    pool = [p for p in pool if p[0] != kinds.get(type(old))]
    return rng.choice(pool)


# --------------------------------------------------------------------------------------------- family 1: manifest


def _m_flip(rng, bundle):
    raw = (bundle / "manifest.json").read_bytes()
    pos = rng.randrange(len(raw))
    (bundle / "manifest.json").write_bytes(flip(raw, pos, rng))
    return f"flip-byte@{pos}", ALL, bundle


def _m_truncate(rng, bundle):
    raw = (bundle / "manifest.json").read_bytes()
    n = rng.randrange(len(raw) - 2)
    (bundle / "manifest.json").write_bytes(raw[:n])
    return f"truncate@{n}", NONE, bundle


def _m_delete_key(rng, bundle):
    manifest = load_manifest(bundle)
    path = rng.choice(_json_paths(manifest))
    del _get(manifest, path[:-1])[path[-1]]
    write_manifest(bundle, manifest)
    return f"delete-key@{_dotted(path)}", ALL, bundle


def _m_retype(rng, bundle):
    manifest = load_manifest(bundle)
    path = rng.choice(_json_paths(manifest))
    kind, value = _other_type_value(rng, _get(manifest, path))
    _get(manifest, path[:-1])[path[-1]] = value
    write_manifest(bundle, manifest)
    return f"retype@{_dotted(path)}={kind}", ALL, bundle


def _splice_literal(rng, bundle, literal: str) -> str:
    """Put ``literal`` (raw JSON text) at a random path of the manifest; return the path."""
    manifest = load_manifest(bundle)
    path = rng.choice(_json_paths(manifest))
    _get(manifest, path[:-1])[path[-1]] = "@@SPLICE@@"
    text = json.dumps(manifest, indent=2, sort_keys=True).replace('"@@SPLICE@@"', literal, 1)
    (bundle / "manifest.json").write_text(text, encoding="utf-8")
    return _dotted(path)


def _m_deep_nesting(rng, bundle):
    shape = rng.choice(("list", "object"))
    literal = "[" * DEEP + "]" * DEEP if shape == "list" else '{"a":' * DEEP + "1" + "}" * DEEP
    path = _splice_literal(rng, bundle, literal)
    return f"deep-{shape}-nesting@{path}", NONE, bundle


def _m_huge_number(rng, bundle):
    literal = rng.choice(HUGE_NUMBERS)
    path = _splice_literal(rng, bundle, literal)
    return f"huge-number@{path}={literal[:10]}", ALL, bundle


def _m_list_for_string(rng, bundle):
    manifest = load_manifest(bundle)
    required = [("format",), ("onnx", "file"), ("example", "file"), ("inputs", 0, "name"), ("inputs", 0, "dtype")]
    required += [("inputs", 0, "meaning"), ("outputs", 0, "meaning"), ("outputs", 0, "name")]
    informational = [("model", "kind"), ("created_utc",), ("e3traj_version",), ("onnx", "min_onnxruntime")]
    path = rng.choice(required + informational)
    _get(manifest, path[:-1])[path[-1]] = [_get(manifest, path)]
    write_manifest(bundle, manifest)
    return f"list-for-string@{_dotted(path)}", NONE if path in required else ALL, bundle


def _m_weird_name(rng, bundle):
    manifest = load_manifest(bundle)
    how = rng.choice(("rename", "rename-stale", "listed-missing", "input-name", "kind", "dirname"))
    if how in ("rename", "rename-stale"):
        section = rng.choice(("onnx", "example"))
        old, new = manifest[section]["file"], rng.choice(DISK_NAMES)
        (bundle / old).rename(bundle / new)
        manifest["files"][new] = manifest["files"].pop(old)
        manifest[section]["file"] = new
        if how == "rename-stale":
            manifest["files"][new]["size"] += 1
        write_manifest(bundle, manifest)
        return f"{how}:{old}->{new!r}", ALL if how == "rename" else NONE, bundle
    name = rng.choice(WEIRD_NAMES)
    if how == "listed-missing":
        manifest["files"][name] = {"sha256": "0" * 64, "size": 1}
        ok = NONE
    elif how == "input-name":
        manifest["inputs"][0]["name"] = name
        ok = NO_SESSION
    elif how == "kind":
        manifest["model"]["kind"] = name
        ok = ALL
    else:  # a bundle folder with a strange name, and an unlisted file so the error names the folder
        name = rng.choice(DISK_NAMES)
        bundle = bundle.rename(bundle.with_name(name))
        (bundle / "extra.txt").write_text("not listed\n")
        return f"dirname={name!r}+unlisted-file", NONE, bundle
    write_manifest(bundle, manifest)
    return f"{how}={name!r}", ok, bundle


def _m_root(rng, bundle):
    how = rng.choice(("array", "null", "string", "bom", "utf16", "oversize", "empty"))
    text = (bundle / "manifest.json").read_text(encoding="utf-8")
    data = {
        "array": b"[]",
        "null": b"null",
        "string": b'"e3traj-bundle"',
        "bom": b"\xef\xbb\xbf" + text.encode(),
        "utf16": text.encode("utf-16"),
        "empty": b"",
    }.get(how)
    if how == "oversize":
        data = text.encode() + b" " * (17 << 20)
    (bundle / "manifest.json").write_bytes(data)
    return f"root={how}", NONE, bundle


MANIFEST_OPS = (
    _m_flip,
    _m_truncate,
    _m_delete_key,
    _m_retype,
    _m_deep_nesting,
    _m_huge_number,
    _m_list_for_string,
    _m_weird_name,
    _m_root,
)


def _mutate_manifest(rng: random.Random, dest: Path, inputs: FuzzInputs) -> Mutation:
    base = rng.choice(BASES)
    bundle = copy_bundle(inputs.bundles[base], dest / "bundle")
    label, ok, bundle = rng.choice(MANIFEST_OPS)(rng, bundle)
    return Mutation(f"manifest({base}):{label}", bundle, inputs.traj, ok, BUNDLE_COMMANDS)


# --------------------------------------------------------------------------------------------- test


def test_host_commands_survive_fuzzed_manifests(fuzz_inputs, tmp_path):
    run_family("manifest", _mutate_manifest, fuzz_inputs, tmp_path)
