"""docs/COUNTERS.md documents every counter a node reports, and no counter the code no longer has.

The counters are found in the source text of `iris_mesh/`: every write through a name ending in `counters`
(`self.counters["x"] += 1`, `self._counters["x"] = ...`, `counters["a" if c else "b"] += 1`, one built with an
f-string such as `counters[f"ae_{code}"]`), and the keys of dicts such counters start from
(`self.counters = {"bad_cards": 0, ...}`). An f-string name is a pattern, documented as written in the source
(`ae_{code}`), with the names it takes as entries nested under it. The SDK (`iris_mesh/client/`) runs in the
application's process, and no node reports its counters: it is not scanned.

The document's entries are its list items that start with a name in backticks and an em dash:
``- `name` — what one count means``; an entry indented under a pattern's entry is one of the names it takes.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "iris_mesh"
DOC = ROOT / "docs" / "COUNTERS.md"
NOT_NODE_CODE = ("client",)  # subpackages of iris_mesh whose counters no node reports

_COUNTERS = r"\b\w*counters"  # self.counters, self._counters, self.engine.counters, a `counters` parameter
_ASSIGNS = r"\s*(?:\*\*|//|<<|>>|[-+*/%@&|^])?=(?!=)"  # `=` or an augmented assignment, not `==`
_WRITE = re.compile(_COUNTERS + r"\[(?P<key>[^\]\n]+)\]" + _ASSIGNS)
_SETDEFAULT = re.compile(_COUNTERS + r"\.setdefault\((?P<key>[^,)\n]+)")
# A dict (or Counter({...})) a counters name starts from, or is updated with; its keys are counters.
_INIT = re.compile(_COUNTERS + r"(?:\s*:[^=\n]+)?\s*=\s*(?:[\w.]+\(\s*)?\{(?P<body>[^{}]*)\}")
_UPDATE = re.compile(_COUNTERS + r"\.update\(\s*\{(?P<body>[^{}]*)\}")
_STRING = re.compile(r"(?<![\w\"'])[fF]?(?P<quote>[\"'])(?P<text>.*?)(?P=quote)")  # f-strings as written
_DICT_KEY = re.compile(r"(?P<quote>[\"'])(?P<text>[^\"'\n]+)(?P=quote)\s*:")
_PLACEHOLDER = re.compile(r"\{[^{}]+\}")

_ENTRY = re.compile(r"^(?P<indent>[ \t]*)[-*] `(?P<name>[^`]+)` —")
_HEADING = re.compile(r"^#+ ")


class Found(NamedTuple):
    names: dict[str, list[str]]  # counter name (f-string patterns as written) -> where it is written (file:line)
    unnamed: list[str]  # writes whose key holds no string literal: file:line and the source line


class Entry(NamedTuple):
    name: str
    line: int
    parent: str | None  # the pattern entry this one is nested under (None: a top-level entry)


def scan_source(text: str, where: str) -> Found:
    """The counter names written in one module's source `text` (`where` names the module in messages)."""
    names: dict[str, list[str]] = {}
    unnamed: list[str] = []

    def line_of(match: re.Match[str]) -> int:
        return text.count("\n", 0, match.start()) + 1

    for match in (*_WRITE.finditer(text), *_SETDEFAULT.finditer(text)):
        literals = [literal["text"] for literal in _STRING.finditer(match["key"])]
        if not literals:
            unnamed.append(f"{where}:{line_of(match)}: {text.splitlines()[line_of(match) - 1].strip()}")
        for name in literals:
            names.setdefault(name, []).append(f"{where}:{line_of(match)}")
    for match in (*_INIT.finditer(text), *_UPDATE.finditer(text)):
        for key in _DICT_KEY.finditer(match["body"]):
            names.setdefault(key["text"], []).append(f"{where}:{line_of(match)}")
    return Found(names, unnamed)


@functools.cache
def code_counters() -> Found:
    """Every counter name written in the node's code, and the writes whose name is not a literal."""
    names: dict[str, list[str]] = {}
    unnamed: list[str] = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE)
        if relative.parts[0] in NOT_NODE_CODE:
            continue
        found = scan_source(path.read_text(encoding="utf-8"), str(path.relative_to(ROOT)))
        for name, places in found.names.items():
            names.setdefault(name, []).extend(places)
        unnamed.extend(found.unnamed)
    return Found(names, unnamed)


def doc_entries(text: str) -> list[Entry]:
    """The counter entries of the document, each with the pattern entry it is nested under, if any."""
    entries: list[Entry] = []
    top: str | None = None  # the last top-level entry of the current section
    for number, line in enumerate(text.splitlines(), 1):
        if _HEADING.match(line):
            top = None
            continue
        match = _ENTRY.match(line)
        if match is None:
            continue
        if match["indent"]:
            entries.append(Entry(match["name"], number, top))
        else:
            top = match["name"]
            entries.append(Entry(top, number, None))
    return entries


def is_pattern(name: str) -> bool:
    return _PLACEHOLDER.search(name) is not None


def pattern_regex(pattern: str) -> re.Pattern[str]:
    """`ae_{code}` -> a regex matching the names the pattern takes (`ae_timeout`, ...)."""
    parts = _PLACEHOLDER.split(pattern)
    return re.compile("[a-z0-9_]+".join(map(re.escape, parts)) + r"\Z")


def _doc() -> list[Entry]:
    return doc_entries(DOC.read_text(encoding="utf-8"))


# ---- the document against the code ----------------------------------------------------------------------------


def test_every_counter_is_documented() -> None:
    documented = {entry.name for entry in _doc()}
    missing = sorted(name for name in code_counters().names if name not in documented)
    assert not missing, (
        f"{len(missing)} counter(s) the code writes are not documented: "
        + ", ".join(f"{name} ({code_counters().names[name][0]})" for name in missing)
        + ". Document them in docs/COUNTERS.md, each as one list item in the section of its area: "
        "- `name` — what one count means, and when an operator should worry "
        "(an f-string name as written in the source, e.g. `ae_{code}`, with the names it takes nested under it)."
    )


def test_no_stale_counter_in_the_doc() -> None:
    names = code_counters().names
    stale = []
    for entry in _doc():
        if entry.parent is None:
            if entry.name not in names:
                stale.append(f"`{entry.name}` (line {entry.line}): no code writes this counter")
        elif not is_pattern(entry.parent):
            stale.append(f"`{entry.name}` (line {entry.line}): nested under `{entry.parent}`, which is no pattern")
        elif entry.parent not in names:
            stale.append(f"`{entry.name}` (line {entry.line}): nested under `{entry.parent}`, which no code writes")
        elif not pattern_regex(entry.parent).match(entry.name):
            stale.append(f"`{entry.name}` (line {entry.line}): not a name that `{entry.parent}` takes")
    assert not stale, (
        "docs/COUNTERS.md documents counters the code no longer has: " + "; ".join(stale)
        + ". Remove them from docs/COUNTERS.md (or correct the name)."
    )


def test_no_counter_is_documented_twice() -> None:
    seen: dict[str, int] = {}
    twice = []
    for entry in _doc():
        if entry.name in seen:
            twice.append(f"`{entry.name}` (lines {seen[entry.name]} and {entry.line})")
        seen.setdefault(entry.name, entry.line)
    assert not twice, "docs/COUNTERS.md documents a counter more than once: " + "; ".join(twice)


def test_every_counter_write_names_its_counter() -> None:
    unnamed = code_counters().unnamed
    assert not unnamed, (
        "counters written under a key that is no string literal or f-string, which this test (and an operator "
        "reading docs/COUNTERS.md) cannot follow: " + "; ".join(unnamed)
        + ". Name each counter with a literal, or an f-string documented as a pattern in docs/COUNTERS.md."
    )


# ---- the scanner itself -------------------------------------------------------------------------------------


def test_the_scanner_finds_every_way_a_counter_is_written() -> None:
    source = '\n'.join([
        'self.counters: dict[str, int] = {"started_a": 0, "started_b": 0}',
        'self.counters = collections.Counter({"started_c": 0})',
        'self.counters["plain"] += 1',
        'self._counters["private"] += len(queue)',
        'self.engine.counters["through_attribute"] += 1',
        'counters["parameter"] += 1',
        'self.counters["if_true" if answered else "if_false"] += 1',
        'self._counters["assigned"] = self._counters.get("assigned", 0) + missed',
        'self.counters["maximum"] = took_ms',
        "self.counters['single_quoted'] -= 1",
        'self.counters[f"x_{code}"] += 1',
        'self.counters[f"{op}_unsent"] += len(chunk)',
        'self.counters.setdefault("set_default", 0)',
        'self.counters.update({"updated": 1})',
        'if self.counters["read_only"] > 3 and self.counters["compared"] == 1:',
        'logger.info("{} so far", self.counters["logged"])',
        'counters=self.counters, timer=time.perf_counter()',
    ])
    found = scan_source(source, "example.py")
    assert sorted(found.names) == sorted([
        "started_a", "started_b", "started_c", "plain", "private", "through_attribute", "parameter", "if_true",
        "if_false", "assigned", "maximum", "single_quoted", "x_{code}", "{op}_unsent", "set_default", "updated",
    ])
    assert found.names["plain"] == ["example.py:3"]
    assert not found.unnamed


def test_the_scanner_reports_a_counter_it_cannot_name() -> None:
    found = scan_source('x = 1\nself.counters[name] += 1\n', "example.py")
    assert found.unnamed == ["example.py:2: self.counters[name] += 1"]


def test_the_scanner_finds_the_node_counters() -> None:
    # Enough that a broken regex (one that finds nothing, or only the dict initialisers) cannot pass unnoticed.
    names = code_counters().names
    assert len(names) > 50
    assert any(is_pattern(name) for name in names)


def test_doc_entries_know_their_pattern() -> None:
    text = "# A\n- `x_{code}` — a pattern\n  - `x_ok` — an instance\n- `y` — plain\n## B\n  - `z` — orphan\n"
    assert doc_entries(text) == [Entry("x_{code}", 2, None), Entry("x_ok", 3, "x_{code}"), Entry("y", 4, None),
                                 Entry("z", 6, None)]
    assert pattern_regex("{op}_not_sent").match("ae_dig_not_sent")
    assert not pattern_regex("ae_{code}").match("ae_")
