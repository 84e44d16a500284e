"""The ``fetch`` tool against a local HTTP server: what each kind of body becomes, the
limits (size, time, redirects, schemes), secrets kept out of requests, and the permission
prompt in front of it when the agent calls it."""

from __future__ import annotations

import asyncio
import json

import pytest
from support.bounded import until, within
from support.web_server import Page, web_serving

from jupyter_crush import FinishReason, Role, SessionAgent, SessionAgentCall
from jupyter_crush.core.tools import Decision, ToolContext
from jupyter_crush.testing import Reply, ScriptedModel, ToolCall
from jupyter_crush.tools import default_tools
from jupyter_crush.tools.fetch import FetchTool
from jupyter_crush.tools.permissions import HEADLESS_REASON, PermissionPolicy

CONTEXT = ToolContext("s1", "call1")

HTML = b"""<html><head><title>Sales</title><style>p {color: red}</style>
<script>var tracking = 1;</script></head>
<body><h1>Quarterly sales</h1><p>Revenue grew <b>12%</b>, see <a href="/q3">Q3</a>.</p>
<table><tr><th>region</th><th>sales</th></tr><tr><td>north</td><td>10</td></tr></table>
</body></html>"""


def fetch(url, **args):
    return within(FetchTool().run({"url": url, **args}, CONTEXT))


async def test_html_becomes_markdown_with_the_url_and_final_url():
    with web_serving({"/page": Page(HTML, "text/html; charset=utf-8")}) as server:
        result = await fetch(server.url + "/page")
    assert not result.is_error
    head, body = result.content.split("\n\n", 1)
    assert head == (
        f"URL: {server.url}/page\nFinal URL: {server.url}/page\nStatus: 200 OK\n"
        "Content-Type: text/html; charset=utf-8"
    )
    assert "# Quarterly sales" in body
    assert "Revenue grew **12%**, see [Q3](/q3)." in body
    assert "| region | sales |" in body and "| north | 10 |" in body
    assert "tracking" not in body and "color: red" not in body
    assert result.metadata["final_url"] == f"{server.url}/page"


async def test_json_is_pretty_printed():
    data = {"rows": [{"id": 1, "name": "Zoë"}], "total": 1}
    page = Page(json.dumps(data, separators=(",", ":")).encode(), "application/json")
    with web_serving({"/api": page}) as server:
        result = await fetch(server.url + "/api")
    body = result.content.split("\n\n", 1)[1]
    assert body == json.dumps(data, indent=2, ensure_ascii=False)


async def test_csv_comes_back_as_it_is():
    csv = b"region,sales\nnorth,10\nsouth,  7\n"
    with web_serving({"/data.csv": Page(csv, "text/csv")}) as server:
        result = await fetch(server.url + "/data.csv")
    assert result.content.split("\n\n", 1)[1] == csv.decode()


async def test_a_binary_body_is_one_line_saying_what_it_was():
    png = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4
    with web_serving({"/plot.png": Page(png, "image/png")}) as server:
        result = await fetch(server.url + "/plot.png")
    body = result.content.split("\n\n", 1)[1]
    assert body == "Body: image/png, 1.0 KB, binary; not shown"


async def test_an_oversized_body_is_not_read_and_said_in_one_line():
    big = b"x" * 2048
    with web_serving({"/big": Page(big, "text/plain")}) as server:
        result = await within(FetchTool(max_bytes=1024).run({"url": server.url + "/big"}, CONTEXT))
    body = result.content.split("\n\n", 1)[1]
    assert body == "Body: 2.0 KB, over the 1.0 KB fetch reads; not read"


async def test_long_text_keeps_head_and_tail_with_the_count_cut():
    text = "HEAD" + "m" * 5000 + "TAIL"
    with web_serving({"/long": Page(text.encode(), "text/plain")}) as server:
        result = await within(FetchTool(limit=1000).run({"url": server.url + "/long"}, CONTEXT))
    assert len(result.content) < 1100
    assert "HEAD" in result.content and result.content.endswith("TAIL")
    assert "[body truncated: " in result.content and "characters omitted]" in result.content


async def test_a_redirect_within_http_is_followed_and_both_urls_said():
    pages = {
        "/old": Page(status=301, headers={"Location": "/new"}),
        "/new": Page(b"moved here", "text/plain"),
    }
    with web_serving(pages) as server:
        result = await fetch(server.url + "/old")
    assert result.content.startswith(f"URL: {server.url}/old\nFinal URL: {server.url}/new\n")
    assert result.content.endswith("moved here")
    assert [seen.path for seen in server.requests] == ["/old", "/new"]


async def test_a_redirect_to_file_is_refused():
    pages = {"/trap": Page(status=302, headers={"Location": "file:///etc/passwd"})}
    with web_serving(pages) as server:
        result = await fetch(server.url + "/trap")
    assert result.is_error
    assert result.content == (
        f"fetch: refused the redirect from {server.url}/trap to file:///etc/passwd: "
        "only http and https redirects are followed"
    )
    assert "root:" not in result.content


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://example.com/x", "data:,hi"])
async def test_other_schemes_are_refused_without_a_request(url):
    result = await fetch(url)
    assert result.is_error
    assert result.content.startswith("fetch: only http and https URLs can be fetched, not '")


async def test_a_server_that_never_answers_times_out():
    with web_serving({"/hang": Page(hold=True)}) as server:
        result = await fetch(server.url + "/hang", timeout=0.5)
    assert result.is_error
    assert result.content == (
        f"fetch: no complete answer from {server.url}/hang within 0.5 s; try again or raise "
        "'timeout' (at most 120)"
    )


async def test_a_known_secret_in_the_url_or_headers_is_refused_before_sending(monkeypatch):
    secret = "sk-fetch-test-0123456789abcdef"
    monkeypatch.setenv("ANALYTICS_API_KEY", secret)
    with web_serving({"/api": Page(b"{}", "application/json")}) as server:
        in_url = await fetch(f"{server.url}/api?key={secret}")
        in_header = await fetch(server.url + "/api", headers={"Authorization": f"Bearer {secret}"})
    assert server.requests == []
    assert in_url.is_error and in_header.is_error
    assert in_url.content.startswith("fetch: refused: the request's URL contains a secret")
    assert in_header.content.startswith("fetch: refused: the request's headers contain")
    assert secret not in in_url.content + in_header.content


async def test_an_error_status_is_an_error_result_with_its_body():
    with web_serving({}) as server:
        result = await fetch(server.url + "/missing")
    assert result.is_error
    assert "\nStatus: 404 Not Found\n" in result.content
    assert result.content.endswith("\n\nnot found")


async def test_a_refused_connection_is_one_line():
    with web_serving({}) as server:
        url = server.url + "/gone"
    result = await fetch(url)  # the server has closed: nothing listens on its port
    assert result.is_error
    assert result.content.startswith(f"fetch: could not GET {url}: ConnectError")
    assert "\n" not in result.content


async def test_the_models_headers_are_sent():
    with web_serving({"/api": Page(b"[]", "application/json")}) as server:
        await fetch(server.url + "/api", headers={"Accept": "application/json"})
    assert server.requests[0].headers["Accept"] == "application/json"


async def test_a_stop_before_sending_sends_nothing():
    def stopped() -> None:
        raise asyncio.CancelledError

    with web_serving({"/a": Page(b"x")}) as server, pytest.raises(asyncio.CancelledError):
        await within(FetchTool().run({"url": server.url + "/a"}, ToolContext("s", "c", stopped)))
    assert server.requests == []


# -- through the agent: the permission prompt ---------------------------------------------------


class Broker:
    def __init__(self, *answers: Decision) -> None:
        self.answers = list(answers)
        self.asked = []

    async def ask(self, request):
        self.asked.append(request)
        return self.answers.pop(0)


def fetch_turns(url: str, times: int) -> list[Reply]:
    calls = [Reply(tool_calls=[ToolCall("fetch", {"url": f"{url}?n={n}"})]) for n in range(times)]
    return [*calls, Reply(text="done")]


async def test_fetch_asks_and_allow_for_session_covers_the_next_calls(store, tmp_path):
    broker = Broker(Decision.ALLOW_SESSION)
    with web_serving({"/a?n=0": Page(b"one"), "/a?n=1": Page(b"two")}) as server:
        model = ScriptedModel(fetch_turns(server.url + "/a", 2))
        tools = default_tools(None, tmp_path, include=["fetch"])
        agent = SessionAgent(model, store, tools=tools, permissions=PermissionPolicy(broker))
        session = store.create_session()
        result = await within(agent.run(SessionAgentCall(session.id, "read the page")))
    assert result.reason is FinishReason.END_TURN
    assert len(broker.asked) == 1
    assert broker.asked[0].summary == f"GET {server.url}/a?n=0"
    assert [seen.path for seen in server.requests] == ["/a?n=0", "/a?n=1"]
    got = [m.messages[-1].tool_results[0].content for m in model.requests[1:]]
    assert got[0].endswith("\n\none") and got[1].endswith("\n\ntwo")


async def test_a_denied_fetch_sends_nothing(store, tmp_path):
    broker = Broker(Decision.DENY)
    with web_serving({"/a?n=0": Page(b"one")}) as server:
        model = ScriptedModel(fetch_turns(server.url + "/a", 1))
        tools = default_tools(None, tmp_path, include=["fetch"])
        agent = SessionAgent(model, store, tools=tools, permissions=PermissionPolicy(broker))
        session = store.create_session()
        result = await within(agent.run(SessionAgentCall(session.id, "read the page")))
    assert result.reason is FinishReason.CANCELED
    assert server.requests == []


async def test_headless_fetch_is_denied_unless_allowed(store, tmp_path):
    with web_serving({"/a?n=0": Page(b"one")}) as server:
        tools = default_tools(None, tmp_path, include=["fetch"])
        denied = PermissionPolicy(Broker(), headless=True)
        agent = SessionAgent(
            ScriptedModel(fetch_turns(server.url + "/a", 1)), store, tools=tools, permissions=denied
        )
        session = store.create_session()
        result = await within(agent.run(SessionAgentCall(session.id, "read it")))
        assert result.message == f"Permission denied for fetch: {HEADLESS_REASON}"
        assert server.requests == []
        allowed = PermissionPolicy(Broker(), headless=True, allowed_tools=["fetch"])
        model = ScriptedModel(fetch_turns(server.url + "/a", 1))
        agent = SessionAgent(model, store, tools=tools, permissions=allowed)
        result = await within(agent.run(SessionAgentCall(store.create_session().id, "read it")))
    assert result.reason is FinishReason.END_TURN
    assert [seen.path for seen in server.requests] == ["/a?n=0"]


async def test_stop_during_a_fetch_cancels_it(store, tmp_path):
    with web_serving({"/hang?n=0": Page(hold=True)}) as server:
        model = ScriptedModel(fetch_turns(server.url + "/hang", 1))
        tools = default_tools(None, tmp_path, include=["fetch"])
        policy = PermissionPolicy(None, allowed_tools=["fetch"])
        agent = SessionAgent(model, store, tools=tools, permissions=policy)
        session = store.create_session()
        run = asyncio.ensure_future(agent.run(SessionAgentCall(session.id, "read it")))
        await until(lambda: server.requests)
        agent.cancel(session.id)
        result = await within(run)
    assert result.reason is FinishReason.CANCELED
    assert len(model.requests) == 1  # no request after the Stop
    (results,) = [m for m in store.list_messages(session.id) if m.role is Role.TOOL]
    assert results.tool_results[0].is_error
