/**
 * Edits the kernel's agent proposes to existing cells, shown as a diff inside the cell
 * until the user accepts or rejects them (the kernel's `edit_cell` tool):
 *
 *   {"op": "propose_edit", "edit", "cell", "before", "after", "metadata"}
 *       -> shows `after` against `before` in the cell whose id is `cell` (whose source must
 *          still be `before`), and answers when the user decides:
 *          {"decision": "accepted"} | {"decision": "rejected", "reason"} |
 *          {"decision": "withdrawn"}; only an accepted edit changes the document.
 *   {"op": "withdraw_edit", "edit"} -> takes the diff away, the cell keeps its source.
 *   {"op": "accept_edits", "edits"} -> accepts those edits, as their Accept buttons do.
 *
 * The diff is CodeMirror's unified merge view (@codemirror/merge), JupyterLab 4's own
 * editor library, so it reads like the cell's editor, highlighted in the cell's language:
 * deleted lines in red above the added ones in green. The cell's editor is hidden while the diff shows, so
 * nobody types into a source the edit is about to replace.
 *
 * The run view's "Accept all" reaches the page's pending edits as a window event
 * (ACCEPT_EDITS_EVENT, detail `{edits: [edit ids]}`): the run view is an anywidget module
 * with no handle on this extension, and both live in the same page.
 */
import { syntaxHighlighting } from '@codemirror/language';
import { unifiedMergeView } from '@codemirror/merge';
import { Compartment, EditorState } from '@codemirror/state';
import { EditorView } from '@codemirror/view';
import { Cell } from '@jupyterlab/cells';
import { IEditorLanguageRegistry, jupyterHighlightStyle } from '@jupyterlab/codemirror';
import { NotebookPanel } from '@jupyterlab/notebook';

import { Reply } from './connection';

export const ACCEPT_EDITS_EVENT = 'jupyter-crush:accept-edits';

type Request = { [key: string]: unknown };

interface IPendingEdit {
  panel: NotebookPanel;
  cell: Cell;
  after: string;
  metadata: { [key: string]: unknown };
  node: HTMLElement;
  view: EditorView;
  settle: (reply: Reply) => void;
}

export function findCell(panel: NotebookPanel, cellId: string): Cell | null {
  return panel.content.widgets.find(cell => cell.model.id === cellId) ?? null;
}

/**
 * Set a cell's source and merge `metadata` into its metadata, as one step of the
 * notebook's undo history. Accepting an edit goes through here; so can anything else that
 * sets a cell's source by id (undo of an accepted edit).
 */
export function setCellSource(
  panel: NotebookPanel,
  cell: Cell,
  source: string,
  metadata: { [key: string]: unknown }
): void {
  const apply = () => {
    cell.model.sharedModel.setSource(source);
    for (const [key, value] of Object.entries(metadata)) {
      cell.model.setMetadata(key, value as any);
    }
  };
  const shared = panel.content.model?.sharedModel;
  if (shared) {
    shared.transact(apply);
  } else {
    apply();
  }
}

export class CellEdits {
  constructor(languages: IEditorLanguageRegistry | null = null) {
    this._languages = languages;
    window.addEventListener(ACCEPT_EDITS_EVENT, this._onAcceptAll);
  }

  answer(panel: NotebookPanel, request: Request): Reply | Promise<Reply> {
    if (request.op === 'withdraw_edit') {
      return { withdrawn: this._finish(String(request.edit), { decision: 'withdrawn' }) };
    }
    if (request.op === 'accept_edits') {
      // Accept all from a run view that asks through the kernel (the ipywidgets one).
      const ids = Array.isArray(request.edits) ? request.edits.map(String) : [];
      const waiting = ids.filter(id => this._edits.has(id));
      this.accept(waiting);
      return { accepted: waiting.length };
    }
    return this._propose(panel, request);
  }

  /** Accept the pending edits named (all of them when `ids` is empty). */
  accept(ids: string[] = []): void {
    for (const id of ids.length ? ids : [...this._edits.keys()]) {
      const edit = this._edits.get(id);
      if (edit) {
        setCellSource(edit.panel, edit.cell, edit.after, edit.metadata);
        this._finish(id, { decision: 'accepted' });
      }
    }
  }

  get pending(): string[] {
    return [...this._edits.keys()];
  }

  dispose(): void {
    window.removeEventListener(ACCEPT_EDITS_EVENT, this._onAcceptAll);
  }

  private _propose(panel: NotebookPanel, request: Request): Reply | Promise<Reply> {
    const id = String(request.edit ?? '');
    const { before, after } = request;
    if (!id || typeof before !== 'string' || typeof after !== 'string') {
      return { error: "propose_edit needs 'edit', 'before' and 'after'" };
    }
    const cell = findCell(panel, String(request.cell));
    if (!cell) {
      return { error: `no cell with id ${String(request.cell)} in this notebook` };
    }
    if (cell.model.sharedModel.getSource() !== before) {
      return { error: 'the cell changed since it was read; read the notebook again' };
    }
    if ([...this._edits.values()].some(edit => edit.cell === cell)) {
      return { error: 'the cell already shows an edit under review; wait for its decision' };
    }
    return new Promise<Reply>(settle => {
      const node = this._diffNode(id, cell, before, after);
      const language = new Compartment();
      const view = new EditorView({
        parent: node.querySelector('.jp-crush-EditDiff') as HTMLElement,
        state: EditorState.create({
          doc: after,
          extensions: [
            unifiedMergeView({ original: before, mergeControls: false, gutter: true }),
            EditorState.readOnly.of(true),
            EditorView.editable.of(false),
            EditorView.lineWrapping,
            language.of([])
          ]
        })
      });
      void this._highlight(cell, view, language);
      // The turn waits for this decision: bring the diff into view.
      void panel.content.scrollToCell(cell, 'smart');
      const metadata = (request.metadata ?? {}) as { [key: string]: unknown };
      this._edits.set(id, { panel, cell, after, metadata, node, view, settle });
      // A cell deleted, or a notebook closed, while under review cannot take the edit.
      cell.disposed.connect(() =>
        this._finish(id, { error: 'the cell was deleted or its notebook closed before a decision' })
      );
    });
  }

  /** The cell's language, once its registry has loaded it (the diff shows meanwhile). */
  private async _highlight(cell: Cell, view: EditorView, language: Compartment): Promise<void> {
    const found = this._languages?.findByMIME(cell.model.mimeType);
    const loaded = found ? await this._languages!.getLanguage(found) : null;
    if (loaded?.support && [...this._edits.values()].some(edit => edit.view === view)) {
      view.dispatch({
        effects: language.reconfigure([loaded.support, syntaxHighlighting(jupyterHighlightStyle)])
      });
    }
  }

  private _diffNode(id: string, cell: Cell, before: string, after: string): HTMLElement {
    const node = document.createElement('div');
    node.className = 'jp-crush-Edit';
    node.dataset.edit = id;
    const bar = node.appendChild(document.createElement('div'));
    bar.className = 'jp-crush-EditBar';
    const label = bar.appendChild(document.createElement('span'));
    label.className = 'jp-crush-EditLabel';
    label.textContent = `crush proposes an edit (${lineDelta(before, after)})`;
    const reason = document.createElement('input');
    reason.className = 'jp-crush-EditReason jp-mod-styled';
    reason.placeholder = 'Why reject? (optional, told to the model)';
    const accept = bar.appendChild(document.createElement('button'));
    accept.className = 'jp-Button jp-mod-styled jp-mod-accept jp-crush-EditAccept';
    accept.textContent = 'Accept';
    const reject = bar.appendChild(document.createElement('button'));
    reject.className = 'jp-Button jp-mod-styled jp-mod-warn jp-crush-EditReject';
    reject.textContent = 'Reject';
    bar.appendChild(reason);
    accept.addEventListener('click', () => this.accept([id]));
    reject.addEventListener('click', () =>
      this._finish(id, { decision: 'rejected', reason: reason.value.trim() })
    );
    reason.addEventListener('keydown', event => {
      if (event.key === 'Enter') {
        reject.click();
      }
      event.stopPropagation(); // the notebook's shortcuts must not see the typing
    });
    node.appendChild(document.createElement('div')).className = 'jp-crush-EditDiff';
    const editor = cell.editorWidget?.node;
    if (editor?.parentElement) {
      editor.style.display = 'none';
      editor.parentElement.insertBefore(node, editor.nextSibling);
    } else {
      cell.node.appendChild(node);
    }
    return node;
  }

  private _finish(id: string, reply: Reply): boolean {
    const edit = this._edits.get(id);
    if (!edit) {
      return false;
    }
    this._edits.delete(id);
    edit.view.destroy();
    edit.node.remove();
    const editor = edit.cell.isDisposed ? null : edit.cell.editorWidget?.node;
    if (editor) {
      editor.style.display = '';
    }
    edit.settle(reply);
    return true;
  }

  private _onAcceptAll = (event: Event): void => {
    const ids = (event as CustomEvent<{ edits?: unknown }>).detail?.edits;
    this.accept(Array.isArray(ids) ? ids.map(String) : []);
  };

  private readonly _languages: IEditorLanguageRegistry | null;
  private _edits = new Map<string, IPendingEdit>();
}

function lineDelta(before: string, after: string): string {
  const lines = (text: string) => (text ? text.split('\n').length : 0);
  return `${lines(before)} \u2192 ${lines(after)} lines`;
}
