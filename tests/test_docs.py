"""The documentation stays true to the code: generated flag tables current, links resolving, README short."""

import re
from pathlib import Path

from tools import reference

ROOT = Path(__file__).resolve().parents[1]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def _markdown_files():
    return [ROOT / "README.md", ROOT / "data" / "README.md", *sorted((ROOT / "docs").rglob("*.md")),
            *sorted((ROOT / "experiments").glob("*.md"))]


def test_flag_tables_are_generated_from_the_current_parsers():
    """Every flag of every entry script is in its reference page, as its parser declares it today."""
    for page in reference.SCRIPTS:
        text = (reference.PAGES / f"{page}.md").read_text()
        assert reference.render(page, text) == text, f"docs/reference/{page}.md: run python -m tools.reference"


def test_every_flag_has_help_and_a_row():
    import importlib

    for page, module in reference.SCRIPTS.items():
        parser = importlib.import_module(module).get_args_parser()
        text = (reference.PAGES / f"{page}.md").read_text()
        for action in parser._actions:
            if action.option_strings and action.dest != "help":
                assert action.help, f"{module}.py {action.option_strings[0]}: no help"
                assert f"`{action.option_strings[0]}`" in text, f"{page}.md lacks {action.option_strings[0]}"


def test_relative_links_resolve():
    broken = []
    for md in _markdown_files():
        for target in LINK.findall(md.read_text()):
            if "://" in target or target.startswith(("#", "mailto:")):
                continue
            path = (md.parent / target.split("#")[0]).resolve()
            if not path.exists():
                broken.append(f"{md.relative_to(ROOT)} -> {target}")
    assert not broken, broken


def test_readme_is_the_users_page():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 300
