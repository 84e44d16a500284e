"""Kernels behind a gateway, as a user runs them: a Jupyter Kernel Gateway on loopback and a
Jupyter server started with ``--gateway-url``, spoken to over the server's REST API and
kernel websocket as JupyterLab does. Load, a ``%%crush`` run, Stop (``%crush cancel``), where
the store goes, and the one line a kernel without keys shows."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from support.gateway import RemoteKernel, Servers, kernel_socket

pytestmark = pytest.mark.slow


@pytest.fixture
def gateway(tmp_path) -> Iterator[Servers]:
    notebooks = tmp_path / "notebooks"
    (notebooks / "analysis").mkdir(parents=True)
    home = tmp_path / "home"
    home.mkdir()
    started = Servers(home, notebooks)
    try:
        yield started
    finally:
        started.close()


def test_a_notebook_kernel_behind_a_gateway_runs_stops_and_stores_beside_the_notebook(gateway):
    kernel = gateway.start_notebook_kernel("analysis/sales.ipynb")
    try:
        assert kernel.run("import os; print(os.environ.get('HOME'))").strip() == "None"
        assert kernel.run("%load_ext jupyter_crush") == ""
        listing = kernel.run("%crush sessions")
        store = gateway.notebooks / "analysis" / ".crush"
        assert listing.splitlines()[0] == (
            f"transcripts: {store} (the notebook's folder, from $KERNEL_WORKING_DIR)"
        )
        answer = kernel.run("%%crush --wait\nSay hello")
        assert "Error" not in answer, answer
        # Stop: a run paced slowly enough to be canceled mid-stream.
        kernel.run(
            "from jupyter_crush.magics import current\n"
            "from jupyter_crush.testing import ScriptedModel\n"
            "crush = current()\n"
            "crush.use_model(ScriptedModel(['word ' * 400], tokens_per_second=20))"
        )
        kernel.run("%%crush --no-wait\nCount slowly")
        kernel.run("import time; time.sleep(0.5)")
        kernel.run("%crush cancel")
        kernel.run("await crush.last_view.wait()")
        reasons = kernel.run(
            "print([str(m.finish_reason) for m in "
            "crush.store.list_messages(crush.current_session_id) if m.role == 'assistant'])"
        )
        assert reasons.strip() == "['end_turn', 'canceled']", reasons
    finally:
        kernel.close()
    assert store.is_dir() and any(store.iterdir())
    assert not (gateway.notebooks.parent / "home" / "gateway-cwd" / ".crush").exists()


def test_a_gateway_kernel_without_keys_names_the_two_allow_lists(gateway):
    # Started on the gateway directly, with what any gateway client sends (KERNEL_*) but not
    # the variables the server's allow-list would add.
    started = gateway.post(
        gateway.gateway_url, "/api/kernels", {"name": "python3", "env": {"KERNEL_USERNAME": "ada"}}
    )
    kernel = RemoteKernel(kernel_socket(gateway.gateway_url, started["id"]))
    try:
        kernel.run("%load_ext jupyter_crush")
        failure = kernel.run("%%crush --wait\nSay hello")
        assert "No API key and no CRUSH_MODEL reached this remote kernel" in failure
        assert "JUPYTER_GATEWAY_ALLOWED_ENVS" in failure and "KG_ENV_WHITELIST" in failure
        where = kernel.run("%crush model").splitlines()[-1]
        assert where.startswith("transcripts: ") and "gateway-cwd" not in where
    finally:
        kernel.close()
