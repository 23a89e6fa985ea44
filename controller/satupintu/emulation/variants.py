"""Policy text variants for reload tests and the soak benchmark: one valid edit of one OPD,
and invalid files of the kinds an engineer saves by mistake (each one breaks a different rule).

Edits are textual, like an engineer's: the rest of the file stays byte for byte the same."""

from __future__ import annotations

CONFUSABLE_A = "\u0410"  # CYRILLIC CAPITAL LETTER A: looks like Latin A


def edit_opd(text: str, code: str, old: str, new: str) -> str:
    """Replace `old` by `new` once, inside the block of OPD `code` (from `code:` to the next entry)."""
    start = text.index(f"code: {code}\n")
    end = text.find("\n  - ", start)
    end = len(text) if end < 0 else end
    block = text[start:end]
    if old not in block:
        raise ValueError(f"{old!r} not found in the block of OPD {code}")
    return text[:start] + block.replace(old, new, 1) + text[end:]


def broken_variants(text: str, code: str) -> list[tuple[str, str]]:
    """(what is wrong, policy text) pairs, each invalid in a different way; `code` is an OPD
    whose block has `download: {guaranteed: ..., ceiling: ...}`."""
    block = text[text.index(f"code: {code}\n"):]
    download = block[block.index("download: {"):block.index("}", block.index("download: {")) + 1]
    guaranteed = download.split("guaranteed:")[1].split(",")[0].strip()
    ceiling = download.split("ceiling:")[1].strip(" }")
    other_code = _codes(text)[0] if _codes(text)[0] != code else _codes(text)[1]
    cut = text.index("download: {", len(text) // 2) + len("download: {guaranteed: 1")
    return [
        ("guaranteed above ceiling", edit_opd(text, code, f"ceiling: {ceiling}", "ceiling: 1kbps")),
        ("misspelt key", edit_opd(text, code, "prefixes:", "prefixs:")),
        ("half-saved file", text[:cut]),
        ("duplicate OPD code", edit_opd(text, code, f"code: {code}\n", f"code: {other_code}\n")),
        ("unicode confusable in a code", edit_opd(text, code, f"code: {code}\n",
                                                  f"code: {code[:-1]}{CONFUSABLE_A}\n") if code.endswith("A")
         else edit_opd(text, code, f"code: {code}\n", f"code: {CONFUSABLE_A}{code}\n")),
        ("rate without a unit", edit_opd(text, code, f"guaranteed: {guaranteed}", "guaranteed: 200")),
        ("empty file", ""),
        ("not a policy (a list)", "- version: 1\n"),
    ]


def _codes(text: str) -> list[str]:
    return [line.split("code:")[1].strip() for line in text.splitlines() if line.strip().startswith("code:")]
