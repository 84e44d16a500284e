/**
 * Copy and Insert below on the code blocks of a finished crush answer in a notebook.
 *
 * The kernel puts a finished run's static answer in the cell as Markdown, plus
 * ANSWER_MIME holding the provenance metadata a cell made from its code carries. This
 * renderer, ranked before Markdown's, renders the Markdown with JupyterLab's own renderer
 * and adds the two buttons over each fenced code block. Front ends without the extension
 * render the Markdown alone, and the saved notebook keeps both.
 *
 * Insert below works in the page alone (the kernel may be gone by the time the notebook
 * is reopened): the button sends INSERT_CODE_EVENT up the DOM, and the plugin inserts the
 * code as a cell below the one showing the answer (`insertBelow`).
 */
import { Clipboard } from '@jupyterlab/apputils';
import { NotebookPanel } from '@jupyterlab/notebook';
import { IRenderMime, markdownRendererFactory } from '@jupyterlab/rendermime';
import { Panel } from '@lumino/widgets';

export const ANSWER_MIME = 'application/vnd.jupyter-crush.answer+json';
export const INSERT_CODE_EVENT = 'jupyter-crush:insert-code';

export interface IInsertCode {
  code: string;
  metadata: { [key: string]: unknown };
}

export const answerRendererFactory: IRenderMime.IRendererFactory = {
  safe: true,
  mimeTypes: [ANSWER_MIME],
  defaultRank: markdownRendererFactory.defaultRank! - 1,
  createRenderer: options => new AnswerRenderer(options)
};

class AnswerRenderer extends Panel implements IRenderMime.IRenderer {
  constructor(options: IRenderMime.IRendererOptions) {
    super();
    this._options = options;
    this.addClass('jp-crush-Answer');
  }

  async renderModel(model: IRenderMime.IMimeModel): Promise<void> {
    const markdown = markdownRendererFactory.createRenderer({
      ...this._options,
      mimeType: 'text/markdown'
    });
    await markdown.renderModel(model);
    for (const old of [...this.widgets]) {
      old.dispose();
    }
    this.addWidget(markdown);
    const origin = model.data[ANSWER_MIME] as { cell_metadata?: { [key: string]: unknown } };
    const metadata = origin?.cell_metadata ?? {};
    // Fenced code only: the tool calls' arguments and results are <pre> inside <details>.
    for (const code of Array.from(markdown.node.querySelectorAll('pre > code'))) {
      const pre = code.parentElement!;
      if (!pre.closest('details')) {
        pre.before(actions(code.textContent?.replace(/\n$/, '') ?? '', metadata));
      }
    }
  }

  private readonly _options: IRenderMime.IRendererOptions;
}

function actions(code: string, metadata: { [key: string]: unknown }): HTMLElement {
  const bar = document.createElement('div');
  bar.className = 'jp-crush-CodeActions';
  const copy = bar.appendChild(document.createElement('button'));
  copy.className = 'jp-Button jp-mod-styled jp-mod-minimal jp-crush-Copy';
  copy.textContent = 'Copy';
  copy.addEventListener('click', () => {
    Clipboard.copyToSystem(code);
    flash(copy, 'Copied');
  });
  const insert = bar.appendChild(document.createElement('button'));
  insert.className = 'jp-Button jp-mod-styled jp-mod-minimal jp-crush-Insert';
  insert.textContent = 'Insert below';
  insert.title = 'A new cell with this code below this one (not run)';
  insert.addEventListener('click', () => {
    const detail: IInsertCode = { code, metadata };
    insert.dispatchEvent(new CustomEvent(INSERT_CODE_EVENT, { bubbles: true, detail }));
    flash(insert, 'Inserted');
  });
  return bar;
}

function flash(button: HTMLElement, label: string): void {
  button.dataset.label = button.dataset.label || button.textContent || '';
  button.textContent = label;
  setTimeout(() => (button.textContent = button.dataset.label ?? ''), 1500);
}

/** Insert `request.code` as a code cell below the cell of `panel` holding `target`. */
export function insertBelow(panel: NotebookPanel, target: Node, request: IInsertCode): void {
  const model = panel.content.model;
  const index = panel.content.widgets.findIndex(cell => cell.node.contains(target));
  if (!model || index < 0) {
    return;
  }
  model.sharedModel.insertCell(index + 1, {
    cell_type: 'code',
    source: request.code,
    metadata: request.metadata as any
  });
}
