"""mkdocs_hooks.notebook_markdown: an executed notebook as a page of the docs site."""

from __future__ import annotations

import base64

import nbformat

import mkdocs_hooks


def test_an_executed_notebook_becomes_markdown_with_its_outputs():
    png = base64.b64encode(b"\x89PNG fake bytes").decode()
    notebook = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell("# Title\n\nThe KL $D(\\pi \\| \\pi_{ref})$."),
        nbformat.v4.new_code_cell("print('a ``` b')", outputs=[
            nbformat.v4.new_output("stream", name="stdout", text="a ``` b\n")]),
        nbformat.v4.new_code_cell("plot()", outputs=[
            nbformat.v4.new_output("display_data", data={"image/png": png[:8] + "\n" + png[8:],
                                                          "text/plain": "<Figure>"})]),
        nbformat.v4.new_code_cell("1 / 0", outputs=[nbformat.v4.new_output(
            "error", ename="ZeroDivisionError", evalue="division by zero",
            traceback=["\x1b[0;31mZeroDivisionError\x1b[0m: division by zero"])]),
    ])
    page = mkdocs_hooks.notebook_markdown(dict(notebook))
    # Markdown cells pass through untouched (their maths is the site's to render).
    assert page.startswith("# Title\n\nThe KL $D(\\pi \\| \\pi_{ref})$.\n\n")
    # A fence longer than the backticks inside, so the output cannot close it early.
    assert "````python\nprint('a ``` b')\n````" in page
    assert "````text\na ``` b\n````" in page
    # The figure inline, its base64 joined back into one line; its text/plain twin dropped.
    assert f'<img alt="figure" src="data:image/png;base64,{png}">' in page
    assert "<Figure>" not in page
    # Tracebacks without terminal colour codes.
    assert "```text\nZeroDivisionError: division by zero\n```" in page and "\x1b" not in page
