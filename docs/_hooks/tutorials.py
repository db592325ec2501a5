"""mkdocs hook: render every ``tutorials/*.py`` (jupytext percent notebooks) as a page.

Each tutorial becomes ``tutorials/<stem>.md``: its markdown cells as text, its code cells
as Python blocks, under a line saying how to run it. The pages are generated at build time,
so a new tutorial appears in the site (and in the nav's Tutorials section) without an edit
here, and the rendered text cannot drift from the code the tests execute.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TUTORIALS = ROOT / "tutorials"


FRONT_MATTER = re.compile(r"\A---\n.*?\n---\n\s*", re.DOTALL)


def _pages() -> list[Path]:
    return sorted(TUTORIALS.glob("[0-9][0-9]_*.py"))


def _markdown(path: Path) -> str:
    import jupytext

    notebook = jupytext.read(path)
    notebook.metadata = {}
    body = jupytext.writes(notebook, fmt="md")
    body = FRONT_MATTER.sub("", body, count=1)  # jupytext's own header, not page text
    how = (
        f'!!! note "Run it"\n    `python tutorials/{path.name}` (`SIMGEN_FAST=1` for a quick '
        f"pass), or open `tutorials/{path.name}` as a notebook with jupytext.\n\n"
    )
    lines = body.splitlines(keepends=True)
    # keep the tutorial's own title first, then the note
    if lines and lines[0].startswith("# "):
        return lines[0] + "\n" + how + "".join(lines[1:])
    return how + body


def on_config(config):  # noqa: ANN001, ANN201
    for item in config["nav"] or []:
        if isinstance(item, dict) and "Tutorials" in item:
            item["Tutorials"] = [f"tutorials/{p.stem}.md" for p in _pages()]
    return config


def on_files(files, config):  # noqa: ANN001, ANN201
    from mkdocs.structure.files import File

    for path in _pages():
        files.append(File.generated(config, f"tutorials/{path.stem}.md", content=_markdown(path)))
    return files


OUTSIDE_LINK = re.compile(r"\[([^\]]+)\]\(((?:\.\./)+[^)\s#]+)(#[^)\s]*)?\)")


def on_page_markdown(markdown, page, config, files):  # noqa: ANN001, ANN201
    """A relative link to a repository file outside the site (``../benchmarks/x.md``) is
    written as the file's path, since the site has no page for it; a link to a file that
    does not exist is left alone, so the strict build still reports it."""
    if page.file.generated_by or page.file.abs_src_path is None:
        return markdown
    docs = Path(config["docs_dir"]).resolve()
    here = Path(page.file.abs_src_path).parent

    def repl(match: re.Match) -> str:
        target = (here / match.group(2)).resolve()
        if docs in target.parents or not target.exists():
            return match.group(0)
        return f"{match.group(1)} (`{target.relative_to(ROOT).as_posix()}`)"

    return OUTSIDE_LINK.sub(repl, markdown)
