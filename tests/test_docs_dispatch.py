"""docs/dispatch.md names, for each side of each dispatch decision, the tests that cross it:
every test it names must exist, with every parameter id it names (a renamed test or a
dropped case would otherwise leave a side of a boundary untested without anyone noticing)."""

import re
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).parent
TABLE = TESTS.parent / "docs" / "dispatch.md"
ABBREVIATIONS = {
    "DC": "test_dispatch_conv.py",
    "DT": "test_dispatch_tiles.py",
    "DP": "test_dispatch_pool.py",
    "CA": "test_data_cache.py",
    "LL": "test_launch_limits.py",
}
# `DC::test_x[id]`, `tests/test_y.py::test_z`, `::test_w` (the file named before it in the
# cell), each optionally followed by more bracketed ids.
CITATION = re.compile(r"`(?:(\w\w)|tests/(\w+\.py))?::(\w+)((?:\[[^\]]*\])?)`((?:, `\[[^`]*\]`)*)")


def cited() -> set[tuple[str, str, str]]:
    """(file, test, id pattern) for every test the table names ("" id: any case)."""
    found = set()
    for line in TABLE.read_text().splitlines():
        if not line.startswith("|"):
            continue
        for cell in line.split(" | "):
            file = None
            for match in CITATION.finditer(cell):
                abbreviation, path, test, first_id, more_ids = match.groups()
                file = ABBREVIATIONS.get(abbreviation) or path or file
                ids = [first_id, *re.findall(r"\[[^\]]*\]", more_ids)]
                found |= {(file, test, case.strip("[]")) for case in ids}
    return found


def case_pattern(test: str, case: str) -> re.Pattern:
    """The node ids of ``test`` a citation names: every case when ``case`` is empty, else the
    cases matching it, ``*`` standing for any text."""
    if not case:
        return re.compile(rf"{test}(\[.*\])?")
    wildcard = re.escape(case).replace(re.escape("*"), ".*")
    return re.compile(rf"{test}\[{wildcard}\]")


def test_every_test_named_in_docs_dispatch_exists():
    citations = cited()
    assert len(citations) > 100  # the parser found the table
    files = sorted({TESTS / file for file, _, _ in citations})
    collected = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", *map(str, files)],
        capture_output=True, text=True, check=True, cwd=TESTS.parent,
    ).stdout  # fmt: skip
    node_ids = {line.split("::", 1)[1] for line in collected.splitlines() if "::" in line}
    missing = [
        f"{file}::{test}[{case}]"
        for file, test, case in sorted(citations)
        if not any(map(case_pattern(test, case).fullmatch, node_ids))
    ]
    assert not missing, f"docs/dispatch.md names tests that do not exist: {missing}"
