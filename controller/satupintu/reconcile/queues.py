"""Pure diff of two queue plans: the tc changes that turn `actual` into `desired`.

Used by the tc driver (actual = read from the kernel) and by `policy diff`
(actual = the running policy's plan), so what the diff prints is what gets applied.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from satupintu.compile.plan import HtbClass, QueuePlan, U32Rule

RuleKey = tuple[bool, int | None, int]  # (ipv6, bucket, node): U32Rule.key


@dataclass(slots=True)
class QueueDiff:
    port: str
    add_classes: list[HtbClass] = field(default_factory=list)  # parents before children
    change_classes: list[tuple[HtbClass, HtbClass]] = field(default_factory=list)  # (old, new)
    remove_classes: list[HtbClass] = field(default_factory=list)  # children before parents
    add_rules: list[U32Rule] = field(default_factory=list)
    change_rules: list[tuple[U32Rule, U32Rule]] = field(default_factory=list)
    remove_rules: list[U32Rule] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.add_classes or self.change_classes or self.remove_classes
                    or self.add_rules or self.change_rules or self.remove_rules)

    @property
    def size(self) -> int:
        return (len(self.add_classes) + len(self.change_classes) + len(self.remove_classes)
                + len(self.add_rules) + len(self.change_rules) + len(self.remove_rules))


def _depth(klass: HtbClass, by_minor: dict[int, HtbClass]) -> int:
    depth = 0
    while klass.parent_minor is not None and klass.parent_minor in by_minor:
        klass = by_minor[klass.parent_minor]
        depth += 1
    return depth


def _keyed_diff(want: dict, have: dict, params) -> tuple[list, list[tuple], list]:
    """(to add, (old, new) to change, to remove) between two keyed collections."""
    add, change = [], []
    for key, item in want.items():
        old = have.get(key)
        if old is None:
            add.append(item)
        elif params(old) != params(item):
            change.append((old, item))
    return add, change, [item for key, item in have.items() if key not in want]


def diff_queue_plans(desired: QueuePlan, actual_classes: list[HtbClass], actual_rules: list[U32Rule]) -> QueueDiff:
    diff = QueueDiff(desired.port)
    want = {klass.minor: klass for klass in desired.classes}
    have = {klass.minor: klass for klass in actual_classes}
    diff.add_classes, diff.change_classes, diff.remove_classes = _keyed_diff(want, have, _class_params)
    diff.add_classes.sort(key=lambda klass: (_depth(klass, want), klass.minor))
    diff.remove_classes.sort(key=lambda klass: (-_depth(klass, have), klass.minor))
    want_rules: dict[RuleKey, U32Rule] = {rule.key: rule for rule in desired.rules}
    have_rules: dict[RuleKey, U32Rule] = {rule.key: rule for rule in actual_rules}
    diff.add_rules, diff.change_rules, diff.remove_rules = _keyed_diff(want_rules, have_rules, _rule_params)
    return diff


def _class_params(klass: HtbClass) -> tuple:
    return (klass.parent_minor, klass.rate_bps, klass.ceil_bps, klass.burst_bytes, klass.cburst_bytes,
            klass.quantum_bytes, klass.prio)


def _rule_params(rule: U32Rule) -> tuple:
    return (rule.prefix, rule.dscp, rule.tcp_ack_only, rule.flow_minor)


def rule_counts(diff: QueueDiff, ipv6: bool) -> tuple[int, int, int]:
    """(added, changed, removed) rules of one classifier (IPv4 or IPv6) in `diff`."""
    return (sum(rule.ipv6 is ipv6 for rule in diff.add_rules),
            sum(new.ipv6 is ipv6 for _old, new in diff.change_rules),
            sum(rule.ipv6 is ipv6 for rule in diff.remove_rules))
