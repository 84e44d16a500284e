"""The delta view's page module (delta_view.js) under Node: the block splitter and the
Markdown renderer, which must escape everything the model writes."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

MODULE = Path(__file__).resolve().parent.parent / "jupyter_crush" / "delta_view.js"

CHECKS = r"""
import { BlockSplitter, renderMarkdown } from './delta_view.mjs';
const results = {};
// A text streamed in pieces of any size splits into the same blocks as the whole text.
const text = process.argv[2];
function split(pieces) {
  const splitter = new BlockSplitter();
  let shown = '';
  const blocks = [];
  for (const piece of pieces) {
    shown += piece;
    for (const [s, e] of splitter.feed(shown)) blocks.push(shown.slice(s, e));
  }
  return [blocks, shown.slice(splitter.start)];
}
const whole = split([text]);
const ragged = [];
for (let i = 0, n = 1; i < text.length; i += n, n = (n * 7) % 13 + 1) {
  ragged.push(text.slice(i, i + n));
}
results.sameBlocks = JSON.stringify(split(ragged)) === JSON.stringify(whole);
results.blocks = whole[0];
results.tail = whole[1];
results.html = whole[0].map(renderMarkdown);
results.hostile = renderMarkdown(process.argv[3]);
console.log(JSON.stringify(results));
"""

TEXT = (
    "Intro with `code <b>` and **bold**.\n"
    "```python\nx = '<script>'\n\ny = 2 & 3\n```\n"
    "- a\n- b [link](https://example.org/?a=1&b=2)\n\n"
    "| h | i |\n|---|---|\n| 1 | <i>2</i> |\n\n"
    "Tail being writ"
)
HOSTILE = (
    '<img src=x onerror="alert(1)"> [x](javascript:alert(1)) '
    '[y](https://e.org/" onmouseover="alert(1)) `</code><script>` *<em>*'
)


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> dict:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed (the labextension build needs it too)")
    work = tmp_path_factory.mktemp("js")
    # The module is an ES module named .js for anywidget; Node wants .mjs to import it.
    (work / "delta_view.mjs").write_text(MODULE.read_text())
    (work / "checks.mjs").write_text(CHECKS)
    out = subprocess.run(
        [node, str(work / "checks.mjs"), TEXT, HOSTILE],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return json.loads(out.stdout)


def test_blocks_do_not_depend_on_how_the_text_arrived(rendered):
    assert rendered["sameBlocks"]
    blocks, tail = rendered["blocks"], rendered["tail"]
    assert "".join(blocks) + tail == TEXT
    # A fence interrupts the paragraph before it and ends its own block.
    assert blocks[0] == "Intro with `code <b>` and **bold**.\n"
    assert blocks[1] == "```python\nx = '<script>'\n\ny = 2 & 3\n```\n"
    assert tail == "Tail being writ"


def test_markdown_is_rendered_and_everything_from_the_model_escaped(rendered):
    intro, code, items, table = rendered["html"]
    assert intro == "<p>Intro with <code>code &lt;b&gt;</code> and <strong>bold</strong>.</p>"
    assert code == (
        '<pre><code class="language-python">x = &#39;&lt;script&gt;&#39;\n\ny = 2 &amp; 3\n'
        "</code></pre>"
    )
    assert '<a href="https://example.org/?a=1&amp;b=2"' in items and "<li>a</li>" in items
    assert "<td>&lt;i&gt;2&lt;/i&gt;</td>" in table
    hostile = rendered["hostile"]
    for tag in ("<img", "<script", 'href="javascript', 'onmouseover="', "<em><em>"):
        assert tag not in hostile, hostile
    assert "<code>&lt;/code&gt;&lt;script&gt;</code>" in hostile
