"""Figures reach the model from a real kernel: a matplotlib figure named in a prompt, a plot
the python tool draws, a refused image in the tool result, and a 5 MB value capped in the
request while the store keeps it whole; a second process reopening the store finds the
image files."""

from __future__ import annotations

import pytest
from support.kernel_harness import SETUP, Kernel

from jupyter_crush.store.transcript import TranscriptStore

pytestmark = pytest.mark.slow

#: What the scripted model runs with the python tool: a plot, and a GIF no model is sent.
TOOL_CODE = (
    "import matplotlib.pyplot as plt\n"
    "from IPython.display import display\n"
    "plt.plot([1, 4, 9, 16]); plt.title('in the tool')\n"
    "display({'image/gif': 'R0lGODlhAQABAAAAACw='}, raw=True)\n"
    "print('plotted')"
)

FIVE_MB = 5 * 1024 * 1024


@pytest.fixture(scope="module")
def kernel(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images-kernel")
    k = Kernel(folder)
    k.run(SETUP)
    k.folder = folder
    yield k
    k.shutdown()


def test_figures_reach_the_request_and_a_5mb_value_is_capped(kernel):
    kernel.run(
        "import matplotlib\nmatplotlib.use('Agg')\nimport matplotlib.pyplot as plt\n"
        "fig, ax = plt.subplots(figsize=(16, 10), dpi=200)\n"
        "ax.plot(range(10), [x * x for x in range(10)]); ax.set_title('squares')\n"
        "plt.close(fig)\n"
        f"big = '0123456789abcdef' * ({FIVE_MB} // 16)\n"
        "from jupyter_crush.testing import Reply, ToolCall\n"
        f"model = ScriptedModel([Reply(tool_calls=[ToolCall('python', {{'code': {TOOL_CODE!r}}})]),"
        " 'A parabola.'])\n"
        "crush.use_model(model)"
    )
    kernel.run("%%crush --new --yolo --wait\nWhat does {fig} show? The log: {big}", timeout=90)

    # The prompt's figure: downscaled from 3200x2000 px, a real PNG.
    prompt = kernel.value(
        "(lambda m, i: [len(m.text), i.label, i.width, i.height, i.media_type, "
        "__import__('PIL.Image').Image.open(__import__('io').BytesIO(i.read())).format])"
        "(model.requests[0].messages[-1], model.requests[0].messages[-1].images[0])"
    )
    length, label, width, height, media_type, decoded = prompt
    assert length > FIVE_MB  # the model object holds it whole...
    assert (label, media_type, decoded) == ("{fig}", "image/png", "PNG")
    assert width <= 1568 and width * height <= 1_150_000 and abs(width / height - 1.6) < 0.1

    # ...the request as the OpenAI wire format sends it holds its head and tail.
    wire = kernel.value(
        "[(p['type'], len(p.get('text', '')), p.get('image_url', {}).get('url', '')[:22]) "
        "for p in __import__('jupyter_crush.providers.openai', fromlist=['x'])"
        ".build_messages(model.requests[0].messages, None)[-1]['content']]"
    )
    assert wire[0][0] == "text" and 50_000 <= wire[0][1] < 50_200
    assert wire[1] == ["image_url", 0, "data:image/png;base64,"]

    # The tool's plot went back with its result; the GIF is a line saying why it was not.
    tool = kernel.value(
        "(lambda r: [r.content, [(i.label, i.media_type) for i in r.images]])"
        "(model.requests[1].messages[-1].tool_results[0])"
    )
    content, images = tool
    assert images == [["Figure 1", "image/png"]]
    assert "\nplotted\nFigures created (now closed): <matplotlib Figure 1: 640x480 px" in content
    assert "[image not sent: display() is image/gif, which models are not sent" in content
    finish = kernel.value(
        "str(crush.store.list_messages(crush.current_session_id)[-1].finish_reason)"
    )
    assert finish == "end_turn"  # the refused image did not end the turn

    # The store keeps the prompt whole and each image once, as a file the widget shows.
    stored = kernel.value(
        "[len(m.text) for m in crush.store.list_messages(crush.current_session_id)[:1]]"
    )
    assert stored == [length]
    assert (
        kernel.value("crush.last_view.to_markdown().count('<img src=\"data:image/png;base64,')")
        == 1
    )
    session = kernel.value("crush.current_session_id")
    kernel.run("crush.store.flush()")
    with TranscriptStore(kernel.folder) as reopened:
        first, *_, results, _answer = reopened.list_messages(session)
        assert first.images[0].read()[:8] == b"\x89PNG\r\n\x1a\n"
        assert results.tool_results[0].images[0].read()[:8] == b"\x89PNG\r\n\x1a\n"
        assert len(list(reopened.images_dir.iterdir())) == 2
