"""Reading the Kubernetes protobuf bodies that kubectl 1.32+ sends (`kubectl create configmap`,
`kubectl create namespace`): the `k8s\\0` envelope around a runtime.Unknown, decoded into the
same JSON dicts a JSON body gives. Answers stay JSON, which those clients also accept.
"""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from typing import Any

MEDIA_TYPE = "application/vnd.kubernetes.protobuf"
MAGIC = b"k8s\x00"

Schema = dict[int, tuple[str, Any]]  # field number -> (JSON name, type)

TIME: Schema = {1: ("seconds", "int"), 2: ("nanos", "int")}
OWNER_REFERENCE: Schema = {1: ("kind", "string"), 3: ("name", "string"), 4: ("uid", "string"),
                           5: ("apiVersion", "string"), 6: ("controller", "bool"),
                           7: ("blockOwnerDeletion", "bool")}
OBJECT_META: Schema = {
    1: ("name", "string"), 2: ("generateName", "string"), 3: ("namespace", "string"),
    5: ("uid", "string"), 6: ("resourceVersion", "string"), 7: ("generation", "int"),
    8: ("creationTimestamp", "time"), 11: ("labels", "map"), 12: ("annotations", "map"),
    13: ("ownerReferences", [OWNER_REFERENCE]), 14: ("finalizers", ["string"]),
}
KINDS: dict[str, Schema] = {
    "ConfigMap": {1: ("metadata", OBJECT_META), 2: ("data", "map"),
                  3: ("binaryData", "bytesmap"), 4: ("immutable", "bool")},
    "Namespace": {1: ("metadata", OBJECT_META), 2: ("spec", {1: ("finalizers", ["string"])}),
                  3: ("status", {1: ("phase", "string")})},
}
UNKNOWN: Schema = {1: ("typeMeta", {1: ("apiVersion", "string"), 2: ("kind", "string")}),
                   2: ("raw", "raw")}


class ProtobufError(ValueError):
    pass


def _varint(data: bytes, i: int) -> tuple[int, int]:
    shift = value = 0
    while True:
        if i >= len(data):
            raise ProtobufError("truncated varint")
        byte = data[i]
        value |= (byte & 0x7F) << shift
        i += 1
        if not byte & 0x80:
            return value, i
        shift += 7


def _fields(data: bytes) -> list[tuple[int, int | bytes]]:
    """(field number, varint value or length-delimited bytes) in order."""
    out, i = [], 0
    while i < len(data):
        tag, i = _varint(data, i)
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            value, i = _varint(data, i)
            out.append((number, value))
        elif wire == 2:
            length, i = _varint(data, i)
            out.append((number, data[i:i + length]))
            i += length
        elif wire in (1, 5):
            i += 8 if wire == 1 else 4
        else:
            raise ProtobufError(f"unsupported wire type {wire}")
    return out


def _value(kind: Any, raw: int | bytes) -> Any:
    if kind == "string":
        return bytes(raw).decode()  # type: ignore[arg-type]
    if kind in ("raw", "bytes"):
        return bytes(raw)  # type: ignore[arg-type]
    if kind == "bool":
        return bool(raw)
    if kind == "int":
        return int(raw)  # type: ignore[arg-type]
    if kind == "time":
        secs = message(TIME, bytes(raw)).get("seconds", 0)  # type: ignore[arg-type]
        return datetime.fromtimestamp(secs, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    if isinstance(kind, dict):
        return message(kind, bytes(raw))  # type: ignore[arg-type]
    raise ProtobufError(f"unknown field type {kind!r}")


def message(schema: Schema, data: bytes) -> dict[str, Any]:
    """One message as a JSON-style dict; fields not in the schema are skipped."""
    out: dict[str, Any] = {}
    for number, raw in _fields(data):
        if number not in schema:
            continue
        name, kind = schema[number]
        if kind in ("map", "bytesmap"):
            entry = dict(_fields(bytes(raw)))  # type: ignore[arg-type]
            value = bytes(entry.get(2, b""))  # type: ignore[arg-type]
            out.setdefault(name, {})[bytes(entry.get(1, b"")).decode()] = (  # type: ignore[arg-type]
                base64.b64encode(value).decode() if kind == "bytesmap" else value.decode())
        elif isinstance(kind, list):
            out.setdefault(name, []).append(_value(kind[0], raw))
        else:
            out[name] = _value(kind, raw)
    return out


def decode(body: bytes) -> dict[str, Any]:
    """A `k8s\\0`-framed object of a kind in KINDS as a JSON-style dict."""
    if not body.startswith(MAGIC):
        raise ProtobufError("the protobuf body lacks the k8s envelope")
    unknown = message(UNKNOWN, body[len(MAGIC):])
    type_meta = unknown.get("typeMeta", {})
    schema = KINDS.get(type_meta.get("kind", ""))
    if schema is None:
        raise ProtobufError(f"the lab stand-in reads protobuf only for {', '.join(KINDS)} "
                            f"(not {type_meta.get('kind')!r}); send JSON")
    return {"apiVersion": type_meta.get("apiVersion", "v1"), "kind": type_meta["kind"],
            **message(schema, unknown.get("raw", b""))}
