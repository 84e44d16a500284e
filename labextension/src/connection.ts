/**
 * The browser end of the `jupyter_crush` comm for one kernel connection.
 *
 * Protocol (JSON over a Jupyter comm, target `jupyter_crush`):
 *   browser -> kernel  {"action": "status"}       ask for the current counts
 *   browser -> kernel  {"action": "cancel_all"}   stop every running and queued run
 *   kernel -> browser  {"event": "status", "running": n, "queued": m}
 *   kernel -> browser  {"event": "request", "id": n, "op": ...}   a question about the
 *                      notebook (notebook.ts); answered {"action": "reply", "id": n, ...}
 *                      A handler that returns a promise (an edit under review, a cell
 *                      running) is acknowledged at once with {"pending": true}, then
 *                      answered under the same id when the promise settles.
 *
 * The browser opens the comm when a notebook becomes current. A kernel without
 * crush closes it at once; when crush is loaded later, the kernel opens and
 * closes a comm with {"event": "hello"}, and the browser opens its own again.
 */
import { Kernel, KernelMessage } from '@jupyterlab/services';
import { IDisposable } from '@lumino/disposable';
import { ISignal, Signal } from '@lumino/signaling';

export const COMM_TARGET = 'jupyter_crush';

export interface ICrushStatus {
  running: number;
  queued: number;
}

function parseStatus(data: unknown): ICrushStatus | null {
  if (typeof data !== 'object' || data === null) {
    return null;
  }
  const msg = data as { [key: string]: unknown };
  if (msg.event !== 'status') {
    return null;
  }
  const running = Number(msg.running);
  const queued = Number(msg.queued);
  if (!Number.isFinite(running) || !Number.isFinite(queued)) {
    return null;
  }
  return { running, queued };
}

export type Reply = { [key: string]: unknown };

/** Answers the kernel's `request` events (see notebook.ts), at once or later. */
export type RequestHandler = (request: { [key: string]: unknown }) => Reply | Promise<Reply>;

export class CrushConnection implements IDisposable {
  constructor(kernel: Kernel.IKernelConnection, onRequest?: RequestHandler) {
    this._kernel = kernel;
    this._onRequest = onRequest ?? null;
    this._onKernelOpen = () => {
      // The kernel's hello: crush is loaded now.
      if (!this._comm) {
        void this.connect();
      }
    };
    kernel.registerCommTarget(COMM_TARGET, this._onKernelOpen);
    kernel.statusChanged.connect(this._onKernelStatus, this);
  }

  /** Emits whenever the counts change; `null` means crush is not loaded in the kernel. */
  get statusChanged(): ISignal<this, ICrushStatus | null> {
    return this._statusChanged;
  }

  get status(): ICrushStatus | null {
    return this._status;
  }

  get isDisposed(): boolean {
    return this._isDisposed;
  }

  /**
   * Open the comm if it is not open yet. Resolves true when the kernel runs
   * crush, false when it does not (the kernel closes a comm to an unknown target).
   */
  connect(): Promise<boolean> {
    if (this._comm && !this._comm.isDisposed) {
      return Promise.resolve(true);
    }
    if (!this._connecting) {
      this._connecting = this._open().finally(() => {
        this._connecting = null;
      });
    }
    return this._connecting;
  }

  /** Ask the kernel to stop every running and queued crush run. */
  async cancelAll(): Promise<boolean> {
    if (!(await this.connect()) || !this._comm) {
      return false;
    }
    await this._comm.send({ action: 'cancel_all' }).done;
    return true;
  }

  dispose(): void {
    if (this._isDisposed) {
      return;
    }
    this._isDisposed = true;
    if (!this._kernel.isDisposed) {
      this._kernel.removeCommTarget(COMM_TARGET, this._onKernelOpen);
      this._kernel.statusChanged.disconnect(this._onKernelStatus, this);
    }
    Signal.clearData(this);
  }

  private async _open(): Promise<boolean> {
    if (this._kernel.isDisposed || this._isDisposed) {
      return false;
    }
    const comm = this._kernel.createComm(COMM_TARGET);
    this._adopt(comm);
    try {
      // Open on the comm's subshell (JupyterLab's default for kernels that have
      // them): the kernel answers on the shell that sent the request, so a cancel
      // then lands even while a long cell keeps the main shell busy.
      await this._kernel.info;
      const started = (comm as { subshellStarted?: Promise<void> }).subshellStarted;
      if (this._kernel.supportsSubshells && started) {
        await started.catch(() => undefined);
      }
      // The kernel answers on iopub before it goes idle: either with a status
      // event or, when the target is unknown, by closing the comm.
      await comm.open({ action: 'status' }).done;
    } catch (reason) {
      console.warn('jupyter-crush: could not open the comm', reason);
      this._drop(comm);
    }
    return this._comm === comm && !comm.isDisposed;
  }

  private _adopt(comm: Kernel.IComm): void {
    this._comm = comm;
    comm.onMsg = (msg: KernelMessage.ICommMsgMsg) => this._handle(msg.content.data);
    comm.onClose = () => this._drop(comm);
  }

  private _drop(comm: Kernel.IComm): void {
    if (this._comm !== comm) {
      return;
    }
    this._comm = null;
    this._setStatus(null);
  }

  private _handle(data: unknown): void {
    const msg = data as { [key: string]: unknown } | null;
    if (msg && msg.event === 'request' && this._comm) {
      const comm = this._comm;
      const answer = (reply: Reply) => {
        if (!comm.isDisposed) {
          comm.send({ ...reply, action: 'reply', id: msg.id as number });
        }
      };
      let reply: Reply | Promise<Reply>;
      try {
        reply = this._onRequest ? this._onRequest(msg) : { error: 'no handler' };
      } catch (reason) {
        reply = { error: String(reason) };
      }
      if (reply instanceof Promise) {
        answer({ pending: true });
        reply.then(answer, reason => answer({ error: String(reason) }));
      } else {
        answer(reply);
      }
      return;
    }
    const status = parseStatus(data);
    if (status) {
      this._setStatus(status);
    }
  }

  private _onKernelStatus(_: Kernel.IKernelConnection, status: Kernel.Status): void {
    // A restarted kernel has a fresh interpreter: crush is gone until it is loaded again.
    if (status === 'restarting' || status === 'autorestarting' || status === 'dead') {
      this._comm = null;
      this._probeWhenIdle = true;
      this._setStatus(null);
    } else if (status === 'idle' && this._probeWhenIdle) {
      // A kernel configured to load crush at startup said hello before this page
      // reconnected; ask once instead.
      this._probeWhenIdle = false;
      void this.connect();
    }
  }

  private _setStatus(status: ICrushStatus | null): void {
    const old = this._status;
    if (
      old === status ||
      (old && status && old.running === status.running && old.queued === status.queued)
    ) {
      return;
    }
    this._status = status;
    this._statusChanged.emit(status);
  }

  private readonly _kernel: Kernel.IKernelConnection;
  private readonly _onRequest: RequestHandler | null;
  private readonly _onKernelOpen: (comm: Kernel.IComm, msg: KernelMessage.ICommOpenMsg) => void;
  private _comm: Kernel.IComm | null = null;
  private _connecting: Promise<boolean> | null = null;
  private _probeWhenIdle = false;
  private _status: ICrushStatus | null = null;
  private _isDisposed = false;
  private _statusChanged = new Signal<this, ICrushStatus | null>(this);
}
