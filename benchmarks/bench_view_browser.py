"""The run views in a real JupyterLab page (headless Debian Chromium, Playwright).

    .venv/bin/python benchmarks/bench_view_browser.py [--quick]

For each view (``run_view = "widgets"``, the ipywidgets view, and ``"delta"``), in one
JupyterLab server and one run:

1. While a ~100 KB answer (prose, then a long code block) streams at 500 tokens/s: the
   page's main-thread long tasks (PerformanceObserver ``longtask``): the longest, and how
   many took over 50 ms (goal: none).
2. Stop clicked while an answer streams -> "Stopping…" painted (the click event's time to
   the frame after the button's text changed; goal <= 50 ms), broken down (medians): the
   page's click handlers running (the input waited for the main thread until then), and
   the animation-frame callbacks of the frame that paints it.
3. First token: the kernel received it (the model yielded it; wall clock) -> painted in
   the page (goal <= 50 ms), for runs whose model takes 0.5 s to its first token, as a
   real one does (the view is on the page by then), and for runs whose first token comes
   at once, racing the view's creation in the page. For the delta view, broken down
   (medians, wall clock, from the kernel receiving the token): when the run's model (comm
   open) and its display arrived on the page's websocket and its view was on the page
   (negative: before the token), the kernel sending the token (the first ``answer+`` op),
   the op arriving, and painted.

"Painted" is taken as a requestAnimationFrame callback then a task after the change: the
frame that shows it has been produced. The machine is shared: the numbers are printed,
nothing passes or fails. ``--quick`` measures the delta view alone, with a ~30 KB answer and
3 Stop clicks.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "browser"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_view import PROSE, code_block
from goals import measured
from lab_harness import CHROMIUM, CHROMIUM_ARGS, running_lab_server
from playwright.sync_api import sync_playwright
from test_lab import Notebook


def big_answer(code_lines: int) -> str:
    return PROSE + "\n\n" + code_block(code_lines) + "\n\nFINAL-WORD"


BIG = big_answer(1300)  # ~100 KB
QUICK_BIG = big_answer(300)  # ~30 KB, for --quick
FIRST_WORD = "Zanzibar"

# Page-side probes, installed before JupyterLab loads.
PROBES = (
    """
window.__bench = {
  longtasks: [], paints: [], stops: [], firstCell: null, cleared: false, stopAt: null,
  stopHandled: null, stopSteps: [], runs: [],
};
// Each delta run as the page's websocket delivers it: its model's comm open, its display,
// its first answer op (wall clock, before JupyterLab handles the message), and its view.
const utf8 = new TextDecoder();
function jupyterMessage(data) {
  if (typeof data === 'string') return JSON.parse(data);
  const view = new DataView(data);
  const offsets = [];
  for (let i = 0, n = Number(view.getBigUint64(0, true)); i < n; i++) {
    offsets.push(Number(view.getBigUint64(8 * (i + 1), true)));
  }
  const part = (i) => utf8.decode(data.slice(offsets[i], offsets[i + 1]));
  const header = JSON.parse(part(1));
  const wanted = ['comm_open', 'comm_msg', 'display_data'].includes(header.msg_type);
  return { header, content: wanted ? JSON.parse(part(4)) : {} };
}
function onKernelMessage(data) {
  const at = Date.now();
  const { header, content } = jupyterMessage(data);
  const runs = window.__bench.runs;
  if (header.msg_type === 'comm_open' && (content.data?.state || {}).module_hash) {
    runs.push({ id: content.comm_id, open: at });
  }
  const run = runs.find((r) => r.id === content.comm_id);
  if (header.msg_type === 'display_data') {
    const shown = runs.find(
      (r) => r.id === content.data?.['application/vnd.jupyter.widget-view+json']?.model_id,
    );
    if (shown) shown.display = at;
  } else if (run && run.first === undefined && header.msg_type === 'comm_msg'
      && (content.data?.content?.ops || []).some((op) => op[0] === 'answer+')) {
    run.first = at;
  }
}
const NativeWebSocket = window.WebSocket;
window.WebSocket = class extends NativeWebSocket {
  constructor(...args) {
    super(...args);
    this.addEventListener('message', (event) => onKernelMessage(event.data));
  }
};
new PerformanceObserver((list) => {
  for (const e of list.getEntries()) window.__bench.longtasks.push(e.duration);
}).observe({ type: 'longtask', buffered: true });
// Both clocks are read after the frame: performance's for the click (the event's own
// time is on it), the wall clock for the kernel's (time.time() in the same machine).
function afterPaint(record) {
  requestAnimationFrame(() => {
    const frame = performance.now();
    setTimeout(() => record(performance.now(), Date.now(), frame), 0);
  });
}
window.__armFirstToken = (cell) => {
  window.__bench.firstCell = cell;
  window.__bench.cleared = false;
};
document.addEventListener('click', (event) => {
  const button = event.target.closest && event.target.closest('button');
  if (button && button.textContent.trim() === 'Stop') {
    window.__bench.stopAt = event.timeStamp;
    window.__bench.stopHandled = performance.now();
  }
}, true);
new MutationObserver(() => {
  const b = window.__bench;
  const run = b.runs[b.runs.length - 1];
  if (run && run.rendered === undefined && document.querySelectorAll('.crush-run').length) {
    const views = [...document.querySelectorAll('.crush-run')];
    if (views.some((v) => !v.dataset.benchSeen)) {
      views.forEach((v) => { v.dataset.benchSeen = '1'; });
      run.rendered = Date.now();
    }
  }
  if (b.stopAt !== null) {
    for (const button of document.querySelectorAll('.jp-OutputArea-output button')) {
      if (button.textContent.trim() === 'Stopping\\u2026') {
        const clicked = b.stopAt;
        b.stopAt = null;
        const handled = b.stopHandled;
        afterPaint((t, _, frame) => {
          b.stops.push(t - clicked);
          b.stopSteps.push({ handled: handled - clicked, frame: frame - clicked });
        });
        break;
      }
    }
  }
  if (b.firstCell !== null) {
    // The cell's output must first be cleared (a re-run cell still shows the last answer).
    const cell = document.querySelectorAll('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-Cell')[
      b.firstCell
    ];
    const shown = cell ? cell.querySelector('.jp-OutputArea').textContent : '';
    if (!shown.includes('"""
    + FIRST_WORD
    + """')) {
      b.cleared = true;
    } else if (b.cleared) {
      b.firstCell = null;
      afterPaint((_, wall) => b.paints.push(wall));
    }
  }
}).observe(document, { subtree: true, childList: true, characterData: true });
"""
)


def setup_cell(view: str, big: str) -> str:
    return f"""\
%load_ext jupyter_crush
%config CrushConfig.run_view = "{view}"
import asyncio
import time
from jupyter_crush.magics import current
from jupyter_crush.core.model import TextDelta
from jupyter_crush.testing import ScriptedModel, tokenize
crush = current()
received = []
sent = []  # the delta view's first answer op of each run, as the kernel sends it

from jupyter_crush.view import delta as delta_view
_send_ops = delta_view.DeltaRunView._send_ops

def stamped_send_ops(view, ops):
    if not getattr(view, "bench_sent", False) and any(op[0] == "answer+" for op in ops):
        view.bench_sent = True
        sent.append(time.time() * 1000)
    _send_ops(view, ops)

delta_view.DeltaRunView._send_ops = stamped_send_ops

class Stamped(ScriptedModel):
    def __init__(self, *args, to_first_token=0.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.to_first_token = to_first_token

    async def stream(self, *args, **kwargs):
        await asyncio.sleep(self.to_first_token)
        first = True
        async for event in super().stream(*args, **kwargs):
            if first and isinstance(event, TextDelta):
                first = False
                received.append(time.time() * 1000)
            yield event

BIG = {f"{FIRST_WORD} " + big!r}
print("setup done")"""


def big_cell() -> str:
    return (
        "model = Stamped([BIG], tokens_per_second=500)\n"
        "gate = model.gate(step=0, after_tokens=len(tokenize(BIG)))\n"
        "crush.use_model(model)"
    )


# A real model's time to first token: the view is on the page before the token comes.
TO_FIRST_TOKEN = 0.5
SLOW = (
    f"crush.use_model(Stamped([BIG] * 20, tokens_per_second=100, "
    f"to_first_token={TO_FIRST_TOKEN}))\n%crush cancel --all"
)
# The first token at once: it races the view's creation in the page.
QUICK = f"crush.use_model(Stamped([{FIRST_WORD + ' is an island.'!r}] * 20, tokens_per_second=500))"


def bench_view(page, server, view: str, stops: int, big: str) -> dict:
    name = server.write_notebook(
        [
            setup_cell(view, big),
            big_cell(),
            "%%crush --new --fresh\nthe big one",
            "gate.release()",
            SLOW,
            "%%crush --new --fresh\nstop me",
            QUICK,
            "%%crush --new --fresh\nwhere is it?",
            "import json; print('R', json.dumps([received, sent]))",
        ]
    )
    notebook = Notebook(page)
    notebook.open(server.lab_url(name), cells=9)
    notebook.run(0)
    notebook.wait_output(0, "setup done")
    notebook.run(1)
    notebook.wait_output(0, "setup done")
    page.wait_for_timeout(500)
    page.evaluate("() => { window.__bench.longtasks = []; window.__armFirstToken(2); }")
    notebook.run(2)
    notebook.wait_output(2, "FINAL-WORD", timeout=600_000)
    longtasks = page.evaluate("() => window.__bench.longtasks")
    notebook.run(3)
    notebook.wait_output(2, r"· done", timeout=120_000)
    notebook.run(4)
    for _ in range(stops):
        page.evaluate("() => window.__armFirstToken(5)")
        notebook.run(5)
        notebook.wait_output(5, r"running")
        notebook.wait_output(5, FIRST_WORD)
        page.wait_for_timeout(700)
        # Held 80 ms, as a hand holds a click: pressed and released at once, the release
        # would wait for the page's work on the press (JupyterLab selects the cell), which
        # a real click has long finished by the release.
        notebook.output(5).get_by_role("button", name="Stop").click(delay=80)
        notebook.wait_output(5, r"· canceled")
    notebook.run(6)
    for _ in range(stops - 1):
        painted = page.evaluate(
            "() => { window.__armFirstToken(7); return window.__bench.paints.length; }"
        )
        notebook.run(7)
        page.wait_for_function(f"() => window.__bench.paints.length > {painted}")
        notebook.wait_output(7, r"· done")
    notebook.run(8)
    stamps = notebook.wait_output(8, r"R \[").split("R ", 1)[1].splitlines()[0]
    received, sent = json.loads(stamps)
    probes = page.evaluate("() => window.__bench")
    # Runs in order: the big one and the quick ones race the view; the stopped ones wait
    # TO_FIRST_TOKEN first.
    kinds = ["racing"] + ["ready"] * stops + ["racing"] * (stops - 1)
    first: dict[str, dict[str, list[float]]] = {"racing": {}, "ready": {}}
    for i, (kind, token) in enumerate(zip(kinds, received, strict=False)):
        run = probes["runs"][i] if i < len(probes["runs"]) else {}
        stamps = {step: at for step, at in run.items() if step != "id"}
        stamps["painted"] = probes["paints"][i] if i < len(probes["paints"]) else None
        stamps["sent"] = sent[i] if i < len(sent) else None
        for step, at in stamps.items():
            if at is not None:
                first[kind].setdefault(step, []).append(at - token)
    return {
        "longtasks": longtasks,
        "stops": probes["stops"],
        "stop_steps": probes["stopSteps"],
        "first": first,
    }


FIRST_TOKEN_KINDS = [
    ("ready", f"{TO_FIRST_TOKEN} s after the run started (the view is up)"),
    ("racing", "at once (racing the view's creation)"),
]
#: The delta view's goal for the first token's paint, by kind.
FIRST_TOKEN_GOALS = {
    "ready": "browser.first_token_paint_ms",
    "racing": "browser.first_token_racing_ms",
}
#: The first token's way, in the order printed: (step, label).
STEPS = [
    ("open", "model opened"),
    ("display", "displayed"),
    ("rendered", "view on the page"),
    ("sent", "op sent"),
    ("first", "op arrived"),
    ("painted", "painted"),
]


def ms(values: list[float]) -> str:
    if not values:
        return "n=0"
    return f"n={len(values)} median={statistics.median(values):.0f} ms max={max(values):.0f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="the delta view only, a ~30 KB answer, 3 Stops"
    )
    args = parser.parse_args()
    stops, big = (3, QUICK_BIG) if args.quick else (6, BIG)
    views = ("delta",) if args.quick else ("widgets", "delta")
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"machine: {os.cpu_count()} CPUs, load average {load}; answer {len(big):,} chars")
    results = {}
    with tempfile.TemporaryDirectory() as base, sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        with running_lab_server(Path(base), Path(base) / "logs") as server:
            for view in views:
                context = browser.new_context(viewport={"width": 1400, "height": 1000})
                page = context.new_page()
                page.add_init_script(PROBES)
                page.set_default_timeout(60_000)
                results[view] = bench_view(page, server, view, stops, big)
                context.close()
        browser.close()
    for view, result in results.items():
        tasks = result["longtasks"]
        print(f"[{view}]")
        print(
            f"  1. long tasks while {len(big) // 1000} KB streams: {len(tasks)} in all, "
            f"{sum(t > 50 for t in tasks)} over 50 ms, longest {max(tasks, default=0):.0f} ms"
        )
        print(f"  2. Stop click -> Stopping… painted: {ms(result['stops'])}")
        if result["stop_steps"]:
            handled, frame = (
                statistics.median(step[key] for step in result["stop_steps"])
                for key in ("handled", "frame")
            )
            print(
                f"     from the click (medians, ms): handled +{handled:.0f}, "
                f"its frame's callbacks +{frame:.0f}"
            )
        for kind, label in FIRST_TOKEN_KINDS:
            steps = result["first"][kind]
            print(f"  3. first token kernel -> painted, {label}: {ms(steps.get('painted', []))}")
            if steps.get("sent"):
                way = ", ".join(
                    f"{name} {statistics.median(steps[step]):+.0f}"
                    for step, name in STEPS
                    if steps.get(step)
                )
                print(f"     from the kernel receiving it (medians, ms): {way}")
    delta = results["delta"]
    note = f"{len(big) // 1000} KB answer" if big is not BIG else ""
    measured("browser.long_tasks_over_50ms", sum(t > 50 for t in delta["longtasks"]), note)
    if delta["stops"]:
        measured("browser.stop_paint_ms", statistics.median(delta["stops"]))
    for kind, goal_id in FIRST_TOKEN_GOALS.items():
        painted = delta["first"][kind].get("painted")
        if painted:
            measured(goal_id, statistics.median(painted))


if __name__ == "__main__":
    main()
