/**
 * The kernel's questions about the notebook a page shows (see connection.ts):
 *
 *   {"op": "cells"}        -> {"path", "dirty", "cells": [nbformat cells]}; image data is
 *                             replaced by its base64 length (the kernel only notes images)
 *   {"op": "insert_cell", "source", "metadata", "after"}
 *                          -> inserts a code cell below the cell whose id is `after`
 *                             (else below the active cell), with that cell metadata;
 *                             answers {"index", "cell_id"}
 *   {"op": "propose_edit" | "withdraw_edit", ...}   an edit under review (edits.ts)
 *   {"op": "run_cell", ...}                          run a cell (runcell.ts)
 *   {"op": "delete_cell" | "set_cell_source", ...}   undo of a turn's cells (undo.ts)
 */
import { NotebookPanel } from '@jupyterlab/notebook';

import { Reply } from './connection';
import { CellEdits } from './edits';
import { runCell } from './runcell';
import { undoRequest } from './undo';

export type NotebookRequest = { [key: string]: unknown };

export function answerRequest(
  panel: NotebookPanel | null,
  request: NotebookRequest,
  edits: CellEdits
): Reply | Promise<Reply> {
  const model = panel?.content.model;
  if (!panel || !model) {
    return { error: 'no notebook is open for this kernel' };
  }
  if (request.op === 'cells') {
    const cells = [];
    for (let i = 0; i < model.cells.length; i++) {
      cells.push(withoutImageData(model.cells.get(i).toJSON() as any));
    }
    return { path: panel.context.path, dirty: model.dirty, cells };
  }
  if (request.op === 'insert_cell') {
    if (typeof request.source !== 'string') {
      return { error: "insert_cell needs a 'source' string" };
    }
    let index = -1;
    for (let i = 0; i < model.cells.length; i++) {
      if (model.cells.get(i).id === request.after) {
        index = i + 1;
        break;
      }
    }
    if (index < 0) {
      index = Math.min(panel.content.activeCellIndex + 1, model.cells.length);
    }
    const metadata = (request.metadata ?? {}) as { [key: string]: any };
    model.sharedModel.insertCell(index, {
      cell_type: 'code',
      source: request.source,
      metadata
    });
    // `cell_id`: the reply's own `id` is the request's number by the time it reaches the kernel.
    return { index, id: model.cells.get(index).id, cell_id: model.cells.get(index).id };
  }
  if (['propose_edit', 'withdraw_edit', 'accept_edits'].includes(String(request.op))) {
    return edits.answer(panel, request);
  }
  if (request.op === 'run_cell') {
    return runCell(panel, request);
  }
  if (request.op === 'delete_cell' || request.op === 'set_cell_source') {
    return undoRequest(panel, request);
  }
  return { error: `unknown op ${String(request.op)}` };
}

function withoutImageData(cell: any): any {
  if (!Array.isArray(cell.outputs)) {
    return cell;
  }
  const outputs = cell.outputs.map((output: any) => {
    if (!output.data) {
      return output;
    }
    const data: { [key: string]: unknown } = {};
    for (const [mime, value] of Object.entries(output.data)) {
      const text = Array.isArray(value) ? value.join('') : value;
      data[mime] = mime.startsWith('image/') && typeof text === 'string' ? text.length : value;
    }
    return { ...output, data };
  });
  return { ...cell, outputs };
}
