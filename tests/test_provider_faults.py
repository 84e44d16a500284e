"""Providers against servers that misbehave in ways a notebook user meets: one that accepts
the connection and never answers, a proxy or login page answering 200 with HTML, and
prompts holding undecodable text. The real SDKs talk to a local server on 127.0.0.1."""

from __future__ import annotations

import json
import time

import pytest
from support.replay_server import ReplayServer, Step, error_step
from test_providers import _isolated_env, protocol_model, run_step, simple_body, user

from jupyter_crush.core.message import FinishReason
from jupyter_crush.core.model import ModelError

__all__ = ["_isolated_env"]  # the autouse fixture: no developer keys leak into these tests

PROTOCOLS = ["openai", "responses", "anthropic"]


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_a_server_that_never_answers_fails_within_the_total_deadline(protocol):
    # Each attempt alone would wait 30 s for a first byte; the whole sequence has 0.6 s.
    steps = [Step(simple_body(protocol), fault="stall_head")] * 3
    async with ReplayServer(steps) as server:
        model = protocol_model(
            protocol, server.url, read_timeout=30, max_retries=2, answer_timeout=0.6
        )
        started = time.monotonic()
        with pytest.raises(ModelError) as info:
            await run_step(model, [user("hi")])
        took = time.monotonic() - started
    message = str(info.value)
    assert took < 10, f"took {took:.1f} s: the deadline did not bound the attempts"
    assert f"no answer from {model._url()} within 0.6 s over up to 3 attempts" in message
    assert "answer_timeout" in message


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_headers_then_nothing_fail_within_the_deadline_naming_the_first_event(protocol):
    # The server answers 200 with an event stream's headers and then stalls: the read
    # timeout (30 s) would wait for a byte; the first event shares the 0.5 s deadline.
    steps = [Step(simple_body(protocol), fault="stall", fault_after=0)]
    async with ReplayServer(steps) as server:
        model = protocol_model(protocol, server.url, read_timeout=30, answer_timeout=0.5)
        with pytest.raises(ModelError) as info:
            await run_step(model, [user("hi")])
        await server.requests[0].hung_up.wait()  # the response was closed, not left open
    message = str(info.value)
    assert f"no first event from {model._url()} within 0.5 s" in message
    assert "answered (HTTP 200) and then sent nothing" in message
    assert "answer_timeout" in message and "read timeout" not in message
    assert len(server.requests) == 1  # an answer under way is not asked again


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_events_after_the_first_are_not_held_to_the_answer_deadline(protocol):
    # Events 0.1 s apart, the whole answer past the 0.4 s deadline: only the time to
    # the first event is bounded by it; between events the read timeout applies.
    steps = [Step(simple_body(protocol), event_delay=0.1)]
    async with ReplayServer(steps) as server:
        model = protocol_model(protocol, server.url, read_timeout=30, answer_timeout=0.4)
        step = await run_step(model, [user("hi")])
    assert step.finish.reason is FinishReason.END_TURN and step.message.text


async def test_retries_within_the_deadline_are_still_made():
    # Short attempts fit in the deadline: the SDK retries them, then the deadline says so.
    steps = [Step(simple_body("openai"), fault="stall_head")] * 3
    async with ReplayServer(steps) as server:
        model = protocol_model(
            "openai", server.url, read_timeout=0.1, max_retries=2, answer_timeout=20
        )
        with pytest.raises(ModelError, match="read timeout"):
            await run_step(model, [user("hi")])
        assert len(server.requests) == 3


def test_the_default_deadline_suits_an_interactive_notebook():
    from jupyter_crush.providers import ProviderSettings

    settings = ProviderSettings()
    assert settings.answer_timeout <= 60  # not read_timeout x attempts (15 minutes)


PORTAL = "<!doctype html><html><body><h1>Sign in to the guest Wi-Fi</h1></body></html>"


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_a_200_html_page_is_named_with_its_url(protocol):
    steps = [Step(PORTAL, headers={"content-type": "text/html; charset=utf-8"})]
    async with ReplayServer(steps) as server:
        model = protocol_model(protocol, server.url)
        with pytest.raises(ModelError) as info:
            await run_step(model, [user("hi")])
    message = str(info.value)
    assert "answered with text/html" in message and model._url() in message
    assert "ended before" not in message


async def test_a_200_in_another_wrong_content_type_is_named_too():
    steps = [Step('{"ok": true}', headers={"content-type": "application/json"})]
    async with ReplayServer(steps) as server:
        model = protocol_model("openai", server.url)
        with pytest.raises(ModelError, match="answered with application/json instead of an event"):
            await run_step(model, [user("hi")])


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_undecodable_text_goes_to_the_server_as_visible_marks(protocol):
    text = b"the file says caf\xe9 \xff".decode("utf-8", "surrogateescape")
    async with ReplayServer([Step(simple_body(protocol))]) as server:
        await run_step(protocol_model(protocol, server.url), [user(text)])
        body = server.requests[0].body.decode("utf-8")  # valid UTF-8 on the wire
    sent = json.dumps(json.loads(body))
    assert json.dumps("the file says caf\\xe9 \\xff")[1:-1] in sent


async def test_an_error_that_echoes_a_configured_header_is_redacted():
    from jupyter_crush.providers import ProviderConfig, ProviderSettings, resolve_model

    token = "corp-gateway-token-7d1e5a9c"
    echo = f"invalid gateway credential 'Bearer {token}'"
    async with ReplayServer([error_step(401, echo)]) as server:
        corp = ProviderConfig(
            "corp",
            "openai-compat",
            f"{server.url}/v1",
            requires_key=False,
            extra_headers={"Authorization": f"Bearer {token}"},
        )
        settings = ProviderSettings(providers={"corp": corp}, crush_config=False)
        model = resolve_model("corp:some-model", settings=settings)
        with pytest.raises(ModelError) as info:
            await run_step(model, [user("hi")])
        assert server.requests[0].headers.get("authorization") == f"Bearer {token}"
    assert token not in str(info.value) and "invalid gateway credential" in str(info.value)
