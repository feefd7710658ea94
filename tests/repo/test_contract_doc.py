"""docs/CONTRACT.md is the project's own spec: every citation of it names a section it has, none points outside."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SPEC = ROOT / "docs" / "CONTRACT.md"

CITATION = re.compile(r"docs/CONTRACT\.md`?\s+§(\d+[a-z]?)")
OUTSIDE = re.compile(r"\.\./shared|(?<!docs/)\bshared/CONTRACT\.md")
# The spec cited by its bare name leaves the reader guessing which file: cite it with its path.
BARE = re.compile(r"(?<![\w/])CONTRACT(?:\.md)?`?\s+§")


def _tracked_text_files() -> dict[str, str]:
    """path -> text of every file git tracks in this checkout (binary files left out)."""
    names = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout.split("\0")
    files = {}
    for name in filter(None, names):
        path = ROOT / name
        if not path.is_file():
            continue
        data = path.read_bytes()
        if b"\0" in data:
            continue
        files[name] = data.decode("utf-8", errors="replace")
    return files


def _sections() -> set[str]:
    return set(re.findall(r"^#{2,3} §(\d+[a-z]?)\.", SPEC.read_text(encoding="utf-8"), re.M))


def test_spec_has_the_external_contracts_section_numbers() -> None:
    assert _sections() >= {"1", "2", "3", "4", "5", "5a", "5b", "6", "7", "8", "9", "10"}


def test_every_citation_names_a_section_of_the_spec() -> None:
    sections = _sections()
    cited = [(name, number) for name, text in _tracked_text_files().items() for number in CITATION.findall(text)]
    assert cited, "no file cites docs/CONTRACT.md: the pattern is wrong"
    unknown = [(name, number) for name, number in cited if number not in sections]
    assert not unknown, f"citations of sections docs/CONTRACT.md does not have: {unknown}"


def test_nothing_points_outside_the_repository() -> None:
    outside = sorted(name for name, text in _tracked_text_files().items() if OUTSIDE.search(text))
    assert not outside, f"files that cite a folder outside the repository instead of docs/CONTRACT.md: {outside}"


def test_every_citation_names_the_spec_by_its_path() -> None:
    bare = sorted(name for name, text in _tracked_text_files().items() if BARE.search(text))
    assert not bare, f"files citing the spec without its docs/ path: {bare}"
