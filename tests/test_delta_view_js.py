"""The delta view's page module (delta_view.js) under Node: the block splitter, the
Markdown renderer, which must escape everything the model writes, the run state a model
keeps from its first message on, and the status line's amber context meter."""

from __future__ import annotations

import pytest
from support.page_module import run_with_page_module

CHECKS = r"""
import { BlockSplitter, RunState, renderMarkdown, statusHtml } from './delta_view.mjs';
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

// A model restored mid-run: its state's `start`, then numbered ops, one of them lost.
const empty = { format: 'markdown', status: {}, stop: 'ready', answer: '', reasoning: '',
  tools: [], asks: [] };
const sent = [];
let listener = null;
const model = {
  get: (key) => ({ run_id: 'r1', start: { seq: 2, snapshot: { ...empty, answer: 'Hi' } } })[key],
  on: (name, callback) => { listener = callback; },
  off: () => { listener = null; },
  send: (msg) => sent.push(msg),
};
const run = new RunState(model);
const seen = [];
run.views.add({
  apply: (op) => seen.push(op[0]),
  restore: (s) => seen.push(`restore ${s.answer}`),
});
listener({ seq: 2, ops: [['answer+', ' again']] }); // already in the start state
listener({ seq: 3, ops: [['answer+', ' there'], ['tool', { call_id: 'c1', state: 'running' }]] });
results.afterOps = [run.seq, run.state.answer, run.state.tools.length, sent.length];
listener({ seq: 5, ops: [['answer+', '!']] }); // 4 was lost: ask for the whole state
listener({ seq: 6, ops: [['tool', { call_id: 'c1', state: 'ok' }], ['stop', 'disabled']] });
results.syncAsked = sent.map((m) => m.event);
listener({ snapshot: { ...empty, answer: 'Hi there!', tools: [{ call_id: 'c1' }] }, seq: 5,
  for: 'another page' });
results.othersIgnored = run.seq;
listener({ snapshot: { ...empty, answer: 'Hi there!', tools: [{ call_id: 'c1' }] }, seq: 5,
  for: sent[0].nonce });
results.afterSync = [run.seq, run.state.answer, run.state.tools, run.state.stop];
results.seen = seen;

// The status line: the meter amber only when the kernel flags it.
const line = { head: 'session a · m · running · 170k / 200k', elapsed: 1, tail: '' };
results.amber = statusHtml({ ...line, warn: '170k / 200k' }, 0.5);
results.plain = statusHtml({ ...line, warn: '' }, 0.5);
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
    return run_with_page_module(tmp_path_factory.mktemp("js"), CHECKS, TEXT, HOSTILE)


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


def test_a_model_keeps_the_run_state_from_its_start_and_resyncs_after_a_gap(rendered):
    assert rendered["afterOps"] == [3, "Hi there", 1, 0]  # no round trip while in order
    assert rendered["syncAsked"] == ["sync"]
    assert rendered["othersIgnored"] == 3  # a snapshot another page asked for
    seq, answer, tools, stop = rendered["afterSync"]
    assert (seq, answer, stop) == (6, "Hi there!", "disabled")
    assert tools == [{"call_id": "c1", "state": "ok"}]  # op 6, taken after the snapshot
    assert rendered["seen"] == ["answer+", "tool", "restore Hi there!", "tool", "stop"]


def test_the_context_meter_turns_amber_near_the_reserve(rendered):
    amber, plain = rendered["amber"], rendered["plain"]
    assert '<span class="crush-warn">170k / 200k</span>' in amber
    assert amber.endswith('running · <span class="crush-warn">170k / 200k</span> · 1.5 s')
    assert "crush-warn" not in plain and plain.endswith("170k / 200k · 1.5 s")
