/**
 * What the kernel's `%crush undo` (and the run view's Undo button) asks of the notebook:
 *
 *   {"op": "delete_cell", "cell_id"}               -> removes a cell the agent inserted
 *   {"op": "set_cell_source", "cell_id", "source"} -> puts back a cell's source (an accepted
 *                                                      edit reverted)
 *
 * Each answers {"ok": true}, or {"ok": false, "reason"} when the notebook has no cell with
 * that id (the user deleted it since).
 */
import { NotebookPanel } from '@jupyterlab/notebook';

import { Reply } from './connection';
import { findCell, setCellSource } from './edits';

const GONE = 'the notebook has no cell with that id any more';

export function undoRequest(panel: NotebookPanel, request: { [key: string]: unknown }): Reply {
  const model = panel.content.model;
  const cellId = String(request.cell_id);
  if (!model) {
    return { error: 'no notebook is open for this kernel' };
  }
  if (request.op === 'delete_cell') {
    for (let i = 0; i < model.cells.length; i++) {
      if (model.cells.get(i).id === cellId) {
        model.sharedModel.deleteCell(i);
        return { ok: true };
      }
    }
    return { ok: false, reason: GONE };
  }
  if (typeof request.source !== 'string') {
    return { error: "set_cell_source needs a 'source' string" };
  }
  const cell = findCell(panel, cellId);
  if (!cell) {
    return { ok: false, reason: GONE };
  }
  setCellSource(panel, cell, request.source, {});
  return { ok: true };
}
