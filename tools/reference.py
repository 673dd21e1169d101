"""Write the flag tables of docs/reference/*.md from the entry scripts' parsers (their one declaration).

    python -m tools.reference            # rewrite every page's table
    python -m tools.reference --check    # exit 1 and name the pages whose table is not current

Each page keeps its prose above a line ``<!-- flags -->``; everything below it is generated: one table per
argument group (flag, default, what it does), from ``get_args_parser()`` of the script, so the help text
of a flag is written once, in its script. The training page also lists the defaults in which the five
training scripts differ.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGES = ROOT / "docs" / "reference"
MARKER = "<!-- flags -->"
#: page name -> the script (module) whose parser it documents
SCRIPTS = {
    "make_synthetic_data": "make_synthetic_data", "generate_train_data": "generate_train_data",
    "generate_test_data": "generate_test_data", "make_val_images": "make_val_images", "train": "train",
    "predict": "predict", "vote": "vote", "fill_hole": "fill_hole", "score": "score", "polygonize": "polygonize",
    "rasterize_labels": "rasterize_labels", "areas": "areas", "run_pipeline": "run_pipeline",
}
TRAINING_SCRIPTS = ["train", "train_focalloss", "train_swa", "train_multiscale", "Unet_resnet34.train"]


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _default(action: argparse.Action) -> str:
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        return "off" if action.default is False else "on"
    if action.default is None or action.default == argparse.SUPPRESS:
        return "-"
    value = " ".join(map(str, action.default)) if isinstance(action.default, (list, tuple)) else action.default
    return f"`{value}`"


def _spelling(action: argparse.Action) -> str:
    flag = ", ".join(f"`{s}`" for s in action.option_strings)
    if action.choices is not None and not isinstance(action.choices, range):
        return f"{flag} {{{','.join(map(str, action.choices))}}}"
    if action.nargs == 0:
        return flag
    return f"{flag} {action.metavar or action.dest.upper()}"


def _help(action: argparse.Action, prog: str) -> str:
    text = action.help or ""
    params = dict(vars(action), prog=prog)
    if params.get("choices") is not None:
        params["choices"] = ", ".join(map(str, params["choices"]))
    return _cell(text % params if "%(" in text else text)


def flag_tables(parser: argparse.ArgumentParser) -> str:
    """Markdown: one table per argument group of ``parser`` (``--help`` left out)."""
    out = []
    for group in parser._action_groups:
        actions = [a for a in group._group_actions if a.option_strings and a.dest != "help"]
        if not actions:
            continue
        title = "options" if group.title in ("options", "optional arguments") else group.title
        out += [f"### {title}", ""]
        if group.description:
            out += [group.description, ""]
        out += ["| flag | default | what it does |", "|---|---|---|"]
        out += [f"| {_spelling(a)} | {_default(a)} | {_help(a, parser.prog)} |" for a in actions]
        out.append("")
    return "\n".join(out)


def training_defaults() -> str:
    """Markdown: the flags whose defaults differ between the five training scripts."""
    parsers = {m: importlib.import_module(m).get_args_parser() for m in TRAINING_SCRIPTS}
    dests = [a.dest for a in parsers["train"]._actions if a.option_strings and a.dest != "help"]
    rows = []
    for dest in dests:
        values = [_default(next(a for a in p._actions if a.dest == dest)) for p in parsers.values()]
        if len(set(values)) > 1:
            rows.append(f"| `--{dest}` | " + " | ".join(values) + " |")
    names = [m.replace(".", "/") + ".py" for m in TRAINING_SCRIPTS]
    return "\n".join(["### defaults of each training script", "",
                      "| flag | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|", *rows, ""])


def generated(page: str) -> str:
    """What follows the marker on ``page``."""
    parser = importlib.import_module(SCRIPTS[page]).get_args_parser()
    parser.prog = SCRIPTS[page] + ".py"
    body = [MARKER, "", f"## Flags (`python {parser.prog} --help`)", "", flag_tables(parser)]
    if page == "train":
        body.append(training_defaults())
    return "\n".join(body).rstrip() + "\n"


def render(page: str, text: str) -> str:
    """``text`` of the page with its generated part replaced."""
    if MARKER not in text:
        raise ValueError(f"{page}: no line {MARKER}")
    return text[: text.index(MARKER)] + generated(page)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Write (or --check) the flag tables of docs/reference/*.md.")
    p.add_argument("--check", action="store_true", help="only report pages whose table is not current (exit 1)")
    args = p.parse_args(argv)
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    stale = []
    for page in SCRIPTS:
        path = PAGES / f"{page}.md"
        text = path.read_text()
        new = render(page, text)
        if new != text:
            stale.append(path)
            if not args.check:
                path.write_text(new)
    for path in stale:
        print(f"{path.relative_to(ROOT)}: {'not current' if args.check else 'rewritten'}")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
