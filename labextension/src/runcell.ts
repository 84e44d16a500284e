/**
 * The kernel's agent runs one of the notebook's cells (the kernel's `run_cell` tool):
 *
 *   {"op": "run_cell", "cell", "source"} -> runs the code cell whose id is `cell` (whose
 *       source must still be `source`) exactly as Shift+Enter runs it, through
 *       NotebookActions: its execution count and outputs land in the notebook, and an error
 *       stops the cells queued after it. Answers when it has run:
 *       {"ok", "execution_count", "outputs": [nbformat outputs]}.
 */
import { CodeCell } from '@jupyterlab/cells';
import { NotebookActions, NotebookPanel } from '@jupyterlab/notebook';

import { Reply } from './connection';
import { findCell } from './edits';

export async function runCell(
  panel: NotebookPanel,
  request: { [key: string]: unknown }
): Promise<Reply> {
  const cell = findCell(panel, String(request.cell));
  if (!cell) {
    return { error: `no cell with id ${String(request.cell)} in this notebook` };
  }
  if (!(cell instanceof CodeCell)) {
    return { error: `cell ${String(request.cell)} is a ${cell.model.type} cell, not code` };
  }
  if (typeof request.source === 'string' && cell.model.sharedModel.getSource() !== request.source) {
    return { error: 'the cell changed since it was read; read the notebook again' };
  }
  const ok = await NotebookActions.runCells(panel.content, [cell], panel.sessionContext);
  return {
    ok,
    execution_count: cell.model.executionCount,
    outputs: cell.model.outputs.toJSON()
  };
}
