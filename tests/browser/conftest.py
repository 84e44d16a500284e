"""A real JupyterLab server and headless Debian Chromium, driven with Playwright.

The server runs on 127.0.0.1 on a free port, without a token, in a temporary root holding
the notebooks the tests write. Chromium is the system one (``/usr/bin/chromium``); the
tests never download a browser. Without it they skip, unless ``CRUSH_REQUIRE_BROWSER`` is
set (CI), where a missing browser is a failure.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from typing import Any

import pytest
from lab_harness import (
    ARTIFACTS,
    CHROMIUM,
    CHROMIUM_ARGS,
    LABEXTENSION,
    LabServer,
    running_lab_server,
)


def _unavailable(reason: str) -> None:
    if os.environ.get("CRUSH_REQUIRE_BROWSER"):
        pytest.fail(f"{reason} (CRUSH_REQUIRE_BROWSER is set)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        _unavailable(f"{CHROMIUM} not found: apt-get install -y chromium")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("the playwright package is missing: pip install -e '.[test]'")
    # Artifacts of an earlier run would pass for this run's.
    shutil.rmtree(ARTIFACTS, ignore_errors=True)
    ARTIFACTS.mkdir(parents=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        yield browser
        browser.close()


@pytest.fixture(scope="session")
def lab_server(browser: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabServer]:
    if not (LABEXTENSION / "package.json").exists():
        pytest.fail(
            f"the jupyter-crush labextension is not installed at {LABEXTENSION}: "
            "run `pip install -e .` (it builds labextension/ with npm)",
            pytrace=False,
        )
    with running_lab_server(tmp_path_factory.mktemp("lab"), ARTIFACTS) as server:
        yield server


@pytest.fixture
def page(browser: Any, request: pytest.FixtureRequest) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    console: list[str] = []
    page.on("console", lambda msg: console.append(f"{msg.type}: {msg.text}"))
    page.set_default_timeout(30_000)
    yield page
    # Screenshots and the browser console are kept whether the test passed or not.
    name = request.node.name.replace("/", "_")
    try:
        page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
    finally:
        (ARTIFACTS / f"{name}.console.log").write_text("\n".join(console))
        context.close()
