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

// The answer area: finished blocks frozen, the growing one re-rendered or appended to.
class Answer {
  constructor(el, format) {
    this.el = el;
    this.format = format;
    this.reset("");
  }

  reset(text) {
    this.el.textContent = "";
    this.text = "";
    this.splitter = new BlockSplitter();
    this.live = null; // the element of the block being written
    this.code = null; // its text node, while that block is an open code fence
    this.codeEnd = 0; // how much of `text` that node holds
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
      this.dropLive();
    }
    this.drawLive();
  }

  dropLive() {
    this.live?.remove();
    this.live = this.code = null;
  }

  drawLive() {
    const start = this.splitter.start;
    if (this.splitter.fence !== null) {
      if (!this.code) {
        this.dropLive();
        this.live = this.el.appendChild(document.createElement("div"));
        this.live.className = "crush-block crush-live";
        const pre = this.live.appendChild(document.createElement("pre"));
        this.code = pre.appendChild(document.createElement("code")).appendChild(document.createTextNode(""));
        this.codeEnd = this.text.indexOf("\n", start) + 1;
      }
      this.code.appendData(this.text.slice(this.codeEnd));
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

function button(label, className) {
  const b = document.createElement("button");
  b.className = `jupyter-widgets jupyter-button widget-button ${className}`;
  b.textContent = label;
  return b;
}

const CHOICES = [
  ["Allow", "allow", "mod-success"],
  ["Allow for session", "allow_session", "mod-info"],
  ["Deny", "deny", "mod-danger"],
];

function render({ model, el }) {
  el.classList.add("crush-run");
  const header = el.appendChild(document.createElement("div"));
  header.className = "crush-header";
  const status = header.appendChild(document.createElement("span"));
  status.className = "crush-status";
  const stop = header.appendChild(button("Stop", "crush-stop"));
  stop.title = "Cancel this prompt (and anything queued before it in this session)";
  const reasoning = el.appendChild(document.createElement("details"));
  reasoning.className = "crush-reasoning";
  reasoning.hidden = true;
  reasoning.appendChild(document.createElement("summary")).textContent = "Reasoning";
  const reasoningText = reasoning
    .appendChild(document.createElement("div"))
    .appendChild(document.createTextNode(""));
  const tools = el.appendChild(document.createElement("div"));
  tools.className = "crush-tools";
  const answerEl = el.appendChild(document.createElement("div"));
  answerEl.className = "crush-answer jp-RenderedHTMLCommon jp-RenderedMarkdown";
  const asks = el.appendChild(document.createElement("div"));
  asks.className = "crush-asks";

  let answer = new Answer(answerEl, "markdown");
  const toolViews = new Map();
  const askViews = new Map();
  let line = { head: "", tail: "", elapsed: 0, ticking: false };
  let lineAt = performance.now();
  let seq = 0;
  let synced = false;
  let nonce = "";
  let early = []; // ops messages that came before the snapshot

  function drawStatus() {
    const parts = [line.head];
    if (line.elapsed !== undefined && line.elapsed !== null) {
      const running = line.ticking ? (performance.now() - lineAt) / 1000 : 0;
      parts.push(`${(line.elapsed + running).toFixed(1)} s`);
    }
    if (line.tail) parts.push(line.tail);
    status.innerHTML = `<b>crush</b> · ${escapeHtml(parts.filter(Boolean).join(" · "))}`;
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

  function drawTool(row) {
    let view = toolViews.get(row.call_id);
    if (!view) {
      view = tools.appendChild(document.createElement("details"));
      view.className = "crush-tool";
      view.appendChild(document.createElement("summary"));
      view.appendChild(document.createElement("div"));
      toolViews.set(row.call_id, view);
    }
    view.firstChild.textContent = `tool ${row.name} \u00b7 ${row.state}`;
    let body = `<b>arguments</b><pre>${escapeHtml(row.arguments)}</pre>`;
    if (row.result !== null && row.result !== undefined) {
      // row.images is HTML the kernel made: <img> thumbnails, their texts escaped.
      body += `<b>result</b><pre>${escapeHtml(row.result)}</pre>${row.images || ""}`;
    }
    view.lastChild.innerHTML = body;
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
      case "ask":
        drawAsk(value);
        break;
      case "asked":
        askViews.get(value)?.remove();
        askViews.delete(value);
        break;
    }
  }

  function restore(state) {
    answer = new Answer(answerEl, state.format);
    answer.reset(state.answer);
    apply(["reasoning=", state.reasoning]);
    tools.textContent = "";
    toolViews.clear();
    state.tools.forEach(drawTool);
    asks.textContent = "";
    askViews.clear();
    state.asks.forEach(drawAsk);
    setStop(state.stop);
    apply(["status", state.status]);
  }

  function sync() {
    synced = false;
    nonce = Math.random().toString(36).slice(2);
    model.send({ event: "sync", nonce });
  }

  function onMessage(msg) {
    if (msg.snapshot) {
      if (msg.for !== nonce) return; // another view's
      restore(msg.snapshot);
      seq = msg.seq;
      synced = true;
      const pending = early;
      early = [];
      pending.forEach(onMessage);
      return;
    }
    if (!msg.ops) return;
    if (!synced) {
      early.push(msg);
      return;
    }
    if (msg.seq <= seq) return; // already in the snapshot
    if (msg.seq !== seq + 1) {
      early = [msg];
      sync(); // a gap: start again from the whole state
      return;
    }
    seq = msg.seq;
    msg.ops.forEach(apply);
  }

  model.on("msg:custom", onMessage);
  sync();
  return () => {
    clearInterval(ticker);
    model.off("msg:custom", onMessage);
  };
}

export default { render };
