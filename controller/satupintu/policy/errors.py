"""Located policy errors: every problem is FILE:LINE:COL: message."""

from __future__ import annotations

from dataclasses import dataclass

MAX_ISSUES = 1000  # per stage; hostile input could otherwise produce millions of messages


def more_issues(file: str, line: int, column: int, hidden: int) -> Issue:
    """Stands in for the issues past MAX_ISSUES, at the first of them."""
    return Issue(file, line, column, f"... and {hidden} more problems like the ones above (only the first "
                                     f"{MAX_ISSUES} are listed)")


@dataclass(frozen=True, slots=True)
class Issue:
    file: str
    line: int
    column: int
    message: str
    severity: str = "error"  # "error" or "warning"

    def __str__(self) -> str:
        prefix = "" if self.severity == "error" else "warning: "
        return f"{self.file}:{self.line}:{self.column}: {prefix}{self.message}"


class PolicyError(Exception):
    """A policy that must not be applied; carries every error found."""

    def __init__(self, issues: list[Issue]) -> None:
        self.issues = sorted(issues, key=lambda issue: (issue.file, issue.line, issue.column))
        super().__init__("\n".join(str(issue) for issue in self.issues))

    @property
    def errors(self) -> list[Issue]:
        return [issue for issue in self.issues if issue.severity == "error"]
