/**
 * jupyter-crush for JupyterLab 4 and Notebook 7.
 *
 * - Command `jupyter-crush:stop-all` ("Crush: stop running agents"): in the
 *   command palette, the notebook toolbar and bound to Accel Alt . (see
 *   schema/plugin.json). It asks the current notebook's kernel to cancel every
 *   running and queued crush run.
 * - A status-bar item with the running and queued runs of the current
 *   notebook's kernel; clicking it runs the command.
 */
import { JupyterFrontEnd, JupyterFrontEndPlugin } from '@jupyterlab/application';
import { ICommandPalette } from '@jupyterlab/apputils';
import { IEditorLanguageRegistry } from '@jupyterlab/codemirror';
import { INotebookTracker, NotebookPanel } from '@jupyterlab/notebook';
import { IRenderMimeRegistry } from '@jupyterlab/rendermime';
import { Kernel } from '@jupyterlab/services';
import { IStatusBar } from '@jupyterlab/statusbar';
import { LabIcon } from '@jupyterlab/ui-components';
import { Signal } from '@lumino/signaling';
import { Widget } from '@lumino/widgets';

import { answerRendererFactory, IInsertCode, insertBelow, INSERT_CODE_EVENT } from './answers';
import { CrushConnection, ICrushStatus } from './connection';
import { CellEdits } from './edits';
import { answerRequest } from './notebook';

const PLUGIN_ID = 'jupyter-crush:plugin';

export namespace CommandIDs {
  export const stopAll = 'jupyter-crush:stop-all';
}

const stopAgentsIcon = new LabIcon({
  name: 'jupyter-crush:stop-agents',
  svgstr:
    '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 24 24" width="16">' +
    '<path class="jp-icon3" fill="#616161" d="M7.5 2h9L22 7.5v9L16.5 22h-9L2 16.5v-9z' +
    'M9 8v8h6V8z"/></svg>'
});

/** One CrushConnection per kernel connection, dropped when the kernel connection goes away. */
class Connections {
  constructor(tracker: INotebookTracker, edits: CellEdits) {
    this._tracker = tracker;
    this._edits = edits;
  }

  get(kernel: Kernel.IKernelConnection): CrushConnection {
    let connection = this._byKernel.get(kernel);
    if (!connection) {
      // The kernel's questions about its notebook are answered from the panel showing it.
      const panel = () =>
        this._tracker.find(p => p.sessionContext.session?.kernel === kernel) ?? null;
      connection = new CrushConnection(kernel, request =>
        answerRequest(panel(), request, this._edits)
      );
      this._byKernel.set(kernel, connection);
      kernel.disposed.connect(() => {
        this._byKernel.get(kernel)?.dispose();
        this._byKernel.delete(kernel);
      });
    }
    return connection;
  }

  private readonly _tracker: INotebookTracker;
  private readonly _edits: CellEdits;
  private _byKernel = new Map<Kernel.IKernelConnection, CrushConnection>();
}

/**
 * Follows the current notebook and its kernel, and re-emits the crush status
 * of that kernel.
 */
class CurrentKernelStatus {
  constructor(tracker: INotebookTracker, connections: Connections) {
    this._tracker = tracker;
    this._connections = connections;
    tracker.currentChanged.connect(this._onCurrentChanged, this);
    this._onCurrentChanged();
  }

  readonly changed = new Signal<this, ICrushStatus | null>(this);
  /** The same moments as `changed`, typed for the status bar's `activeStateChanged`. */
  readonly activeStateChanged = new Signal<this, void>(this);

  get status(): ICrushStatus | null {
    return this._connection?.status ?? null;
  }

  get connection(): CrushConnection | null {
    return this._connection;
  }

  private _onCurrentChanged(): void {
    this._panel?.sessionContext.kernelChanged.disconnect(this._onKernelChanged, this);
    this._panel = this._tracker.currentWidget;
    this._panel?.sessionContext.kernelChanged.connect(this._onKernelChanged, this);
    this._onKernelChanged();
  }

  private _onKernelChanged(): void {
    this._connection?.statusChanged.disconnect(this._emit, this);
    const kernel = this._panel?.sessionContext.session?.kernel ?? null;
    this._connection = kernel ? this._connections.get(kernel) : null;
    if (this._connection) {
      this._connection.statusChanged.connect(this._emit, this);
      void this._connection.connect();
    }
    this._emit();
  }

  private _emit(): void {
    this.changed.emit(this.status);
    this.activeStateChanged.emit();
  }

  private readonly _tracker: INotebookTracker;
  private readonly _connections: Connections;
  private _panel: NotebookPanel | null = null;
  private _connection: CrushConnection | null = null;
}

export function formatStatus(status: ICrushStatus): string {
  if (status.running === 0 && status.queued === 0) {
    return 'Crush: idle';
  }
  return `Crush: ${status.running} running, ${status.queued} queued`;
}

class CrushStatusItem extends Widget {
  constructor(current: CurrentKernelStatus, onClick: () => void) {
    super();
    this.addClass('jp-crush-StatusItem');
    this.node.title = 'Crush runs in this kernel; click to stop them';
    this.node.addEventListener('click', onClick);
    current.changed.connect((_, status) => this._render(status));
    this._render(current.status);
  }

  private _render(status: ICrushStatus | null): void {
    this.node.textContent = status ? formatStatus(status) : '';
    this.node.dataset.running = String(status?.running ?? 0);
    this.node.dataset.queued = String(status?.queued ?? 0);
  }
}

const plugin: JupyterFrontEndPlugin<void> = {
  id: PLUGIN_ID,
  description: 'Stop running crush agents and show their status.',
  autoStart: true,
  requires: [INotebookTracker],
  optional: [ICommandPalette, IStatusBar, IRenderMimeRegistry, IEditorLanguageRegistry],
  activate: (
    app: JupyterFrontEnd,
    tracker: INotebookTracker,
    palette: ICommandPalette | null,
    statusBar: IStatusBar | null,
    rendermime: IRenderMimeRegistry | null,
    languages: IEditorLanguageRegistry | null
  ) => {
    const connections = new Connections(tracker, new CellEdits(languages));

    // A finished answer's code blocks: Copy and Insert below (answers.ts).
    rendermime?.addFactory(answerRendererFactory);
    document.addEventListener(INSERT_CODE_EVENT, event => {
      const target = event.target as Node;
      const panel = tracker.find(p => p.node.contains(target));
      if (panel) {
        insertBelow(panel, target, (event as CustomEvent<IInsertCode>).detail);
      }
    });
    const current = new CurrentKernelStatus(tracker, connections);

    app.commands.addCommand(CommandIDs.stopAll, {
      label: args => (args.toolbar ? '' : 'Crush: stop running agents'),
      caption: 'Stop every running and queued crush run in this notebook\u2019s kernel',
      icon: stopAgentsIcon,
      // Enabled once the current notebook's kernel has crush loaded (it answered on the comm).
      isEnabled: () => current.status !== null,
      execute: async () => {
        const kernel = tracker.currentWidget?.sessionContext.session?.kernel;
        if (!kernel) {
          return false;
        }
        const stopped = await connections.get(kernel).cancelAll();
        if (!stopped) {
          console.info('jupyter-crush: crush is not loaded in this kernel; nothing to stop');
        }
        return stopped;
      }
    });
    current.changed.connect(() => app.commands.notifyCommandChanged(CommandIDs.stopAll));

    palette?.addItem({ command: CommandIDs.stopAll, category: 'Crush' });

    if (statusBar) {
      const item = new CrushStatusItem(current, () => {
        void app.commands.execute(CommandIDs.stopAll);
      });
      statusBar.registerStatusItem(PLUGIN_ID, {
        item,
        align: 'left',
        rank: 4,
        isActive: () => current.status !== null,
        activeStateChanged: current.activeStateChanged
      });
    }
  }
};

export default plugin;
