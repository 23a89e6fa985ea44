"""Read a YAML file into plain Python values while remembering where every value was.

Hostile input (binary, non-UTF-8, huge files, alias bombs, duplicate keys) is refused
with a located `PolicyError`, never a traceback or a hang.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import re

import yaml

from satupintu.policy.errors import Issue, PolicyError

MAX_FILE_BYTES = 16 * 1024 * 1024
MAX_NODES = 2_000_000  # after alias expansion; a 5,000-OPD policy has ~200,000
MAX_DEPTH = 64

_Base: type = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _Loader(_Base):  # type: ignore[misc, valid-type]
    """libyaml composer without PyYAML's Python-side implicit resolvers: `_scalar` types
    plain scalars itself (YAML 1.2 core rules), which is both faster and safer."""

    yaml_implicit_resolvers: dict = {}  # noqa: RUF012

    def resolve(self, kind: type, value: object, implicit: object) -> str:
        if kind is yaml.ScalarNode:
            return "tag:yaml.org,2002:str"
        return "tag:yaml.org,2002:seq" if kind is yaml.SequenceNode else "tag:yaml.org,2002:map"

Path_ = tuple[str | int, ...]


@dataclass(slots=True)
class Located:
    """Parsed document plus (line, column) of every value, keyed by its path."""

    file: str
    data: Any
    positions: dict[Path_, tuple[int, int]]

    def position(self, path: Path_) -> tuple[int, int]:
        """Position of `path`, or of its nearest ancestor that has one."""
        path = tuple(path)
        while path:
            if path in self.positions:
                return self.positions[path]
            path = path[:-1]
        return self.positions.get((), (1, 1))


def _refuse(file: str, line: int, col: int, message: str) -> PolicyError:
    return PolicyError([Issue(file, line, col, message)])


def read_text(path: str | Path) -> tuple[str, str]:
    """Return (display name, text) or raise PolicyError for unreadable/binary files."""
    name = str(path)
    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise _refuse(name, 1, 1, f"cannot read file: {exc.strerror or exc}") from None
    return name, decode(name, raw)


def decode(name: str, raw: bytes) -> str:
    if len(raw) > MAX_FILE_BYTES:
        raise _refuse(name, 1, 1, f"file is larger than the {MAX_FILE_BYTES // (1024 * 1024)} MiB limit")
    nul = raw.find(b"\x00")
    if nul >= 0:
        line = raw.count(b"\n", 0, nul) + 1
        raise _refuse(name, line, nul - raw.rfind(b"\n", 0, nul), "binary data (NUL byte): a policy is UTF-8 text")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        col = exc.start - raw.rfind(b"\n", 0, exc.start)
        raise _refuse(name, line, col, f"not UTF-8 text (byte 0x{raw[exc.start]:02x}): save the file as UTF-8") from None
    return text


def load_yaml(name: str, text: str) -> Located:
    """Compose the YAML and build values by hand so positions and limits are ours."""
    if not text.strip() or all(
        not line.strip() or line.lstrip().startswith("#") for line in text.splitlines()
    ):
        raise _refuse(name, 1, 1, "file is empty: expected a policy mapping (version, backbone, classes, opds, ...)")
    try:
        documents = list(yaml.compose_all(text, Loader=_Loader))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        problem = exc.problem or exc.context or "invalid YAML"
        raise _refuse(name, line, col, f"not valid YAML: {problem}") from None
    except yaml.YAMLError as exc:
        raise _refuse(name, 1, 1, f"not valid YAML: {exc}") from None
    except RecursionError:
        raise _refuse(name, 1, 1, f"nesting deeper than {MAX_DEPTH} levels") from None
    documents = [doc for doc in documents if doc is not None]
    if len(documents) != 1:
        raise _refuse(name, 1, 1, f"expected exactly one YAML document, found {len(documents)}")
    builder = _Builder(name)
    data = builder.build(documents[0], (), 0)
    return Located(name, data, builder.positions)


class _Builder:
    def __init__(self, file: str) -> None:
        self.file = file
        self.positions: dict[Path_, tuple[int, int]] = {}
        self.nodes = 0

    def build(self, node: yaml.Node, path: Path_, depth: int) -> Any:
        self.nodes += 1
        line, col = node.start_mark.line + 1, node.start_mark.column + 1
        if self.nodes > MAX_NODES:
            raise _refuse(self.file, line, col, f"document expands to more than {MAX_NODES} values (alias bomb?)")
        if depth > MAX_DEPTH:
            raise _refuse(self.file, line, col, f"nesting deeper than {MAX_DEPTH} levels")
        self.positions[path] = (line, col)
        if isinstance(node, yaml.MappingNode):
            result: dict[str, Any] = {}
            for key_node, value_node in node.value:
                if not isinstance(key_node, yaml.ScalarNode):
                    kl, kc = key_node.start_mark.line + 1, key_node.start_mark.column + 1
                    raise _refuse(self.file, kl, kc, "mapping keys must be plain names, not lists or mappings")
                if key_node.tag == "tag:yaml.org,2002:merge":
                    raise _refuse(self.file, line, col, "YAML merge keys (<<) are not supported: write keys out")
                key = key_node.value
                if key in result:
                    kl, kc = key_node.start_mark.line + 1, key_node.start_mark.column + 1
                    first = self.positions.get(path + (key,), (0, 0))[0]
                    raise _refuse(self.file, kl, kc, f"duplicate key '{key}' (first defined on line {first})")
                result[key] = self.build(value_node, path + (key,), depth + 1)
                self.positions[path + (key,)] = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
            return result
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, path + (index,), depth + 1) for index, item in enumerate(node.value)]
        return _scalar(node)


_BOOL = {"true": True, "false": False, "yes": True, "no": False, "on": True, "off": False}


_INT = re.compile(r"^[-+]?[0-9][0-9_]*$")
_HEX = re.compile(r"^0x[0-9a-fA-F_]+$")
_FLOAT = re.compile(r"^[-+]?(\.[0-9]+|[0-9][0-9_]*(\.[0-9_]*)?)([eE][-+]?[0-9]+)?$")


def _scalar(node: yaml.ScalarNode) -> Any:
    """Resolve a scalar the YAML 1.2 core way: no sexagesimal or octal surprises."""
    value = node.value
    if node.style not in (None, "") or node.tag != "tag:yaml.org,2002:str":
        return value
    if value in ("", "~", "null", "Null", "NULL"):
        return None
    lowered = value.lower()
    if lowered in _BOOL and value in (lowered, lowered.capitalize(), lowered.upper()):
        return _BOOL[lowered]
    if _INT.match(value):
        return int(value.replace("_", ""))
    if _HEX.match(value):
        return int(value.replace("_", ""), 16)
    if _FLOAT.match(value) and any(ch.isdigit() for ch in value):
        return float(value.replace("_", ""))
    return value
