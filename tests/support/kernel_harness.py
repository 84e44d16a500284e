"""A real IPython kernel for tests and benchmarks, driven over ZMQ like a front end.

The kernel runs this repository's ``jupyter_crush`` with the test's Python (the venv's),
from a throwaway kernelspec. Messages are sent the way JupyterLab sends them: execute
requests with ``allow_stdin=True`` (an interactive front end) unless told otherwise, and
widget clicks as ``comm_msg`` to the button's comm, optionally on a subshell.
"""

from __future__ import annotations

import json
import os
import queue
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jupyter_client import KernelManager
from jupyter_client.kernelspec import KernelSpecManager

ROOT = Path(__file__).resolve().parents[2]
# An empty config home for kernels, so the developer's ~/.config/crush/crush.json (its
# providers, its MCP servers) never reaches a test; removed when the test process exits.
_EMPTY_CONFIG_HOME = tempfile.TemporaryDirectory(prefix="crush-test-config-")


@dataclass
class Execution:
    msg_id: str
    reply: dict[str, Any]
    outputs: list[dict[str, Any]] = field(default_factory=list)

    @property
    def stdout(self) -> str:
        return "".join(
            m["content"]["text"]
            for m in self.outputs
            if m["msg_type"] == "stream" and m["content"]["name"] == "stdout"
        )

    @property
    def errors(self) -> list[dict[str, Any]]:
        return [m["content"] for m in self.outputs if m["msg_type"] == "error"]


KERNEL_NAME = "crush-test"

#: What the delta run view's Stop button sends (jupyter_crush/delta_view.js).
STOP_CLICK = {"event": "click", "target": "stop"}


def view_ops(msg: dict[str, Any], comm_id: str | None = None) -> list[list[Any]]:
    """The ops a run view's iopub message carries (none for any other message)."""
    if msg["msg_type"] != "comm_msg":
        return []
    content = msg["content"]
    if comm_id is not None and content["comm_id"] != comm_id:
        return []
    data = content.get("data", {})
    if data.get("method") != "custom" or not isinstance(data.get("content"), dict):
        return []
    return data["content"].get("ops", [])


def kernel_manager(spec_dir: str | os.PathLike[str]) -> KernelManager:
    """A KernelManager for this Python (the venv's), via a kernelspec written to ``spec_dir``."""
    spec = Path(spec_dir) / "kernels" / KERNEL_NAME
    spec.mkdir(parents=True, exist_ok=True)
    (spec / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "crush test",
                "language": "python",
                "interrupt_mode": "signal",
            }
        )
    )
    ksm = KernelSpecManager(kernel_dirs=[str(spec.parent)])
    return KernelManager(kernel_name=KERNEL_NAME, kernel_spec_manager=ksm)


def kernel_env(data_dir: str | os.PathLike[str], **extra: str) -> dict[str, str]:
    """The kernel's environment: this checkout first on the path, no API keys (replay), no
    user-wide crush.json (``XDG_CONFIG_HOME`` is an empty directory unless ``extra`` sets it)."""
    env = dict(os.environ)
    env.pop("OPENAI_API_KEY", None)
    env.pop("ANTHROPIC_API_KEY", None)
    env.pop("CRUSH_MODEL", None)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env["CRUSH_DATA_DIR"] = str(data_dir)
    env["XDG_CONFIG_HOME"] = _EMPTY_CONFIG_HOME.name
    env.update(extra)
    return env


class Kernel:
    """One kernel process; every iopub message it sends is kept in ``self.iopub``."""

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        env: dict[str, str] | None = None,
        extra_arguments: list[str] | None = None,
    ):
        self._spec_dir = tempfile.TemporaryDirectory(prefix="crush-kernelspec-")
        self.km = kernel_manager(self._spec_dir.name)
        self.km.start_kernel(
            env=kernel_env(data_dir, **(env or {})),
            cwd=str(data_dir),
            extra_arguments=extra_arguments or [],
        )
        self.kc = self.km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=60)
        self.iopub: list[dict[str, Any]] = []

    # -- messages --------------------------------------------------------------

    def pump(self, timeout: float = 0.0) -> dict[str, Any] | None:
        """Receive one iopub message (None on timeout) and keep it."""
        try:
            msg = self.kc.get_iopub_msg(timeout=timeout)
        except queue.Empty:
            return None
        self.iopub.append(msg)
        return msg

    def execute(
        self, code: str, timeout: float = 30.0, allow_stdin: bool = True, cell_id: str = ""
    ) -> Execution:
        """Run ``code``; ``cell_id`` sends the cell's id as JupyterLab and nbclient do."""
        if cell_id:
            content = {
                "code": code,
                "silent": False,
                "store_history": True,
                "user_expressions": {},
                "allow_stdin": allow_stdin,
                "stop_on_error": True,
            }
            msg = self.kc.session.msg("execute_request", content, metadata={"cellId": cell_id})
            self.kc.shell_channel.send(msg)
            msg_id = msg["header"]["msg_id"]
        else:
            msg_id = self.kc.execute(code, allow_stdin=allow_stdin)
        outputs: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no idle after executing {code!r}")
            msg = self.pump(timeout=left)
            if msg is None or msg["parent_header"].get("msg_id") != msg_id:
                continue
            if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                break
            outputs.append(msg)
        reply = self._shell_reply(msg_id, deadline)
        return Execution(msg_id, reply, outputs)

    def _shell_reply(self, msg_id: str, deadline: float) -> dict[str, Any]:
        while True:
            msg = self.kc.get_shell_msg(timeout=max(0.1, deadline - time.monotonic()))
            if msg["parent_header"].get("msg_id") == msg_id:
                return msg

    def run(self, code: str, timeout: float = 30.0) -> str:
        """Execute ``code``; fail on an error; return its stdout."""
        result = self.execute(code, timeout=timeout)
        if result.errors or result.reply["content"]["status"] != "ok":
            raise AssertionError(f"{code!r} failed: {result.errors or result.reply['content']}")
        return result.stdout

    def value(self, expression: str, timeout: float = 30.0) -> Any:
        """The JSON value of ``expression`` evaluated in the kernel."""
        out = self.run(f"import json as _j; print(_j.dumps({expression}))", timeout=timeout)
        return json.loads(out.strip().splitlines()[-1])

    # -- widgets -----------------------------------------------------------------

    def widget_comms(self, model_name: str) -> list[tuple[str, dict[str, Any]]]:
        """(comm id, state) of every widget of ``model_name`` opened so far, oldest first."""
        self.drain()
        found = []
        for msg in self.iopub:
            if msg["msg_type"] != "comm_open":
                continue
            content = msg["content"]
            state = content.get("data", {}).get("state", {})
            if state.get("_model_name") == model_name:
                found.append((content["comm_id"], state))
        return found

    def run_view(self) -> str:
        """The comm id of the newest run view (the delta view's anywidget)."""
        views = [c for c, s in self.widget_comms("AnyModel") if "protocol" in s]
        assert views, "no run view was displayed"
        return views[-1]

    def click(
        self,
        comm_id: str,
        subshell_id: str | None = None,
        content: dict[str, Any] | None = None,
    ) -> float:
        """Send a widget click exactly as the front end does; returns send time.

        ``content`` defaults to an ipywidgets Button's click.
        """
        msg = self.kc.session.msg(
            "comm_msg",
            {
                "comm_id": comm_id,
                "data": {"method": "custom", "content": content or {"event": "click"}},
            },
        )
        if subshell_id is not None:
            msg["header"]["subshell_id"] = subshell_id
        sent = time.perf_counter()
        self.kc.shell_channel.send(msg)
        return sent

    def wait_ask(self, timeout: float = 10.0) -> dict[str, Any]:
        """The first permission prompt a run view showed (kept or new): id, tool, what."""
        msg = self.wait_iopub(lambda m: any(op == "ask" for op, _ in view_ops(m)), timeout)
        return next(value for op, value in view_ops(msg) if op == "ask")

    def stop(self, subshell_id: str | None = None) -> float:
        """Click the newest run view's Stop, as its page sends it; returns send time."""
        return self.click(self.run_view(), subshell_id, STOP_CLICK)

    def decide(self, ask_id: str, decision: str, subshell_id: str | None = None) -> float:
        """Click a permission prompt's button in the newest run view."""
        content = {"event": "click", "target": "decide", "ask": ask_id, "decision": decision}
        return self.click(self.run_view(), subshell_id, content)

    def create_subshell(self, timeout: float = 10.0) -> str:
        """A subshell, as JupyterLab creates for comm traffic under ipykernel 7."""
        msg = self.kc.session.msg("create_subshell_request", {})
        self.kc.control_channel.send(msg)
        deadline = time.monotonic() + timeout
        while True:
            reply = self.kc.get_control_msg(timeout=max(0.1, deadline - time.monotonic()))
            if reply["parent_header"].get("msg_id") == msg["header"]["msg_id"]:
                return reply["content"]["subshell_id"]

    def drain(self) -> None:
        while self.pump(timeout=0.0) is not None:
            pass

    def wait_iopub(self, predicate: Any, timeout: float = 10.0) -> dict[str, Any]:
        """The first iopub message (kept or new) satisfying ``predicate``."""
        for msg in self.iopub:
            if predicate(msg):
                return msg
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("expected iopub message never came")
            msg = self.pump(timeout=left)
            if msg is not None and predicate(msg):
                return msg

    # -- lifecycle -----------------------------------------------------------------

    def interrupt(self) -> None:
        self.km.interrupt_kernel()

    def shutdown(self) -> None:
        self.kc.stop_channels()
        if self.km.is_alive():
            self.km.shutdown_kernel(now=False)
        self._spec_dir.cleanup()


SETUP = """
%load_ext jupyter_crush
from jupyter_crush.magics import current
from jupyter_crush.testing import ScriptedModel
crush = current()
"""


def scripted(tokens: int, rate: float | None, hold_after: int | None = None) -> str:
    """Kernel code making the default model a ScriptedModel of ``tokens`` word tokens.

    With ``hold_after``, the model's first request holds after that many tokens until the
    kernel variable ``gate`` is released: the run is streaming, deterministically, for as
    long as a test needs, however loaded the machine.
    """
    code = f"model = ScriptedModel(['word ' * {tokens}] * 50, tokens_per_second={rate!r})\n"
    if hold_after is not None:
        code += f"gate = model.gate(step=0, after_tokens={hold_after})\n"
    return code + "crush.use_model(model)"
