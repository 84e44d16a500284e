"""%crush verify from a real JupyterLab page: the live document is verified, so an edit the
user has not saved counts, and the run view follows the fresh kernel's cells to the report."""

from __future__ import annotations

import pytest
from test_lab import Notebook

pytestmark = [pytest.mark.slow, pytest.mark.browser]

SETUP = "%load_ext jupyter_crush\nprint('setup done')"
EDITED = "value = never_defined + 1"


def test_verify_runs_the_live_document_with_its_unsaved_edit(page, lab_server):
    name = lab_server.write_notebook([SETUP, "value = 1", "%crush verify", "print(value)"])
    notebook = Notebook(page)
    notebook.open(lab_server.lab_url(name), cells=4)
    notebook.run(0)
    notebook.wait_output(0, r"setup done")
    notebook.run(1)  # the saved cell ran fine in this kernel

    # Change cell 1 in the page only: the file on disk still runs clean.
    notebook.cells.nth(1).locator(".cm-content").click()
    page.keyboard.press("ControlOrMeta+a")
    page.keyboard.type(EDITED)
    page.keyboard.press("Escape")
    assert "never_defined" not in (lab_server.root / name).read_text()

    notebook.run(2)
    text = notebook.wait_output(2, r"failed at cell 1", timeout=120_000)
    assert f"verify {name} (live document, unsaved changes included)" in text
    assert "NameError: name 'never_defined' is not defined" in text
    assert "in this kernel: ran without error ([2])" in text
