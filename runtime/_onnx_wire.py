"""The parts of ONNX's protobuf wire format a host needs, walked by hand (never with the ``onnx`` package).

Shapes: none; everything here reads bytes.
"""

from __future__ import annotations

__all__ = ["scan_onnx"]


class _ProtoError(Exception):
    pass


def _varint(buf: memoryview, pos: int, end: int) -> tuple[int, int]:
    result = 0
    shift = 0
    while True:
        if pos >= end or shift > 63:
            raise _ProtoError("truncated or overlong varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def _fields(buf: memoryview, start: int, end: int):
    """Yield ``(field, wire_type, value)``; value is an int for varints, ``(start, end)`` for length-delimited."""
    pos = start
    while pos < end:
        key, pos = _varint(buf, pos, end)
        field, wire = key >> 3, key & 7
        if field == 0:
            raise _ProtoError("field number 0")
        if wire == 0:
            val, pos = _varint(buf, pos, end)
            yield field, wire, val
        elif wire == 1:
            pos += 8
            if pos > end:
                raise _ProtoError("truncated fixed64")
        elif wire == 2:
            n, pos = _varint(buf, pos, end)
            if pos + n > end:
                raise _ProtoError("length runs past the end")
            yield field, wire, (pos, pos + n)
            pos += n
        elif wire == 5:
            pos += 4
            if pos > end:
                raise _ProtoError("truncated fixed32")
        else:
            raise _ProtoError(f"unsupported wire type {wire}")


class _OnnxScan:
    """Walk ModelProto -> graphs -> initializers / node attributes / functions and look for external tensors."""

    _MAX_DEPTH = 64

    def __init__(self, data: bytes):
        self.buf = memoryview(data)
        self.ir_version: int | None = None
        self.opsets: dict[str, int] = {}
        self.external: str | None = None  # name of the first externally stored tensor
        self.has_graph = False

    def _sub(self, wire: int, val, what: str):
        if wire != 2:
            raise _ProtoError(f"{what} has the wrong wire type")
        return val

    def model(self) -> None:
        buf = self.buf
        for field, wire, val in _fields(buf, 0, len(buf)):
            if field == 1 and wire == 0:
                self.ir_version = val
            elif field == 7:
                self.has_graph = True
                self.graph(*self._sub(wire, val, "graph"), 1)
            elif field == 8:
                domain, version = "", None
                for f2, w2, v2 in _fields(buf, *self._sub(wire, val, "opset_import")):
                    if f2 == 1 and w2 == 2:
                        domain = bytes(buf[v2[0] : v2[1]]).decode("utf-8", "replace")
                    elif f2 == 2 and w2 == 0:
                        version = v2
                if version is not None:
                    self.opsets[domain] = version
            elif field == 20:  # training_info: initialization (1), algorithm (2) graphs
                for f2, w2, v2 in _fields(buf, *self._sub(wire, val, "training_info")):
                    if f2 in (1, 2):
                        self.graph(*self._sub(w2, v2, "training graph"), 1)
            elif field == 25:  # functions: node (7)
                for f2, w2, v2 in _fields(buf, *self._sub(wire, val, "function")):
                    if f2 == 7:
                        self.node(*self._sub(w2, v2, "function node"), 1)

    def graph(self, start: int, end: int, depth: int) -> None:
        if depth > self._MAX_DEPTH:
            raise _ProtoError("graphs nested too deeply")
        for field, wire, val in _fields(self.buf, start, end):
            if field == 1:
                self.node(*self._sub(wire, val, "node"), depth)
            elif field == 5:
                self.tensor(*self._sub(wire, val, "initializer"))
            elif field == 15:
                self.sparse(*self._sub(wire, val, "sparse_initializer"))

    def node(self, start: int, end: int, depth: int) -> None:
        for field, wire, val in _fields(self.buf, start, end):
            if field == 5:
                self.attribute(*self._sub(wire, val, "attribute"), depth)

    def attribute(self, start: int, end: int, depth: int) -> None:
        for field, wire, val in _fields(self.buf, start, end):
            if field in (5, 10):
                self.tensor(*self._sub(wire, val, "attribute tensor"))
            elif field in (6, 11):
                self.graph(*self._sub(wire, val, "attribute graph"), depth + 1)
            elif field in (22, 23):
                self.sparse(*self._sub(wire, val, "attribute sparse tensor"))

    def sparse(self, start: int, end: int) -> None:
        for field, wire, val in _fields(self.buf, start, end):
            if field in (1, 2):
                self.tensor(*self._sub(wire, val, "sparse values"))

    def tensor(self, start: int, end: int) -> None:
        name = ""
        external = False
        for field, wire, val in _fields(self.buf, start, end):
            if field == 8 and wire == 2:
                name = bytes(self.buf[val[0] : val[1]]).decode("utf-8", "replace")
            elif field == 13:
                external = True
            elif field == 14 and wire == 0 and val == 1:
                external = True
        if external and self.external is None:
            self.external = name or "<unnamed>"


def scan_onnx(data: bytes) -> _OnnxScan:
    """Parse the parts of an ONNX ModelProto the host needs. Raises ``_ProtoError`` on malformed bytes."""
    scan = _OnnxScan(data)
    scan.model()
    return scan
