"""Read a YAML file into plain Python values while remembering where every value was.

Hostile input (binary, non-UTF-8, huge files, deep nesting, alias bombs, duplicate keys,
merge keys, tags) is refused with a located `PolicyError`, never a traceback or a hang.

Values are built straight from libyaml's parse events with an explicit stack: libyaml's
own composer recurses in C and crashes the interpreter on ~50,000 nested brackets.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from satupintu.policy.errors import Issue, PolicyError

MAX_FILE_BYTES = 16 * 1024 * 1024
MAX_NODES = 2_000_000  # after alias expansion; a 5,000-OPD policy has ~200,000
MAX_DEPTH = 64
MAX_NUMBER_DIGITS = 100

_Base: type = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _Loader(_Base):  # type: ignore[misc, valid-type]
    """libyaml's parser; `_Builder` turns its events into values and types scalars itself
    (YAML 1.2 core rules), which is both faster and safer than PyYAML's resolvers."""


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


_LIMIT_TEXT = f"{MAX_FILE_BYTES // (1024 * 1024)} MiB"


def decode(name: str, raw: bytes) -> str:
    if len(raw) > MAX_FILE_BYTES:
        raise _refuse(name, 1, 1, f"file is larger than the {_LIMIT_TEXT} limit; a policy is a small text file")
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise _refuse(name, 1, 1, "file is UTF-16 text: save the policy as UTF-8")
    _refuse_nul(name, raw)
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line, col = _byte_position(raw, exc.start)
        message = f"not UTF-8 text (byte 0x{raw[exc.start]:02x}): save the file as UTF-8"
        raise _refuse(name, line, col, message) from None
    return text


def _refuse_nul(name: str, raw: bytes) -> None:
    nul = raw.find(b"\x00")
    if nul >= 0:
        line, col = _byte_position(raw, nul)
        raise _refuse(name, line, col, "binary data (NUL byte): a policy is UTF-8 text")


_INVISIBLE_BREAKS = re.compile("[\x85\u2028\u2029]")
_BREAK_NAMES = {"\x85": "NEXT LINE (U+0085)", "\u2028": "LINE SEPARATOR (U+2028)",
                "\u2029": "PARAGRAPH SEPARATOR (U+2029)"}


def _refuse_invisible_breaks(name: str, text: str) -> None:
    """YAML treats these as line breaks, editors show nothing: every position after one
    would be off by a line, and a pasted one silently splits a value."""
    found = _INVISIBLE_BREAKS.search(text)
    if found:
        offset = found.start()
        line, col = text.count("\n", 0, offset) + 1, offset - (text.rfind("\n", 0, offset) + 1) + 1
        raise _refuse(name, line, col, f"invisible {_BREAK_NAMES[found.group()]} character (often pasted from a "
                                       "web page or document); YAML reads it as a line break: delete it")


def _byte_position(raw: bytes, offset: int) -> tuple[int, int]:
    """1-based (line, column in characters) of a byte offset into UTF-8-ish bytes."""
    line_start = raw.rfind(b"\n", 0, offset) + 1
    column = len(raw[line_start:offset].decode("utf-8", "replace")) + 1
    return raw.count(b"\n", 0, offset) + 1, column


def load_yaml(name: str, text: str) -> Located:
    """Parse the YAML and build values by hand so positions and limits are ours."""
    if len(text) > MAX_FILE_BYTES or (len(text) * 4 > MAX_FILE_BYTES
                                      and len(text.encode("utf-8", "surrogatepass")) > MAX_FILE_BYTES):
        raise _refuse(name, 1, 1, f"file is larger than the {_LIMIT_TEXT} limit; a policy is a small text file")
    try:
        raw = text.encode("utf-8")
    except UnicodeEncodeError as exc:
        line = text.count("\n", 0, exc.start) + 1
        col = exc.start - text.rfind("\n", 0, exc.start)
        raise _refuse(name, line, col, f"not UTF-8 text (lone surrogate U+{ord(text[exc.start]):04X}): "
                                       "save the file as UTF-8") from None
    _refuse_nul(name, raw)
    _refuse_invisible_breaks(name, text)
    if not text.strip() or all(
        not line.strip() or line.lstrip().startswith("#") for line in text.splitlines()
    ):
        raise _refuse(name, 1, 1, "file is empty: expected a policy mapping (version, backbone, classes, opds, ...)")
    builder = _Builder(name)
    try:
        data = builder.run(yaml.parse(text, Loader=_Loader))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        problem = exc.problem or exc.context or "invalid YAML"
        if "tab" in problem:
            problem += " (indent with spaces, not tabs)"
        raise _refuse(name, line, col, f"not valid YAML: {problem}") from None
    except yaml.reader.ReaderError as exc:
        line, col = _byte_position(raw, exc.position)
        what = f" #x{exc.character:04x}" if isinstance(exc.character, int) else ""
        raise _refuse(name, line, col, f"not valid YAML: unacceptable character{what}: {exc.reason}") from None
    except yaml.YAMLError as exc:
        raise _refuse(name, 1, 1, f"not valid YAML: {exc}") from None
    return Located(name, data, builder.positions)


@dataclass(slots=True)
class _Frame:
    value: dict[str, Any] | list[Any]
    path: Path_
    anchor: str | None
    nodes_before: int  # builder.nodes when this collection started
    height: int = 1  # levels of collections in this value (itself included)
    key: str | None = None  # mapping: key waiting for its value
    key_mark: tuple[int, int] = (0, 0)


@dataclass(slots=True)
class _Anchor:
    value: Any
    nodes: int  # values it expands to
    height: int


_OK_TAGS = frozenset({None, "!", "tag:yaml.org,2002:str", "tag:yaml.org,2002:map", "tag:yaml.org,2002:seq"})


class _Builder:
    def __init__(self, file: str) -> None:
        self.file = file
        self.positions: dict[Path_, tuple[int, int]] = {}
        self.anchors: dict[str, _Anchor] = {}
        self.nodes = 0

    def refuse(self, mark: tuple[int, int], message: str) -> PolicyError:
        return _refuse(self.file, mark[0], mark[1], message)

    def run(self, events: Any) -> Any:
        stack: list[_Frame] = []
        documents = 0
        result: Any = None
        for event in events:
            kind = type(event)
            if kind is yaml.StreamStartEvent or kind is yaml.StreamEndEvent or kind is yaml.DocumentEndEvent:
                continue
            mark = (event.start_mark.line + 1, event.start_mark.column + 1)
            if kind is yaml.DocumentStartEvent:
                documents += 1
                if documents > 1:
                    raise self.refuse(mark, "a second YAML document starts here; a policy is exactly one document "
                                            "(remove the '---' line and what follows, or merge the documents)")
                continue
            parent = stack[-1] if stack else None
            if kind is yaml.MappingEndEvent or kind is yaml.SequenceEndEvent:
                frame = stack.pop()
                if frame.anchor is not None:
                    self.anchors[frame.anchor] = _Anchor(frame.value, self.nodes - frame.nodes_before, frame.height)
                if stack:
                    stack[-1].height = max(stack[-1].height, frame.height + 1)
                    self.attach(stack[-1], frame.value)
                else:
                    result = frame.value
                continue
            if parent is not None and isinstance(parent.value, dict) and parent.key is None:
                self.take_key(parent, event, mark)
                continue
            path = self.child_path(parent)
            self.positions.setdefault(path, mark)
            if kind is yaml.AliasEvent:
                value, height = self.alias(event.anchor, stack, mark)
                if parent is None:
                    return value
                parent.height = max(parent.height, height + 1)
                self.attach(parent, value)
                continue
            self.count(mark)
            tag = event.tag
            if tag not in _OK_TAGS:
                raise self.refuse(mark, f"YAML tag '{_short_tag(tag)}' is not supported: write plain values "
                                        "(quote a value to make it text)")
            if kind is yaml.ScalarEvent:
                value = _scalar(event.value, event.style, tag, self, mark)
                if event.anchor is not None:
                    self.anchors[event.anchor] = _Anchor(value, 1, 0)
                if parent is None:
                    return value
                self.attach(parent, value)
                continue
            # a collection starts
            if len(stack) >= MAX_DEPTH:
                raise self.refuse(mark, f"nesting deeper than {MAX_DEPTH} levels; a policy needs fewer than 10")
            container: dict[str, Any] | list[Any] = {} if kind is yaml.MappingStartEvent else []
            stack.append(_Frame(container, path, event.anchor, self.nodes - 1))
        return result

    def child_path(self, parent: _Frame | None) -> Path_:
        if parent is None:
            return ()
        if isinstance(parent.value, dict):
            return parent.path + (parent.key,)  # type: ignore[operator]
        return parent.path + (len(parent.value),)

    def take_key(self, frame: _Frame, event: Any, mark: tuple[int, int]) -> None:
        kind = type(event)
        if kind is yaml.AliasEvent:
            raise self.refuse(mark, f"an alias (*{event.anchor}) cannot be a key: write the key out")
        if kind is not yaml.ScalarEvent:
            raise self.refuse(mark, "mapping keys must be plain names, not lists or mappings")
        self.count(mark)
        if event.tag not in _OK_TAGS:
            raise self.refuse(mark, f"YAML tag '{_short_tag(event.tag)}' is not supported on a key")
        key = event.value
        if key == "<<" and not event.style:
            raise self.refuse(mark, "YAML merge keys (<<) are not supported: write the keys out in full")
        assert isinstance(frame.value, dict)
        if key in frame.value:
            first = self.positions.get(frame.path + (key,), (0, 0))[0]
            raise self.refuse(mark, f"duplicate key '{_short(key)}' (first defined on line {first}); "
                                    "each key may appear once")
        frame.key = key
        frame.key_mark = mark

    def attach(self, frame: _Frame, value: Any) -> None:
        if isinstance(frame.value, dict):
            key = frame.key
            assert key is not None
            frame.value[key] = value
            self.positions[frame.path + (key,)] = frame.key_mark
            frame.key = None
        else:
            frame.value.append(value)

    def alias(self, name: str, stack: list[_Frame], mark: tuple[int, int]) -> tuple[Any, int]:
        anchor = self.anchors.get(name)
        if anchor is None:
            if any(frame.anchor == name for frame in stack):
                raise self.refuse(mark, f"alias *{name} refers to a value that contains it (a recursive alias)")
            raise self.refuse(mark, f"alias *{name} has no anchor &{name} before it")
        self.nodes += anchor.nodes
        if self.nodes > MAX_NODES:
            raise self.refuse(mark, f"alias *{name} makes the document expand to more than {MAX_NODES} values "
                                    "(an alias bomb?)")
        if len(stack) + anchor.height > MAX_DEPTH:
            raise self.refuse(mark, f"alias *{name} makes the nesting deeper than {MAX_DEPTH} levels")
        return anchor.value, anchor.height

    def count(self, mark: tuple[int, int]) -> None:
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise self.refuse(mark, f"document has more than {MAX_NODES} values")


def _short_tag(tag: str) -> str:
    return _short(tag.replace("tag:yaml.org,2002:", "!!"))


def _short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


_BOOL = {"true": True, "false": False, "yes": True, "no": False, "on": True, "off": False}
_INT = re.compile(r"^[-+]?[0-9][0-9_]*$")
_HEX = re.compile(r"^0x[0-9a-fA-F_]+$")
_FLOAT = re.compile(r"^[-+]?(\.[0-9]+|[0-9][0-9_]*(\.[0-9_]*)?)([eE][-+]?[0-9]+)?$")


def _scalar(value: str, style: str | None, tag: str | None, builder: _Builder, mark: tuple[int, int]) -> Any:
    """Resolve a scalar the YAML 1.2 core way: no sexagesimal or octal surprises."""
    if style or tag is not None:  # quoted, block literal, or explicitly tagged !!str
        return value
    if value in ("", "~", "null", "Null", "NULL"):
        return None
    lowered = value.lower()
    if lowered in _BOOL and value in (lowered, lowered.capitalize(), lowered.upper()):
        return _BOOL[lowered]
    if len(value) > MAX_NUMBER_DIGITS and (_INT.match(value) or _HEX.match(value) or _FLOAT.match(value)):
        raise builder.refuse(mark, f"number {_short(value, 20)} has {len(value)} digits; that is too large "
                                   "for any policy value")
    if _INT.match(value):
        return int(value.replace("_", ""))
    if _HEX.match(value):
        return int(value.replace("_", ""), 16)
    if _FLOAT.match(value) and any(ch.isdigit() for ch in value):
        return float(value.replace("_", ""))
    return value
