"""The quickstart; run it through ``bash scripts/quickstart.sh``, which sets up .venv first.

quickstart.py [OUTPUT.ipynb]    run notebooks/quickstart.ipynb headless, then print what
                                each step showed, what was recorded and where to look
quickstart.py --lab [ARGS...]   JupyterLab on 127.0.0.1 with the quickstart open (ARGS go
                                to `jupyter lab`, e.g. --no-browser); Ctrl+C stops it
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
QUICKSTART = NOTEBOOKS / "quickstart.ipynb"
#: Lines of one cell's output shown in the terminal summary; the notebook has all of it.
OUTPUT_LINES = 20
WIDTH = 100


def main(argv: list[str]) -> int:
    print_model()
    if argv[:1] == ["--lab"]:
        return lab(argv[1:])
    out = Path(argv[0] if argv else NOTEBOOKS / "quickstart.out.ipynb").resolve()
    return run_headless(out)


def print_model() -> None:
    sys.path.insert(0, str(ROOT))
    from jupyter_crush.kernel.config import default_model_choice

    name, chosen_by = default_model_choice()
    if chosen_by:
        print(f"Model: {name} (chosen by {chosen_by}): the notebook talks to this model.")
    else:
        print(
            f"Model: {name}, offline: each prompt gets the real recorded answer to that prompt.\n"
            "       Set OPENAI_API_KEY, ANTHROPIC_API_KEY or CRUSH_MODEL to talk to a live model."
        )


def kernel_path() -> dict[str, str]:
    """An environment whose "python3" kernel is this venv's Python, whatever kernelspecs the
    machine has: a kernelspec of the venv's own, first on JUPYTER_PATH, wins over them all."""
    specs = Path(sys.prefix, "share", "jupyter-crush-quickstart")
    spec = specs / "kernels" / "python3"
    spec.mkdir(parents=True, exist_ok=True)
    spec.joinpath("kernel.json").write_text(
        json.dumps(
            {
                "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "Python 3 (jupyter-crush)",
                "language": "python",
            }
        )
    )
    paths = [str(specs), os.environ.get("JUPYTER_PATH", "")]
    return {"JUPYTER_PATH": os.pathsep.join(p for p in paths if p)}


# -- headless -----------------------------------------------------------------------------


def run_headless(out: Path) -> int:
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError, DeadKernelError

    store = os.environ["CRUSH_DATA_DIR"]
    print(f"Running {QUICKSTART.relative_to(ROOT)} headless…\n")
    nb = nbformat.read(QUICKSTART, as_version=4)
    failed = None
    os.environ.update(kernel_path())
    client = NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": NOTEBOOKS}}
    )
    # The kernel's own log (its startup warnings, a crash) goes beside the output.
    kernel_log = out.with_suffix(".kernel.log")
    try:
        with kernel_log.open("w") as log:
            client.execute(stderr=log)
    except (CellExecutionError, DeadKernelError) as error:
        failed = error
    finally:
        nbformat.write(nb, out)
    print_summary(nb)
    print("\n== Where to look")
    print(f"  Executed notebook: {out}")
    print(f"  Transcripts:       {store}  ({recorded(store)})")
    print(f"     read them with: CRUSH_DATA_DIR={store} .venv/bin/python -m jupyter_crush log")
    print("  Try it yourself:   bash scripts/quickstart.sh --lab   (JupyterLab, Ctrl+C stops it)")
    if failed is not None:
        print(f"\nThe quickstart failed (kernel log: {kernel_log}):\n{failed}", file=sys.stderr)
        return 1
    return 0


def print_summary(nb) -> None:
    """Each step of the executed notebook: its heading, the cells that ran and what they showed."""
    heading = ""
    for number, cell in enumerate(nb.cells, 1):
        if cell.cell_type == "markdown":
            first = cell.source.splitlines()[0] if cell.source else ""
            heading = first[3:] if first.startswith("## ") else heading
            continue
        if heading:
            print(f"\n== {heading}")
            heading = ""
        source = cell.source.splitlines() or [""]
        print(f"[{number}] {source[0]}")
        for line in source[1:] if source[0].startswith("%%") else ():
            print(f"    {line}")
        lines = [line for output in cell.get("outputs", ()) for line in output_lines(output)]
        for line in lines[:OUTPUT_LINES]:
            # Long lines (a status line) wrap rather than lose their end.
            for piece in textwrap.wrap(line, WIDTH, subsequent_indent="  ") or [""]:
                print(f"    │ {piece}".rstrip())
        if len(lines) > OUTPUT_LINES:
            print(f"    │ … ({len(lines) - OUTPUT_LINES} more lines in the notebook)")


def recorded(store: str) -> str:
    from jupyter_crush import TranscriptStore
    from jupyter_crush.core.message import FinishReason

    with TranscriptStore(store) as opened:
        sessions = opened.list_sessions()
        messages = [m for s in sessions for m in opened.list_messages(s.id)]
    canceled = sum(m.finish_reason is FinishReason.CANCELED for m in messages)
    return f"{len(sessions)} sessions, {len(messages)} messages, {canceled} canceled turn(s)"


def output_lines(output) -> list[str]:
    if output.output_type == "stream":
        text = output.text
    elif output.output_type == "error":
        text = f"{output.ename}: {output.evalue}"
    else:
        text = output.get("data", {}).get("text/plain", "")
    return text.rstrip("\n").splitlines()


# -- JupyterLab -----------------------------------------------------------------------------


def lab(args: list[str]) -> int:
    port, token = free_port(), secrets.token_hex(16)
    command = [
        str(Path(sys.executable).with_name("jupyter-lab")),
        "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={port}",
        "--ServerApp.port_retries=0",  # the URL printed below names this port
        f"--ServerApp.root_dir={NOTEBOOKS}",
        f"--IdentityProvider.token={token}",
        "--LabApp.default_url=/lab/tree/quickstart.ipynb",
        "--ServerApp.answer_yes=True",  # Ctrl+C stops it at once instead of asking
        *(["--allow-root"] if os.geteuid() == 0 else []),  # containers run as root
        *args,
    ]
    print(
        f"\nJupyterLab with the quickstart: "
        f"http://127.0.0.1:{port}/lab/tree/quickstart.ipynb?token={token}\n"
        "Ctrl+C stops it (and its kernels).\n",
        flush=True,
    )
    # The server takes this process's place, so Ctrl+C (SIGINT) reaches it however this
    # script was started.
    os.chdir(NOTEBOOKS)
    os.execve(command[0], command, {**os.environ, **kernel_path()})


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
