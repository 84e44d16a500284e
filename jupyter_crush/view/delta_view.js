// The page side of the delta run view (jupyter_crush/delta_view.py has the protocol).
// The kernel sends only what changed; this view appends it and re-renders only the
// block still being written: finished Markdown blocks are rendered once, and an open
// code fence grows by appending to its text node.

const FENCE = /^ {0,3}(`{3,}|~{3,})/;
const ESCAPES = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };

function escapeHtml(text) {
  return text.replace(/[&<>"']/g, (c) => ESCAPES[c]);
}

// Emphasis, links and strikethrough on text that holds no code span.
function spans(text) {
  return escapeHtml(text)
    .replace(
      /\[([^\]\n]+)\]\(((?:https?:\/\/|mailto:)[^\s)]+)\)/g,
      '<a href="$2" target="_blank" rel="noopener noreferrer">$1</a>',
    )
    .replace(/\*\*(?=\S)([^*]*?\S)\*\*/g, "<strong>$1</strong>")
    .replace(/(^|[^\w])__(?=\S)([^_]*?\S)__(?![\w])/g, "$1<strong>$2</strong>")
    .replace(/(^|[^*\w])\*(?=[^\s*])([^*]*?[^\s*])\*(?![*\w])/g, "$1<em>$2</em>")
    .replace(/(^|[^\w])_(?=[^\s_])([^_]*?[^\s_])_(?![\w])/g, "$1<em>$2</em>")
    .replace(/~~(?=\S)([^~]*?\S)~~/g, "<del>$1</del>");
}

function inline(text) {
  let out = "";
  let last = 0;
  const code = /(`+)([^`]|[^`][\s\S]*?[^`])\1(?!`)/g;
  for (let m = code.exec(text); m; m = code.exec(text)) {
    out += `${spans(text.slice(last, m.index))}<code>${escapeHtml(m[2])}</code>`;
    last = code.lastIndex;
  }
  return out + spans(text.slice(last));
}

const HEADING = /^ {0,3}(#{1,6})(?:\s+(.*?))?\s*#*\s*$/;
const RULE = /^ {0,3}([-*_])(?: *\1){2,} *$/;
const ITEM = /^(\s*)([-*+]|\d{1,9}[.)])\s+(.*)$/;
const QUOTE = /^ {0,3}> ?(.*)$/;
const TABLE_RULE = /^\s*\|?\s*:?-+:?\s*(\|\s*:?-+:?\s*)*\|?\s*$/;

function startsBlock(line) {
  return FENCE.test(line) || HEADING.test(line) || RULE.test(line) || QUOTE.test(line);
}

function cells(line) {
  return line
    .trim()
    .replace(/^\|/, "")
    .replace(/\|$/, "")
    .split("|")
    .map((c) => c.trim());
}

// Markdown -> HTML for one block of the answer. Everything from the model is escaped;
// only the tags made here reach the page. The final answer is rendered again by the
// notebook's own Markdown renderer when it replaces the live view.
export function renderMarkdown(markdown) {
  const lines = markdown.replace(/\n$/, "").split("\n");
  let html = "";
  let i = 0;
  while (i < lines.length) {
    const line = lines[i];
    const fence = FENCE.exec(line);
    if (fence) {
      const marker = fence[1];
      const lang = line.slice(fence[0].length).trim().split(/\s+/)[0];
      const body = [];
      for (i += 1; i < lines.length; i += 1) {
        const close = FENCE.exec(lines[i]);
        if (close && close[1][0] === marker[0] && close[1].length >= marker.length) {
          i += 1;
          break;
        }
        body.push(lines[i]);
      }
      const cls = lang ? ` class="language-${escapeHtml(lang)}"` : "";
      html += `<pre><code${cls}>${escapeHtml(body.join("\n"))}\n</code></pre>`;
      continue;
    }
    if (!line.trim()) {
      i += 1;
      continue;
    }
    const heading = HEADING.exec(line);
    if (heading) {
      const level = heading[1].length;
      html += `<h${level}>${inline(heading[2] || "")}</h${level}>`;
      i += 1;
      continue;
    }
    if (RULE.test(line)) {
      html += "<hr>";
      i += 1;
      continue;
    }
    if (QUOTE.test(line)) {
      const quoted = [];
      for (; i < lines.length && QUOTE.test(lines[i]); i += 1) {
        quoted.push(QUOTE.exec(lines[i])[1]);
      }
      html += `<blockquote>${renderMarkdown(quoted.join("\n"))}</blockquote>`;
      continue;
    }
    if (line.includes("|") && i + 1 < lines.length && TABLE_RULE.test(lines[i + 1])) {
      const head = cells(line);
      html += `<table><thead><tr>${head.map((c) => `<th>${inline(c)}</th>`).join("")}</tr></thead><tbody>`;
      for (i += 2; i < lines.length && lines[i].includes("|"); i += 1) {
        html += `<tr>${cells(lines[i]).map((c) => `<td>${inline(c)}</td>`).join("")}</tr>`;
      }
      html += "</tbody></table>";
      continue;
    }
    const item = ITEM.exec(line);
    if (item) {
      const ordered = /\d/.test(item[2]);
      const tag = ordered ? "ol" : "ul";
      html += `<${tag}>`;
      while (i < lines.length && lines[i].trim()) {
        const m = ITEM.exec(lines[i]);
        if (!m) {
          if (startsBlock(lines[i])) break;
          html = html.replace(/<\/li>$/, ` ${inline(lines[i].trim())}</li>`);
          i += 1;
          continue;
        }
        const indent = Math.min(m[1].length, 12);
        const style = indent ? ` style="margin-left: ${indent * 0.5}em"` : "";
        html += `<li${style}>${inline(m[3])}</li>`;
        i += 1;
      }
      html += `</${tag}>`;
      continue;
    }
    const paragraph = [];
    for (; i < lines.length && lines[i].trim() && !startsBlock(lines[i]); i += 1) {
      paragraph.push(lines[i]);
      if (ITEM.test(lines[i + 1] || "")) {
        i += 1;
        break;
      }
    }
    html += `<p>${inline(paragraph.join("\n"))}</p>`;
  }
  return html;
}

// Splits a growing text into finished blocks, scanning each line once. A block ends at a
// blank line outside a code fence, before a fence opens and after it closes; the text
// from `start` on is still being written.
export class BlockSplitter {
  constructor() {
    this.scanned = 0; // start of the first line not yet scanned
    this.start = 0; // start of the block still being written
    this.fence = null; // the open fence's marker
    this.hasContent = false;
  }

  // Returns the [start, end) of each block finished by the lines completed in `text`.
  feed(text) {
    const finished = [];
    for (let nl = text.indexOf("\n", this.scanned); nl !== -1; nl = text.indexOf("\n", this.scanned)) {
      const lineStart = this.scanned;
      const line = text.slice(lineStart, nl + 1);
      this.scanned = nl + 1;
      const match = FENCE.exec(line);
      if (this.fence === null && match) {
        if (this.hasContent) {
          finished.push([this.start, lineStart]);
          this.start = lineStart;
        }
        this.fence = match[1][0].repeat(match[1].length);
        this.hasContent = true;
      } else if (this.fence !== null && match && match[1].startsWith(this.fence)) {
        this.fence = null;
        finished.push([this.start, this.scanned]);
        this.start = this.scanned;
        this.hasContent = false;
      } else if (this.fence === null && !line.trim()) {
        if (this.hasContent) {
          finished.push([this.start, this.scanned]);
          this.start = this.scanned;
          this.hasContent = false;
        }
      } else {
        this.hasContent = this.hasContent || Boolean(line.trim());
      }
    }
    return finished;
  }
}

// A growing code block is held in elements of whole lines, each of about this many
// characters: appending lays out the last one, not the whole block.
const CODE_CHUNK = 4096;

// The answer area: finished blocks frozen, the growing one re-rendered or appended to.
class Answer {
  constructor(el, format, insert = null) {
    this.el = el;
    this.format = format;
    this.insert = insert; // sends a code block to the kernel for a new cell below
    this.reset("");
  }

  reset(text) {
    this.el.textContent = "";
    this.text = "";
    this.splitter = new BlockSplitter();
    this.live = null; // the element of the block being written
    this.code = null; // its <code>, while that block is an open code fence
    this.lines = null; // the text node of that <code>'s last chunk of lines
    this.codeEnd = 0; // how much of `text` the <code> holds
    this.plain = null;
    this.append(text);
  }

  append(delta) {
    if (!delta) return;
    this.text += delta;
    if (this.format === "text") {
      if (!this.plain) {
        const pre = this.el.appendChild(document.createElement("pre"));
        this.plain = pre.appendChild(document.createTextNode(""));
      }
      this.plain.appendData(delta);
      return;
    }
    for (const [start, end] of this.splitter.feed(this.text)) {
      const block = document.createElement("div");
      block.className = "crush-block";
      block.innerHTML = renderMarkdown(this.text.slice(start, end));
      this.el.insertBefore(block, this.live);
      codeActions(block, this.insert);
      this.dropLive();
    }
    this.drawLive();
  }

  dropLive() {
    this.live?.remove();
    this.live = this.code = this.lines = null;
  }

  appendCode(text) {
    let rest = text;
    if (this.lines && this.lines.length >= CODE_CHUNK && !this.lines.data.endsWith("\n")) {
      const lineEnd = rest.indexOf("\n") + 1; // a chunk ends at the end of a line
      this.lines.appendData(lineEnd ? rest.slice(0, lineEnd) : rest);
      rest = lineEnd ? rest.slice(lineEnd) : "";
    }
    if (!rest) return;
    if (!this.lines || this.lines.length >= CODE_CHUNK) {
      const chunk = this.code.appendChild(document.createElement("span"));
      chunk.className = "crush-lines";
      this.lines = chunk.appendChild(document.createTextNode(""));
    }
    this.lines.appendData(rest);
  }

  drawLive() {
    const start = this.splitter.start;
    if (this.splitter.fence !== null) {
      if (!this.code) {
        this.dropLive();
        this.live = this.el.appendChild(document.createElement("div"));
        this.live.className = "crush-block crush-live";
        const pre = this.live.appendChild(document.createElement("pre"));
        this.code = pre.appendChild(document.createElement("code"));
        this.codeEnd = this.text.indexOf("\n", start) + 1;
      }
      this.appendCode(this.text.slice(this.codeEnd));
      this.codeEnd = this.text.length;
      return;
    }
    if (this.code) this.dropLive();
    if (start >= this.text.length) {
      this.dropLive();
      return;
    }
    if (!this.live) {
      this.live = this.el.appendChild(document.createElement("div"));
      this.live.className = "crush-block crush-live";
    }
    this.live.innerHTML = renderMarkdown(this.text.slice(start));
  }
}

// The run's edit_cell calls waiting for the user's review. The JupyterLab extension shows
// each as a diff in its cell and takes "Accept all" as a window event (its
// ACCEPT_EDITS_EVENT, labextension/src/edits.ts); it tells the kernel what was decided.
function pendingEdits(el) {
  el.className = "crush-edits";
  el.hidden = true;
  const label = el.appendChild(document.createElement("span"));
  const accept = el.appendChild(button("Accept all", "crush-accept-edits mod-success"));
  const waiting = new Map(); // call id -> the id of the cell it edits
  accept.addEventListener("click", () => {
    const detail = { edits: [...waiting.keys()] };
    window.dispatchEvent(new CustomEvent("jupyter-crush:accept-edits", { detail }));
  });
  function draw() {
    el.hidden = waiting.size === 0;
    const what = waiting.size === 1 ? "1 edit waits" : `${waiting.size} edits wait`;
    label.textContent = `${what} for your review in cell ${[...waiting.values()].join(", ")}`;
  }
  return {
    update(row) {
      if (row.name === "edit_cell" && row.state === "running") {
        const cell = /"cell_id":\s*"([^"]*)"/.exec(row.arguments);
        waiting.set(row.call_id, cell ? cell[1] : "?");
      } else {
        waiting.delete(row.call_id);
      }
      draw();
    },
    clear() {
      waiting.clear();
      draw();
    },
  };
}

function button(label, className) {
  const b = document.createElement("button");
  b.className = `jupyter-widgets jupyter-button widget-button ${className}`;
  b.textContent = label;
  return b;
}

// Copy and Insert below over a finished code block, just before the block (whose own
// children stay the rendered Markdown); `insert` (none: Copy only) asks the kernel for a
// new cell below the prompt's cell, marked with where it came from.
function codeActions(block, insert) {
  for (const pre of block.querySelectorAll(":scope > pre")) {
    const code = pre.textContent.replace(/\n$/, "");
    const bar = document.createElement("div");
    bar.className = "crush-code-actions";
    const copy = bar.appendChild(button("Copy", "crush-copy"));
    copy.addEventListener("click", () => {
      copyText(code).then(
        () => flash(copy, "Copied"),
        () => flash(copy, "Copy failed"),
      );
    });
    if (insert) {
      const add = bar.appendChild(button("Insert below", "crush-insert"));
      add.title = "A new cell with this code below the prompt's cell (not run)";
      add.addEventListener("click", () => {
        insert(code);
        flash(add, "Inserted");
      });
    }
    block.before(bar);
  }
}

// The clipboard API where the page may use it; else the selection's copy command.
function copyText(text) {
  if (navigator.clipboard && window.isSecureContext) {
    return navigator.clipboard.writeText(text).catch(() => copyBySelection(text));
  }
  return copyBySelection(text);
}

function copyBySelection(text) {
  const area = document.body.appendChild(document.createElement("textarea"));
  area.value = text;
  area.select();
  const copied = document.execCommand("copy");
  area.remove();
  return copied ? Promise.resolve() : Promise.reject(new Error("copy refused"));
}

function flash(b, label) {
  b.dataset.label = b.dataset.label || b.textContent;
  b.textContent = label;
  setTimeout(() => {
    b.textContent = b.dataset.label;
  }, 1500);
}

const CHOICES = [
  ["Allow", "allow", "mod-success"],
  ["Allow for session", "allow_session", "mod-info"],
  ["Deny", "deny", "mod-danger"],
];

// The status line's HTML: the context meter amber when the kernel says it is near the
// reserve (`warn` holds the meter's text then: the next request summarizes first).
export function statusHtml(line, running) {
  const parts = [line.head];
  if (line.elapsed !== undefined && line.elapsed !== null) {
    parts.push(`${(line.elapsed + running).toFixed(1)} s`);
  }
  if (line.tail) parts.push(line.tail);
  let shown = escapeHtml(parts.filter(Boolean).join(" \u00b7 "));
  if (line.warn) {
    const warn = escapeHtml(line.warn);
    const at = shown.indexOf(warn);
    if (at !== -1) {
      shown = `${shown.slice(0, at)}<span class="crush-warn">${warn}</span>${shown.slice(at + warn.length)}`;
    }
  }
  return `<b>crush</b> \u00b7 ${shown}`;
}

// What one run has shown so far, kept by its model from the start: the kernel's snapshot
// in the model's own state (as of comm open, or as of a reload's state request), then
// every numbered ops message. A view renders from it at once and then follows the ops; a
// gap in the numbers asks the kernel for a snapshot.
export class RunState {
  constructor(model) {
    this.model = model;
    this.views = new Set();
    const start = model.get("start") || { seq: 0, snapshot: null };
    this.state = start.snapshot;
    this.seq = start.seq;
    this.nonce = "";
    this.early = null; // while a sync is asked: the ops messages that came meanwhile
    this.onMessage = this.onMessage.bind(this);
    model.on("msg:custom", this.onMessage);
    if (!this.state) this.sync();
  }

  sync() {
    this.nonce = Math.random().toString(36).slice(2);
    this.early = this.early || [];
    this.model.send({ event: "sync", nonce: this.nonce });
  }

  onMessage(msg) {
    if (msg.snapshot) {
      if (msg.for !== this.nonce) return; // another page's
      this.state = msg.snapshot;
      this.seq = msg.seq;
      const pending = this.early;
      this.early = null;
      for (const view of this.views) view.restore(this.state);
      pending.forEach(this.onMessage);
      return;
    }
    if (!msg.ops) return;
    if (this.early) {
      this.early.push(msg);
      return;
    }
    if (msg.seq <= this.seq) return; // already in the snapshot
    if (msg.seq !== this.seq + 1) {
      this.early = [msg];
      this.sync(); // a gap: start again from the whole state
      return;
    }
    this.seq = msg.seq;
    for (const op of msg.ops) {
      applyOp(this.state, op);
      for (const view of this.views) view.apply(op);
    }
  }

  close() {
    this.model.off("msg:custom", this.onMessage);
    this.views.clear();
  }
}

// A sub-agent's section, moved on by one op (older snapshots hold no sections).
function applyChildOp(state, op, value) {
  state.children = state.children || [];
  if (op === "child") {
    state.children.push({ call_id: value, answer: "", tools: [] });
    return;
  }
  const [callId, change] = value;
  const child = state.children.find((c) => c.call_id === callId);
  if (!child) return;
  if (op === "child+") {
    child.answer += change;
  } else if (op === "child=") {
    child.answer = change;
  } else {
    const at = child.tools.findIndex((t) => t.call_id === change.call_id);
    if (at === -1) child.tools.push(change);
    else child.tools[at] = change;
  }
}

// The kernel's snapshot shape, moved on by one op (the kernel's `_sent` does the same).
export function applyOp(state, [op, value]) {
  switch (op) {
    case "status":
      state.status = value;
      break;
    case "stop":
      state.stop = value;
      break;
    case "answer+":
    case "reasoning+":
      state[op.slice(0, -1)] += value;
      break;
    case "answer=":
    case "reasoning=":
      state[op.slice(0, -1)] = value;
      break;
    case "tool": {
      const at = state.tools.findIndex((t) => t.call_id === value.call_id);
      if (at === -1) state.tools.push(value);
      else state.tools[at] = value;
      break;
    }
    case "child":
    case "child+":
    case "child=":
    case "child tool":
      applyChildOp(state, op, value);
      break;
    case "ask":
      state.asks.push(value);
      break;
    case "asked":
      state.asks = state.asks.filter((a) => a.id !== value);
      break;
    case "todo":
    case "todos":
    case "question":
      applyFormOp(state, op, value);
      break;
    case "changes":
      state.changes = value;
      break;
  }
}

// The plan's and the question forms' ops (older snapshots hold neither list).
function applyFormOp(state, op, value) {
  if (op === "todo") {
    const { at, ...item } = value;
    state.todos = state.todos || [];
    state.todos[at] = item;
  } else if (op === "todos") {
    state.todos = (state.todos || []).slice(0, value);
  } else {
    state.questions = state.questions || [];
    const at = state.questions.findIndex((q) => q.id === value.id);
    if (at === -1) state.questions.push(value);
    else state.questions[at] = value;
  }
}

const TODO_MARKS = { pending: "\u25cb", in_progress: "\u25b8", done: "\u2713" };

// One item of the plan: the active form while in progress, struck through once done.
function drawTodo(list, at, item) {
  while (list.children.length <= at) list.appendChild(document.createElement("li"));
  const li = list.children[at];
  li.className = `crush-todo crush-todo-${item.status}`;
  const shown = item.status === "in_progress" && item.active_form ? item.active_form : item.content;
  li.textContent = `${TODO_MARKS[item.status] || ""} ${shown}`;
}

// A question form: its inputs while open; the answers, or "withdrawn", once it is not.
function drawQuestion(el, form, send) {
  el.className = `crush-question crush-question-${form.state}`;
  el.textContent = "";
  const inputs = form.questions.map((q, n) => {
    const box = el.appendChild(document.createElement("fieldset"));
    box.appendChild(document.createElement("legend")).textContent = q.text;
    if (q.description) box.appendChild(document.createElement("p")).textContent = q.description;
    if (form.state !== "open") {
      const said = form.answers ? form.answers[n].shown : "withdrawn: the run was stopped";
      box.appendChild(document.createElement("div")).textContent = said;
      return null;
    }
    const name = `crush-q-${form.id}-${n}`;
    const options =
      q.kind === "yes_no"
        ? [{ id: "yes", label: "Yes" }, { id: "no", label: "No" }]
        : q.choices;
    const picks = options.map((choice) => {
      const label = box.appendChild(document.createElement("label"));
      label.className = "crush-choice";
      const input = label.appendChild(document.createElement("input"));
      input.type = q.kind === "multi_choice" ? "checkbox" : "radio";
      input.name = name;
      input.value = choice.id;
      label.appendChild(document.createTextNode(` ${choice.label}`));
      if (choice.description) label.title = choice.description;
      return input;
    });
    let text = null;
    if (q.kind !== "yes_no") {
      text = box.appendChild(document.createElement(q.kind === "free_text" ? "textarea" : "input"));
      text.className = "crush-answer-text";
      text.placeholder = q.kind === "free_text" ? "Your answer" : "Another answer (optional)";
    }
    return { q, picks, text };
  });
  if (form.state !== "open") return;
  const answer = el.appendChild(button("Answer", "mod-primary crush-answer-button"));
  answer.addEventListener("click", () => {
    const answers = inputs.map(({ q, picks, text }) => {
      const chosen = picks.filter((p) => p.checked).map((p) => p.value);
      if (q.kind === "yes_no") return { yes: chosen.length ? chosen[0] === "yes" : null };
      return { selected: chosen, text: text ? text.value : "" };
    });
    for (const input of el.querySelectorAll("input, textarea, button")) input.disabled = true;
    send({ event: "click", target: "answer", question: form.id, answers });
  });
}

// Each model's RunState, by the run's id (a view gets its model through a new proxy).
const RUNS = new Map();

function initialize({ model }) {
  const id = model.get("run_id");
  const run = new RunState(model);
  RUNS.set(id, run);
  return () => {
    run.close();
    if (RUNS.get(id) === run) RUNS.delete(id);
  };
}

function render({ model, el }) {
  el.classList.add("crush-run");
  const header = el.appendChild(document.createElement("div"));
  header.className = "crush-header";
  const status = header.appendChild(document.createElement("span"));
  status.className = "crush-status";
  const stop = header.appendChild(button("Stop", "crush-stop"));
  stop.title = "Cancel this prompt (and anything queued before it in this session)";
  const todos = el.appendChild(document.createElement("ol"));
  todos.className = "crush-todos";
  const reasoning = el.appendChild(document.createElement("details"));
  reasoning.className = "crush-reasoning";
  reasoning.hidden = true;
  reasoning.appendChild(document.createElement("summary")).textContent = "Reasoning";
  const reasoningText = reasoning
    .appendChild(document.createElement("div"))
    .appendChild(document.createTextNode(""));
  const tools = el.appendChild(document.createElement("div"));
  tools.className = "crush-tools";
  const edits = pendingEdits(el.appendChild(document.createElement("div")));
  const answerEl = el.appendChild(document.createElement("div"));
  answerEl.className = "crush-answer jp-RenderedHTMLCommon jp-RenderedMarkdown";
  const questions = el.appendChild(document.createElement("div"));
  questions.className = "crush-questions";
  const asks = el.appendChild(document.createElement("div"));
  asks.className = "crush-asks";
  // At the end of a turn that changed something: "changed: 2 cells, 3 variables — Undo".
  const changes = el.appendChild(document.createElement("div"));
  changes.className = "crush-changes";
  changes.hidden = true;
  const changesText = changes.appendChild(document.createElement("span"));
  const undo = changes.appendChild(button("Undo", "crush-undo"));
  undo.title = "Undo this turn: the variables, objects, files and cells it changed";
  const undoNote = changes.appendChild(document.createElement("pre"));
  undoNote.className = "crush-undo-note";
  undo.addEventListener("click", () => {
    if (undo.disabled) return;
    undo.disabled = true; // one undo per turn; the kernel's note says what it did
    undo.textContent = "Undoing\u2026";
    model.send({ event: "click", target: "undo" });
  });
  function drawChanges({ summary, note }) {
    changes.hidden = !summary;
    changesText.textContent = summary ? `${summary} \u2014 ` : "";
    undoNote.textContent = note || "";
    undoNote.hidden = !note;
    if (note) {
      undo.disabled = true;
      undo.textContent = "Undo";
    }
  }

  const insertCode = (code) => model.send({ event: "click", target: "insert", code });
  let answer = new Answer(answerEl, "markdown", insertCode);
  const toolViews = new Map();
  const childViews = new Map(); // call id -> its sub-agent's section
  const askViews = new Map();
  const questionViews = new Map();
  const send = (msg) => model.send(msg);

  function drawForm(form) {
    let view = questionViews.get(form.id);
    if (!view) {
      view = questions.appendChild(document.createElement("div"));
      questionViews.set(form.id, view);
    }
    drawQuestion(view, form, send);
  }
  let line = { head: "", tail: "", elapsed: 0, ticking: false };
  let lineAt = performance.now();

  function drawStatus() {
    const running = line.ticking ? (performance.now() - lineAt) / 1000 : 0;
    status.innerHTML = statusHtml(line, running);
  }
  const ticker = setInterval(() => line.ticking && drawStatus(), 1000);

  function setStop(state) {
    stop.disabled = state !== "ready";
    if (state !== "disabled") {
      stop.textContent = state === "stopping" ? "Stopping\u2026" : "Stop";
    }
  }
  stop.addEventListener("click", () => {
    if (stop.disabled) return;
    setStop("stopping"); // on screen before the kernel hears of it
    model.send({ event: "click", target: "stop" });
  });

  // One tool call's row in `container`: the turn's tools, or a sub-agent's section.
  function drawToolRow(container, views, row) {
    let view = views.get(row.call_id);
    if (!view) {
      view = container.appendChild(document.createElement("details"));
      view.className = "crush-tool";
      view.appendChild(document.createElement("summary"));
      view.appendChild(document.createElement("div"));
      views.set(row.call_id, view);
    }
    const label = row.label ? ` \u00b7 ${row.label}` : "";
    view.firstChild.textContent = `tool ${row.name}${label} \u00b7 ${row.state}`;
    let body = `<b>arguments</b><pre>${escapeHtml(row.arguments)}</pre>`;
    if (row.result !== null && row.result !== undefined) {
      // row.images is HTML the kernel made: <img> thumbnails, their texts escaped.
      body += `<b>result</b><pre>${escapeHtml(row.result)}</pre>${row.images || ""}`;
    }
    view.children[1].innerHTML = body;
    return view;
  }

  function drawTool(row) {
    drawToolRow(tools, toolViews, row);
    edits.update(row);
  }

  // A sub-agent's section, inside its call's row (collapsed with it): its tool calls, then
  // its text as it streams.
  function childView(callId) {
    let child = childViews.get(callId);
    if (!child) {
      const row =
        toolViews.get(callId) ||
        drawToolRow(tools, toolViews, { call_id: callId, name: "agent", state: "running", arguments: "" });
      const section = row.appendChild(document.createElement("div"));
      section.className = "crush-child";
      const childTools = section.appendChild(document.createElement("div"));
      const text = section.appendChild(document.createElement("div"));
      text.className = "crush-answer jp-RenderedHTMLCommon jp-RenderedMarkdown";
      child = { tools: childTools, toolViews: new Map(), answer: new Answer(text, "markdown") };
      childViews.set(callId, child);
    }
    return child;
  }

  function drawAsk(ask) {
    const view = asks.appendChild(document.createElement("div"));
    view.className = "crush-ask";
    view.innerHTML = `<b>${escapeHtml(ask.tool)}</b> wants to run:<pre>${escapeHtml(ask.what)}</pre>`;
    const row = view.appendChild(document.createElement("div"));
    const buttons = CHOICES.map(([label, decision, style]) => {
      const b = row.appendChild(button(label, style));
      b.addEventListener("click", () => {
        for (const other of buttons) other.disabled = true;
        model.send({ event: "click", target: "decide", ask: ask.id, decision });
      });
      return b;
    });
    askViews.set(ask.id, view);
  }

  function apply([op, value]) {
    switch (op) {
      case "status":
        line = value;
        lineAt = performance.now();
        drawStatus();
        break;
      case "stop":
        setStop(value);
        break;
      case "answer+":
        answer.append(value);
        break;
      case "answer=":
        answer.reset(value);
        break;
      case "reasoning+":
        reasoningText.appendData(value);
        reasoning.hidden = false;
        break;
      case "reasoning=":
        reasoningText.data = value;
        reasoning.hidden = !value;
        break;
      case "tool":
        drawTool(value);
        break;
      case "child":
        childView(value);
        break;
      case "child+":
        childView(value[0]).answer.append(value[1]);
        break;
      case "child=":
        childView(value[0]).answer.reset(value[1]);
        break;
      case "child tool": {
        const child = childView(value[0]);
        drawToolRow(child.tools, child.toolViews, value[1]);
        break;
      }
      case "ask":
        drawAsk(value);
        break;
      case "asked":
        askViews.get(value)?.remove();
        askViews.delete(value);
        break;
      case "todo":
        drawTodo(todos, value.at, value);
        break;
      case "todos":
        while (todos.children.length > value) todos.lastChild.remove();
        break;
      case "question":
        drawForm(value);
        break;
      case "changes":
        drawChanges(value);
        break;
    }
  }

  function restore(state) {
    answer = new Answer(answerEl, state.format, insertCode);
    answer.reset(state.answer);
    apply(["reasoning=", state.reasoning]);
    tools.textContent = "";
    toolViews.clear();
    edits.clear();
    state.tools.forEach(drawTool);
    childViews.clear();
    for (const shown of state.children || []) {
      const child = childView(shown.call_id);
      child.answer.reset(shown.answer);
      shown.tools.forEach((row) => drawToolRow(child.tools, child.toolViews, row));
    }
    asks.textContent = "";
    askViews.clear();
    state.asks.forEach(drawAsk);
    todos.textContent = "";
    (state.todos || []).forEach((item, at) => drawTodo(todos, at, item));
    questions.textContent = "";
    questionViews.clear();
    (state.questions || []).forEach(drawForm);
    drawChanges(state.changes || { summary: "", note: "" });
    setStop(state.stop);
    apply(["status", state.status]);
  }

  const view = { apply, restore };
  const run = RUNS.get(model.get("run_id"));
  run.views.add(view);
  if (run.state) restore(run.state);
  return () => {
    clearInterval(ticker);
    run.views.delete(view);
  };
}

export default { initialize, render };
