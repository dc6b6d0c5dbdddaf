"""MkDocs hooks for the kltrust documentation site (mkdocs.yml: ``hooks: [mkdocs_hooks.py]``).

Offline maths. The site renders its maths (pymdownx.arithmatex, generic mode) with MathJax 3. Rather
than loading MathJax from a CDN, this hook adds MathJax's single-file TeX-to-SVG bundle
(``es5/tex-svg-full.js``: every TeX extension included, SVG output, so no fonts or further
components are fetched) from the pip package ``django-static-mathjax`` (MathJax 3.2.2 as plain static
files under ``mathjax/static/mathjax``; Django itself is not needed) to the built site, with
MathJax's licence beside it. The package is part of the ``docs`` extra (setup.cfg), installed by
``make docs``.

Executed notebooks. The committed notebooks carry no outputs, and a docs build trains nothing.
`make notebooks` writes executed copies (outputs and figures) to ``runs/notebooks/``; where they
exist, each becomes a page ``notebooks/NAME.md`` of the site (`notebook_markdown`: its Markdown
cells as written, so their maths renders like any page's; code fenced; text outputs fenced;
figures embedded as PNG data), and ``results/notebooks.md`` lists them. Without them that page
says how to build them.
"""

from __future__ import annotations

import json
import pathlib
import re

from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File, Files

MATHJAX_BUNDLE = "es5/tex-svg-full.js"
SITE_DIR = "javascripts/vendor/mathjax"  # mkdocs.yml's extra_javascript names this path


def _mathjax_root() -> pathlib.Path:
    try:
        import mathjax  # django-static-mathjax's package
    except ImportError as error:
        raise PluginError(
            "MathJax for the docs site comes from the 'django-static-mathjax' package: "
            "pip install -e '.[docs]' (or run `make docs`)") from error
    root = pathlib.Path(mathjax.__file__).parent / "static" / "mathjax"
    if not (root / MATHJAX_BUNDLE).is_file():
        raise PluginError(f"{root / MATHJAX_BUNDLE} is missing: reinstall django-static-mathjax")
    return root


def on_files(files: Files, config) -> Files:
    root = _mathjax_root()
    for source, name in ((MATHJAX_BUNDLE, "tex-svg-full.js"), ("LICENSE", "LICENSE")):
        files.append(File.generated(config, f"{SITE_DIR}/{name}", abs_src_path=str(root / source)))
    for path in _executed_notebooks(config):
        notebook = json.loads(path.read_text())
        files.append(File.generated(config, f"{NOTEBOOK_PAGES}/{path.stem}.md",
                                    content=notebook_markdown(notebook)))
    return files


# ---------------------------------------------------------------- executed notebooks as pages

EXECUTED = "runs/notebooks"  # `make notebooks`'s --out, relative to mkdocs.yml
NOTEBOOK_PAGES = "notebooks"  # where their pages go in the site
NOTEBOOKS_PAGE = "results/notebooks.md"  # the page that lists them
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")  # colour codes in tracebacks


def _executed_notebooks(config) -> list[pathlib.Path]:
    root = pathlib.Path(config.config_file_path).parent / EXECUTED
    return sorted(root.glob("*.ipynb"))


def _text(value) -> str:
    """A notebook field that nbformat stores as a string or as a list of lines."""
    return value if isinstance(value, str) else "".join(value)


def _fenced(text: str, language: str = "text") -> str:
    fence = "```"
    while fence in text:  # a fence longer than any run of backticks inside
        fence += "`"
    return f"{fence}{language}\n{text.rstrip()}\n{fence}"


def _output(output: dict) -> str | None:
    kind = output.get("output_type")
    if kind == "stream":
        return _fenced(_text(output["text"]))
    if kind == "error":
        return _fenced(_ANSI.sub("", "\n".join(output.get("traceback", []))))
    data = output.get("data", {})
    if "image/png" in data:
        png = _text(data["image/png"]).replace("\n", "")
        return f'<img alt="figure" src="data:image/png;base64,{png}">'
    if "text/plain" in data:
        return _fenced(_text(data["text/plain"]))
    return None


def notebook_markdown(notebook: dict) -> str:
    """A page of an executed notebook (nbformat 4 as JSON): Markdown cells as they are, each code
    cell fenced as Python followed by its outputs (text fenced, PNG figures inline)."""
    parts = []
    for cell in notebook.get("cells", []):
        source = _text(cell.get("source", ""))
        if cell["cell_type"] == "markdown":
            parts.append(source)
        elif cell["cell_type"] == "code":
            parts.append(_fenced(source, "python"))
            parts.extend(p for p in map(_output, cell.get("outputs", [])) if p is not None)
    return "\n\n".join(parts) + "\n"


def _notebook_list(config) -> str:
    paths = _executed_notebooks(config)
    if not paths:
        return ("\n## Executed copies\n\nNone in this build: `make notebooks` writes them to "
                f"`{EXECUTED}/`, and `make docs` then renders each one as a page here.\n")
    links = "\n".join(f"- [{p.stem}](../{NOTEBOOK_PAGES}/{p.stem}.md)" for p in paths)
    return ("\n## Executed copies\n\nRendered from `" + EXECUTED + "/` (written by `make "
            "notebooks`; not committed):\n\n" + links + "\n")


# GitHub-flavoured lists, read by Python-Markdown. The pages are written to read well on GitHub,
# where a list may follow a paragraph line directly and nests by 2 spaces; Python-Markdown needs a
# blank line before a list (or a table) and 4 spaces per nesting level. This rewrites each page's
# Markdown on its way to the renderer (the files are not changed): a blank line is inserted where
# needed, and a list block indented by 2-space steps has its indentation doubled (a block already
# in 4-space steps is left alone, so the rewrite is idempotent). Fenced code is never touched.

_BULLET = re.compile(r"[-*+] ")
_ORDERED = re.compile(r"(\d+)\. ")


def _item(line: str, previous: str | None) -> bool:
    """Whether an unindented line starts a list item, as on GitHub (CommonMark): a bullet always; a
    number only after a blank line, or as "1." (so a wrapped "256. The ..." stays in its paragraph)."""
    if _BULLET.match(line):
        return True
    number = _ORDERED.match(line)
    return bool(number) and (not (previous or "").strip() or number.group(1) == "1")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def github_lists(markdown: str) -> str:
    lines = markdown.split("\n")
    out: list[str] = []
    i = 0
    fence = None
    while i < len(lines):
        line = lines[i]
        stripped = line.lstrip(" ")
        if fence is not None:
            out.append(line)
            if stripped.startswith(fence):
                fence = None
            i += 1
            continue
        if stripped.startswith(("```", "~~~")):
            fence = stripped[:3]
            out.append(line)
            i += 1
            continue
        starts_table = line.startswith("|") and out and not out[-1].startswith("|")
        is_item = _indent(line) == 0 and _item(line, out[-1] if out else None)
        if (starts_table or is_item) and out and out[-1].strip():
            out.append("")
        if is_item:
            # The list block: this item and every following line that is blank, indented, or
            # another item at the left margin; it ends at any other unindented line or a fence.
            j = i + 1
            while j < len(lines):
                nxt = lines[j]
                if nxt.lstrip(" ").startswith(("```", "~~~")):
                    break
                if nxt.strip() and _indent(nxt) == 0 and not _item(nxt, lines[j - 1]):
                    break
                j += 1
            while j > i + 1 and not lines[j - 1].strip():
                j -= 1  # trailing blank lines belong to what follows
            block = lines[i:j]
            if any(_indent(b) % 4 == 2 for b in block if b.strip()):
                block = [" " * (2 * _indent(b)) + b.lstrip(" ") if b.strip() else b for b in block]
            for k, b in enumerate(block):
                # a table inside a list item needs a blank line before it, too
                if k and b.lstrip().startswith("|") and block[k - 1].strip() \
                        and not block[k - 1].lstrip().startswith("|"):
                    out.append("")
                out.append(b)
            i = j
            continue
        out.append(line)
        i += 1
    return "\n".join(out)


def on_page_markdown(markdown: str, page, config, files) -> str:
    if page.file.src_uri == NOTEBOOKS_PAGE:
        markdown += _notebook_list(config)
    return github_lists(markdown)
