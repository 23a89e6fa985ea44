"""Semantic diff of two policies: which OPDs, pools, classes and schedules changed, and how."""

from __future__ import annotations

from dataclasses import dataclass, field

from pydantic import BaseModel

from satupintu.policy.model import Policy
from satupintu.policy.units import format_rate


@dataclass(slots=True)
class PolicyChanges:
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)  # one line per changed field

    @property
    def empty(self) -> bool:
        return not (self.added or self.removed or self.changed)


def _flat(model: BaseModel) -> dict[str, object]:
    """Flatten a model into dotted keys; rates rendered as humans write them."""
    flat: dict[str, object] = {}

    def walk(value: object, prefix: str) -> None:
        if isinstance(value, BaseModel):
            for name in type(value).model_fields:
                walk(getattr(value, name), f"{prefix}.{name}" if prefix else name)
        elif isinstance(value, dict):
            for key in sorted(value):
                walk(value[key], f"{prefix}.{key}")
        else:
            flat[prefix] = value

    walk(model, "")
    return flat


def _show(key: str, value: object) -> str:
    rate_keys = ("guaranteed", "ceiling", "download", "upload")
    if isinstance(value, int) and not isinstance(value, bool) and key.rsplit(".", 1)[-1] in rate_keys:
        return format_rate(value)
    return repr(value) if isinstance(value, str) else str(value)


def _compare(label: str, old: BaseModel, new: BaseModel, changes: PolicyChanges) -> None:
    before, after = _flat(old), _flat(new)
    for key in sorted(before.keys() | after.keys()):
        if before.get(key) != after.get(key):
            changes.changed.append(f"{label} {key}: {_show(key, before.get(key))} -> {_show(key, after.get(key))}")


def diff_policies(old: Policy, new: Policy) -> PolicyChanges:
    changes = PolicyChanges()
    for section in ("opds", "public_wifi"):
        before = {item.id: item for item in getattr(old, section)}
        after = {item.id: item for item in getattr(new, section)}
        kind = "OPD" if section == "opds" else "Wi-Fi pool"
        for owner_id in sorted(after.keys() - before.keys()):
            changes.added.append(f"{kind} {after[owner_id].code} (id {owner_id}) {after[owner_id].name}")
        for owner_id in sorted(before.keys() - after.keys()):
            changes.removed.append(f"{kind} {before[owner_id].code} (id {owner_id}) {before[owner_id].name}")
        for owner_id in sorted(before.keys() & after.keys()):
            _compare(f"{kind} {after[owner_id].code}", before[owner_id], after[owner_id], changes)
    for section, key, kind in (("classes", "id", "class"), ("schedules", "name", "schedule")):
        before = {getattr(item, key): item for item in getattr(old, section)}
        after = {getattr(item, key): item for item in getattr(new, section)}
        for item_key in sorted(after.keys() - before.keys(), key=str):
            changes.added.append(f"{kind} {after[item_key].name}")
        for item_key in sorted(before.keys() - after.keys(), key=str):
            changes.removed.append(f"{kind} {before[item_key].name}")
        for item_key in sorted(before.keys() & after.keys(), key=str):
            _compare(f"{kind} {after[item_key].name}", before[item_key], after[item_key], changes)
    top_old = old.model_copy(update={"opds": [], "public_wifi": [], "classes": [], "schedules": []})
    top_new = new.model_copy(update={"opds": [], "public_wifi": [], "classes": [], "schedules": []})
    _compare("policy", top_old, top_new, changes)
    return changes
