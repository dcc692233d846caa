"""Object rules of the apiserver stand-in: Status errors, validation, patches, selectors.

Errors are Kubernetes `Status` objects with the real reasons and message shapes (kubectl prints
`Error from server (NotFound): configmaps "x" not found`), each message marked as coming from
the lab stand-in. Validation follows the real apiserver's for the kinds it stores: DNS-1123
names, ConfigMap keys and the 1 MiB size limit, immutable ConfigMaps, strict field checks.
"""

from __future__ import annotations

import base64
import copy
import json
import re
from typing import Any

from api_resources import Resource

STANDIN_NOTE = " (lab stand-in)"
DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
CONFIG_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")
SUBDOMAIN_MSG = ("a lowercase RFC 1123 subdomain must consist of lower case alphanumeric "
                 "characters, '-' or '.', and must start and end with an alphanumeric character "
                 "(e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?"
                 "(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')")
LABEL_MSG = ("a lowercase RFC 1123 label must consist of lower case alphanumeric characters or "
             "'-', and must start and end with an alphanumeric character (e.g. 'my-name',  or "
             "'123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')")
MAX_CONFIGMAP_BYTES = 1024 * 1024
#: Top-level fields a strict decoder accepts, per kind (fieldValidation=Strict).
KNOWN_FIELDS = {
    "ConfigMap": {"apiVersion", "kind", "metadata", "data", "binaryData", "immutable"},
    "Namespace": {"apiVersion", "kind", "metadata", "spec", "status"},
}
KNOWN_METADATA = {"name", "generateName", "namespace", "selfLink", "uid", "resourceVersion",
                  "generation", "creationTimestamp", "deletionTimestamp",
                  "deletionGracePeriodSeconds", "labels", "annotations", "ownerReferences",
                  "finalizers", "managedFields"}


class ApiError(Exception):
    """An error the handler answers with a Status object."""

    def __init__(self, code: int, reason: str, message: str,
                 details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code, self.reason, self.message, self.details = code, reason, message, details

    def status(self) -> dict[str, Any]:
        return status_object(self.code, self.reason, self.message, self.details)


def status_object(code: int, reason: str, message: str, details: dict[str, Any] | None = None
                  ) -> dict[str, Any]:
    body: dict[str, Any] = {"kind": "Status", "apiVersion": "v1", "metadata": {},
                            "status": "Failure", "message": message + STANDIN_NOTE,
                            "reason": reason, "code": code}
    if details:
        body["details"] = details
    return body


def success(r: Resource, name: str, uid: str = "") -> dict[str, Any]:
    details = {"name": name, "kind": r.plural, **({"group": r.group} if r.group else {}),
               **({"uid": uid} if uid else {})}
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
            "details": details}


def not_found(r: Resource, name: str) -> ApiError:
    return ApiError(404, "NotFound", f'{r.group_resource} "{name}" not found',
                    {"name": name, "kind": r.plural, **({"group": r.group} if r.group else {})})


def already_exists(r: Resource, name: str) -> ApiError:
    return ApiError(409, "AlreadyExists", f'{r.group_resource} "{name}" already exists',
                    {"name": name, "kind": r.plural, **({"group": r.group} if r.group else {})})


def conflict(r: Resource, name: str) -> ApiError:
    return ApiError(409, "Conflict", f'Operation cannot be fulfilled on {r.group_resource} '
                    f'"{name}": the object has been modified; please apply your changes to the '
                    "latest version and try again",
                    {"name": name, "kind": r.plural, **({"group": r.group} if r.group else {})})


def forbidden(user: str, verb: str, r: Resource | None, namespace: str | None,
              path: str = "", why: str = "") -> ApiError:
    if r is None:
        return ApiError(403, "Forbidden", f'forbidden: User "{user}" cannot {verb} path '
                                          f'"{path}"{why}')
    where = f'in the namespace "{namespace}"' if namespace else "at the cluster scope"
    return ApiError(403, "Forbidden", f'{r.group_resource} is forbidden: User "{user}" cannot '
                    f'{verb} resource "{r.plural}" in API group "{r.group}" {where}{why}',
                    {"kind": r.plural, **({"group": r.group} if r.group else {})})


def invalid(r: Resource, name: str, causes: list[tuple[str, str]]) -> ApiError:
    """422 Invalid naming each field: `The ConfigMap "x" is invalid: metadata.name: ...`."""
    text = ", ".join(f"{f}: {m}" for f, m in causes)
    return ApiError(422, "Invalid", f'{r.kind} "{name}" is invalid: {text}', {
        "name": name, "kind": r.kind, **({"group": r.group} if r.group else {}),
        "causes": [{"reason": "FieldValueInvalid", "message": m, "field": f}
                   for f, m in causes]})


# --- validation -----------------------------------------------------------------------------------


def check_strict(r: Resource, obj: dict[str, Any]) -> None:
    """fieldValidation=Strict: unknown fields are a 400, as with the real strict decoder."""
    known = KNOWN_FIELDS.get(r.kind)
    unknown = sorted(set(obj) - known) if known else []
    unknown += sorted(f"metadata.{k}" for k in set(obj.get("metadata") or {}) - KNOWN_METADATA)
    if unknown:
        raise ApiError(400, "BadRequest", "strict decoding error: " + ", ".join(
            f'unknown field "{u}"' for u in unknown))


def _name_causes(r: Resource, name: str) -> list[tuple[str, str]]:
    if not name:
        return [("metadata.name", "Required value: name or generateName is required")]
    rule, msg, limit = ((DNS1123_LABEL, LABEL_MSG, 63) if r.kind == "Namespace"
                        else (DNS1123_SUBDOMAIN, SUBDOMAIN_MSG, 253))
    if len(name) > limit:
        return [("metadata.name", f'Invalid value: "{name}": must be no more than {limit} '
                                  "characters")]
    if not rule.match(name):
        return [("metadata.name", f'Invalid value: "{name}": {msg}')]
    return []


def validate(r: Resource, obj: dict[str, Any], old: dict[str, Any] | None = None) -> None:
    """The real apiserver's checks of the kinds stored here (422 with the field on failure)."""
    meta = obj.get("metadata") or {}
    name = meta.get("name", "")
    causes = _name_causes(r, name)
    for field in ("labels", "annotations"):
        values = meta.get(field) or {}
        if not isinstance(values, dict) or not all(isinstance(v, str) for v in values.values()):
            causes.append((f"metadata.{field}", "Invalid value: must be a map of strings"))
    if r.kind == "ConfigMap":
        causes += _configmap_causes(obj, old)
    if causes:
        raise invalid(r, name, causes)


def _configmap_causes(obj: dict[str, Any], old: dict[str, Any] | None) -> list[tuple[str, str]]:
    causes = []
    data, binary = obj.get("data") or {}, obj.get("binaryData") or {}
    if not isinstance(data, dict) or not isinstance(binary, dict):
        return [("data", "Invalid value: must be a map")]
    size = 0
    for field, values in (("data", data), ("binaryData", binary)):
        for key, value in values.items():
            if len(key) > 253 or not CONFIG_KEY.match(key):
                causes.append((f"{field}[{key}]", f'Invalid value: "{key}": a valid config key '
                               "must consist of alphanumeric characters, '-', '_' or '.' (e.g. "
                               "'key.name',  or 'KEY_NAME',  or 'key-name', regex used for "
                               "validation is '[-._a-zA-Z0-9]+')"))
            if key in data and key in binary and field == "binaryData":
                causes.append((f"data[{key}]", f'Invalid value: "{key}": duplicate of key '
                               "present in binaryData"))
            if not isinstance(value, str):
                causes.append((f"{field}[{key}]", "Invalid value: must be a string"))
                continue
            try:
                size += len(base64.b64decode(value, validate=True)) if field == "binaryData" \
                    else len(value.encode())
            except ValueError:
                causes.append((f"{field}[{key}]", "Invalid value: not base64"))
    if size > MAX_CONFIGMAP_BYTES:
        causes.append(("[]", f"Too long: must have at most {MAX_CONFIGMAP_BYTES} bytes"))
    if old and old.get("immutable") and (
            old.get("data") != obj.get("data") or old.get("binaryData") != obj.get("binaryData")
            or not obj.get("immutable")):
        causes.append(("data", "Forbidden: field is immutable when `immutable` is set"))
    return causes


# --- patches ------------------------------------------------------------------------------------

MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_PATCH = "application/strategic-merge-patch+json"
JSON_PATCH = "application/json-patch+json"


def merge_patch(target: Any, patch: Any, *, strategic: bool = False) -> Any:
    """RFC 7386 merge patch; `strategic` also honours the `$patch`/`$retainKeys` directives.

    The stored kinds have no list merge keys that matter to their clients (ConfigMap data is a
    map), so lists are replaced, as both patch types do for lists without a merge strategy.
    """
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    if strategic and patch.get("$patch") == "replace":
        return {k: v for k, v in patch.items() if k != "$patch"}
    if strategic and patch.get("$patch") == "delete":
        return None
    result = dict(target) if isinstance(target, dict) else {}
    retain = patch.get("$retainKeys") if strategic else None
    for key, value in patch.items():
        if strategic and key.startswith("$"):
            continue  # $setElementOrder/..., $deleteFromPrimitiveList/...: ordering hints
        if value is None:
            result.pop(key, None)
        else:
            merged = merge_patch(result.get(key), value, strategic=strategic)
            if merged is None:
                result.pop(key, None)
            else:
                result[key] = merged
    if isinstance(retain, list):
        result = {k: v for k, v in result.items() if k in retain or k in patch}
    return result


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise ApiError(422, "Invalid", f"the JSON patch path {path!r} does not start with /")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _walk(doc: Any, parts: list[str]) -> Any:
    for part in parts:
        doc = doc[int(part)] if isinstance(doc, list) else doc[part]
    return doc


def json_patch(doc: Any, ops: list[dict[str, Any]]) -> Any:
    """RFC 6902: add, remove, replace, move, copy, test."""
    doc = copy.deepcopy(doc)
    for op in ops:
        try:
            kind, parts = op["op"], _pointer(op["path"])
            if kind in ("move", "copy"):
                value = copy.deepcopy(_walk(doc, _pointer(op["from"])))
                if kind == "move":
                    doc = json_patch(doc, [{"op": "remove", "path": op["from"]}])
                doc = json_patch(doc, [{"op": "add", "path": op["path"], "value": value}])
                continue
            if kind == "test":
                if _walk(doc, parts) != op.get("value"):
                    raise ApiError(422, "Invalid", f"the JSON patch test at {op['path']} failed")
                continue
            if not parts:
                doc = copy.deepcopy(op.get("value"))
                continue
            parent, last = _walk(doc, parts[:-1]), parts[-1]
            if isinstance(parent, list):
                index = len(parent) if last == "-" else int(last)
                if kind == "add":
                    parent.insert(index, copy.deepcopy(op["value"]))
                elif kind == "remove":
                    parent.pop(index)
                else:
                    parent[index] = copy.deepcopy(op["value"])
            elif kind == "remove" or (kind == "replace" and last not in parent):
                if last not in parent:
                    raise ApiError(422, "Invalid", f"the JSON patch path {op['path']} does not "
                                                   "exist")
                if kind == "remove":
                    del parent[last]
                else:
                    parent[last] = copy.deepcopy(op["value"])
            else:
                parent[last] = copy.deepcopy(op["value"])
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise ApiError(422, "Invalid", f"the JSON patch {json.dumps(op)} cannot be applied: "
                                           f"{exc}") from None
    return doc


# --- selectors ----------------------------------------------------------------------------------

_SET_RE = re.compile(r"^\s*([^\s!=]+)\s+(in|notin)\s+\(([^)]*)\)\s*$")


def _split_terms(text: str) -> list[str]:
    terms, depth, cur = [], 0, ""
    for ch in text:
        depth += ch == "("
        depth -= ch == ")"
        if ch == "," and depth == 0:
            terms.append(cur)
            cur = ""
        else:
            cur += ch
    return [t for t in (*terms, cur) if t.strip()]


def label_matcher(selector: str) -> Any:
    """A predicate over a labels map from a label selector (=, ==, !=, in, notin, exists, !)."""
    checks = []
    for term in _split_terms(selector or ""):
        m = _SET_RE.match(term)
        if m:
            values = {v.strip() for v in m[3].split(",")}
            key, negate = m[1], m[2] == "notin"
            checks.append(lambda labels, k=key, vs=values, n=negate:
                          (labels.get(k) in vs) != n if k in labels else n)
            continue
        term = term.strip()
        for op in ("!=", "==", "="):
            if op in term:
                key, value = (s.strip() for s in term.split(op, 1))
                checks.append(lambda labels, k=key, v=value, neq=op == "!=":
                              (labels.get(k) == v) != neq)
                break
        else:
            if term.startswith("!"):
                checks.append(lambda labels, k=term[1:].strip(): k not in labels)
            else:
                checks.append(lambda labels, k=term: k in labels)
    return lambda labels: all(check(labels or {}) for check in checks)


def _field(obj: Any, path: str) -> str:
    for part in path.split("."):
        obj = obj.get(part) if isinstance(obj, dict) else None
    return "" if obj is None else str(obj)


def field_matcher(selector: str) -> Any:
    """A predicate over an object from a field selector (`a.b=v`, `a.b==v`, `a.b!=v`).

    The real server allows a few fields per kind (metadata.name, metadata.namespace and e.g.
    involvedObject.* for events); any dotted path of the object is accepted here.
    """
    checks = []
    for term in _split_terms(selector or ""):
        neq = "!=" in term
        field, sep, value = term.replace("==", "=").replace("!=", "=").partition("=")
        if not sep or not field.strip():
            raise ApiError(400, "BadRequest", f"invalid field selector {term!r}")
        checks.append(lambda obj, f=field.strip(), v=value.strip(), n=neq:
                      (_field(obj, f) == v) != n)
    return lambda obj: all(check(obj) for check in checks)
