"""Load a policy file: parse, validate the schema, cross-check, and report every problem
at once with its file, line and column."""

from __future__ import annotations

import difflib
import hashlib
import re
import reprlib
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ValidationError

from satupintu.gcpause import gc_paused
from satupintu.policy.checks import cross_check
from satupintu.policy.errors import MAX_ISSUES, Issue, PolicyError, more_issues
from satupintu.policy.model import CODE_PATTERN, NAME_PATTERN, Policy
from satupintu.policy.source import Located, decode, load_yaml, read_text


@dataclass(frozen=True, slots=True)
class LoadedPolicy:
    policy: Policy
    warnings: tuple[Issue, ...]
    sha256: str
    file: str


def load_policy(path: str | Path) -> LoadedPolicy:
    name, text = read_text(path)
    return load_policy_text(text, name)


def load_policy_bytes(raw: bytes, name: str = "<policy>") -> LoadedPolicy:
    return load_policy_text(decode(name, raw), name)


def load_policy_text(text: str, name: str = "<policy>") -> LoadedPolicy:
    with gc_paused():
        return _load(text, name)


def _load(text: str, name: str) -> LoadedPolicy:
    located = load_yaml(name, text)
    if located.data is None:
        line, col = located.position(())
        raise PolicyError([Issue(name, line, col, "the document is empty: expected a policy mapping with keys "
                                                  "version, name, backbone, classes, opds, ...")])
    if not isinstance(located.data, dict):
        kind = "a list" if isinstance(located.data, list) else f"a single value ({type(located.data).__name__})"
        line, col = located.position(())
        raise PolicyError([Issue(name, line, col, f"top level is {kind}; a policy is a mapping with keys "
                                             "version, name, backbone, classes, opds, ...")])
    try:
        policy = Policy.model_validate(located.data)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        raise PolicyError(schema_issues(exc, located, Policy, errors) + _partial_cross_check(errors, located)) from None
    issues = cross_check(policy, located)
    errors = [issue for issue in issues if issue.severity == "error"]
    if errors:
        raise PolicyError(issues)
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    return LoadedPolicy(policy, tuple(issues), digest, name)


_SECTIONS = ("classes", "opds", "public_wifi", "schedules")
_PLACEHOLDERS = {"version": 1, "name": "policy", "inter_opd": "deny"}  # no cross-check reads these


def _partial_cross_check(errors: list, located: Located) -> list[Issue]:
    """Cross-check what did validate, so one run reports (nearly) every error: list items
    with schema errors are left out; if the errors are in settings the checks need
    (backbone, timezone, ...) there is nothing sound to check and nothing is added."""
    data = located.data
    cleaned = dict(data)
    bad: dict[str, set[int]] = {section: set() for section in _SECTIONS}
    for error in errors:
        loc = _data_loc(error["loc"], data)
        head = loc[0] if loc else None
        if head in _SECTIONS and len(loc) >= 2 and isinstance(loc[1], int) and isinstance(data.get(head), list):
            bad[head].add(loc[1])
        elif head in _PLACEHOLDERS:
            cleaned[head] = _PLACEHOLDERS[head]
        elif isinstance(head, str) and len(loc) == 1 and error["type"] == "extra_forbidden":
            cleaned.pop(head, None)
        else:
            return []
    index_map: dict[str, list[int]] = {}
    for section, indices in bad.items():
        if indices:
            index_map[section] = [index for index in range(len(data[section])) if index not in indices]
            cleaned[section] = [data[section][index] for index in index_map[section]]
    try:
        policy = Policy.model_validate(cleaned)
    except ValidationError:
        return []
    return cross_check(policy, located, index_map)


def schema_issues(exc: ValidationError, located: Located, root: type[BaseModel],
                  errors: list | None = None) -> list[Issue]:
    issues: list[Issue] = []
    if errors is None:
        errors = exc.errors(include_url=False)
    misspelt = set()  # (parent loc, key) that an unknown key's did-you-mean already points to
    for error in errors[:MAX_ISSUES]:
        if error["type"] == "extra_forbidden" and error["loc"]:
            loc = _data_loc(error["loc"], located.data)
            guess = _close_key(loc[-1], _allowed_keys(root, loc[:-1]))
            misspelt.update((loc[:-1], key) for key in guess)
    for index, error in enumerate(errors):
        loc = _data_loc(error["loc"], located.data)
        line, col = located.position(loc)
        if len(issues) >= MAX_ISSUES:
            issues.append(more_issues(located.file, line, col, len(errors) - index))
            break
        where = _dotted(loc)
        kind = error["type"]
        if kind == "extra_forbidden" and loc:
            allowed = _allowed_keys(root, loc[:-1])
            guess = _close_key(loc[-1], allowed)
            hint = f"; did you mean '{guess[0]}'?" if guess else ""
            message = f"unknown key {_got(str(loc[-1]))}{hint} (allowed here: {', '.join(allowed)})"
            where = _dotted(loc[:-1])
        elif kind == "missing" and loc:
            if (loc[:-1], loc[-1]) in misspelt:
                continue
            message = f"missing required key '{loc[-1]}'"
            where = _dotted(loc[:-1])
        elif kind in ("model_type", "dict_type", "model_attributes_type"):
            keys = _allowed_keys(root, loc)
            listing = f" with keys {', '.join(keys)}" if keys else ""
            message = f"expected a mapping{listing} (got {_got(error.get('input'))})"
        else:
            message = _explain(error, kind)
        prefix = f"{where}: " if where else ""
        issues.append(Issue(located.file, line, col, prefix + message))
    return issues


def _close_key(key: object, allowed: list[str]) -> list[str]:
    """The allowed key an unknown one was probably meant to be (keys are lowercase)."""
    return difflib.get_close_matches(str(key).strip().lower(), allowed, n=1, cutoff=0.6)


def _data_loc(loc: tuple, data: object) -> tuple:
    """pydantic's error location without its union-member tags ("function-after[...]"),
    keeping every key that is really in the data (keys may contain brackets too)."""
    kept = []
    for part in loc:
        in_dict = isinstance(data, dict) and part in data
        if in_dict or (isinstance(data, list) and isinstance(part, int) and 0 <= part < len(data)):
            data = data[part]
        elif isinstance(part, str) and "[" in part:
            continue
        else:
            data = None
        kept.append(part)
    return tuple(kept)


def _clean(message: str) -> str:
    return message.removeprefix("Value error, ")


_PATTERNS = {
    CODE_PATTERN: "an ASCII code: an uppercase letter, then uppercase letters, digits, '_' or '-' (at most 24)",
    NAME_PATTERN: "a lowercase ASCII name: a letter, then lowercase letters, digits or '-' (at most 32)",
}


def _explain(error: dict, kind: str) -> str:
    """pydantic's message, made specific: the value that was given and what is allowed."""
    message = _clean(error["msg"])
    value = error.get("input")
    if kind in ("value_error", "assertion_error"):
        return message  # our validators already name the value and what is allowed
    if kind == "string_pattern_mismatch":
        pattern = str((error.get("ctx") or {}).get("pattern", ""))
        message = f"expected {_PATTERNS[pattern]}" if pattern in _PATTERNS else message
        strange = next((ch for ch in str(value) if not ch.isascii()), None)
        if strange is not None:
            where = str(value).index(strange) + 1
            message += (f"; character {where} is '{strange}' (U+{ord(strange):04X} "
                        f"{unicodedata.name(strange, 'unnamed character')}), which is not ASCII")
        return f"{message} (got {_got(value)})"
    if kind == "literal_error" and isinstance(value, str):
        choices = re.findall(r"'([^']*)'", str((error.get("ctx") or {}).get("expected", "")))
        guess = difflib.get_close_matches(value.strip().lower(), choices, n=1, cutoff=0.6)
        hint = f"; did you mean '{guess[0]}'?" if guess else ""
        return f"{message} (got {_got(value)}){hint}"
    if kind in ("bool_parsing", "bool_type"):
        return f"expected true or false (got {_got(value)})"
    if kind == "string_type" and isinstance(value, bool):
        return (f"expected text (got the boolean {str(value).lower()}: YAML reads yes/no/on/off/true/false as "
                "booleans; quote it to make it text)")
    if kind == "string_type" and isinstance(value, (int, float)):
        return f"expected text (got the number {_got(value)}; quote it to make it text)"
    if kind in ("int_parsing", "int_type", "int_from_float"):
        return f"expected a whole number (got {_got(value)})"
    return f"{message} (got {_got(value)})"


_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 60
_REPR.maxlist = _REPR.maxdict = _REPR.maxtuple = _REPR.maxset = 4
_REPR.maxlevel = 2


def _got(value: object) -> str:
    """A short repr: inputs can be huge (a whole section) or very long strings."""
    return _REPR.repr(value)


def _dotted(loc: tuple) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _allowed_keys(root: type[BaseModel], loc: tuple) -> list[str]:
    """Field names of the model found at `loc` (walking lists, dicts and optionals)."""
    model: type[BaseModel] | None = root
    for part in loc:
        if model is None:
            break
        if isinstance(part, int):
            continue
        field = model.model_fields.get(str(part))
        if field is None:  # a dict key (e.g. an OPD code in a schedule): same value model
            continue
        model = _model_in(field.annotation)
    return sorted(model.model_fields) if model else []


def _model_in(annotation: object) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _model_in(arg)
        if found:
            return found
    return None
