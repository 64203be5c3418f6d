"""The README is the front door: short, two set-up commands, and links that lead somewhere."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_the_readme_stays_a_front_door() -> None:
    assert len(README.encode()) <= 12 * 1024
    commands = re.findall(r"^bash scripts/\S+", README, flags=re.M)
    assert commands == ["bash scripts/demo.sh", "bash scripts/test.sh"]
    assert "```\n   Hospital A" in README  # the diagram


def test_every_relative_link_of_the_readme_exists() -> None:
    links = [link for link in re.findall(r"\]\(([^)#]+)\)", README) if "://" not in link]
    assert links
    missing = [link for link in links if not (ROOT / link).exists()]
    assert not missing


def test_every_docs_page_is_in_the_navigation() -> None:
    nav = (ROOT / "mkdocs.yml").read_text()
    pages = {
        str(path.relative_to(ROOT / "docs"))
        for path in (ROOT / "docs").rglob("*.md")
        if "_hooks" not in path.parts
    }
    assert pages
    assert not [page for page in pages if page not in nav]
