"""Images: checked and downscaled for the providers, kept once in the store's directory."""

from __future__ import annotations

import base64
import io
import json
import struct
import zlib
from pathlib import Path

import pytest
from PIL import Image

from jupyter_crush.core.images import (
    MAX_BYTES,
    MAX_EDGE,
    MAX_PIXELS,
    ImageError,
    image_from_value,
    image_part,
    images_from_bundle,
)
from jupyter_crush.core.message import ImagePart, Message, Role, TextPart, ToolResultPart
from jupyter_crush.store.transcript import TranscriptStore


def png(width: int, height: int, color: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), color).save(out, "PNG")
    return out.getvalue()


def bmp(width: int, height: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height)).save(out, "BMP")
    return out.getvalue()


def noise_png(width: int, height: int) -> bytes:
    """A PNG that does not compress (random pixels): the worst case for size."""
    import os

    out = io.BytesIO()
    Image.frombytes("RGBA", (width, height), os.urandom(width * height * 4)).save(out, "PNG")
    return out.getvalue()


# -- checking and downscaling --------------------------------------------------------------------


def test_a_small_png_is_kept_as_it_is():
    data = png(64, 48)
    part = image_part(data, "image/png", "tiny")
    assert part.read() == data
    assert (part.width, part.height, part.size, part.media_type) == (64, 48, len(data), "image/png")
    assert part.file.endswith(".png") and len(part.file) == 64 + 4


def test_a_large_image_is_downscaled_within_every_provider_limit():
    part = image_part(png(4000, 3000), "image/png", "big")
    assert max(part.width, part.height) <= MAX_EDGE
    assert part.width * part.height <= MAX_PIXELS
    assert abs(part.width / part.height - 4 / 3) < 0.01  # the aspect ratio is kept
    with Image.open(io.BytesIO(part.read())) as img:
        assert img.size == (part.width, part.height)


def test_a_photo_like_png_too_heavy_even_downscaled_becomes_jpeg():
    part = image_part(noise_png(2000, 1500), "image/png", "noise")
    assert part.media_type == "image/jpeg" and part.file.endswith(".jpg")
    assert part.size <= MAX_BYTES
    assert len(base64.b64encode(part.read())) <= 5 * 1024 * 1024


@pytest.mark.parametrize(
    ("data", "media_type", "says"),
    [
        (b"GIF89a....", "image/gif", "image/gif, which models are not sent"),
        (b"not an image at all", "image/png", "could not be read as image/png"),
        (bmp(10, 10), "image/png", "holds BMP data"),
    ],
)
def test_unknown_or_broken_images_are_refused_with_a_clear_message(data, media_type, says):
    with pytest.raises(ImageError, match=says) as caught:
        image_part(data, media_type, "plot")
    assert "\n" not in str(caught.value) and "PNG or JPEG" in str(caught.value)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` pixels (a decompression bomb's shape)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + body))
        return struct.pack(">I", len(body)) + kind + body + crc

    header = chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    return b"\x89PNG\r\n\x1a\n" + header + chunk(b"IDAT", b"") + chunk(b"IEND", b"")


def test_an_image_over_the_pixel_limit_is_refused_before_decoding():
    with pytest.raises(ImageError, match="too many pixels to decode safely"):
        image_part(png_header_only(50_000, 50_000), "image/png", "huge")


def test_display_bundle_images_and_notes():
    data = png(30, 20)
    bundle = {
        "text/plain": "<Figure>",
        "image/png": base64.b64encode(data).decode(),
        "image/webp": "UklGR...",
        "image/svg+xml": "<svg/>",
    }
    images, notes = images_from_bundle(bundle, "display()")
    assert [i.read() for i in images] == [data]
    assert notes == [
        "[image not sent: display() is image/webp, which models are not sent; "
        "show it as PNG or JPEG (e.g. PIL's img.save(buf, 'PNG'))]"
    ]


def test_values_that_show_images():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4, 3), dpi=100)
    ax.plot([1, 2, 3], [3, 1, 2])
    try:
        from_figure = image_from_value(fig, "{fig}")
        from_axes = image_from_value(ax, "{ax}")
    finally:
        plt.close(fig)
    assert from_figure is not None and from_figure.media_type == "image/png"
    assert from_figure.read() == from_axes.read()
    assert 300 < from_figure.width <= 400 and 200 < from_figure.height <= 300
    pil = image_from_value(Image.new("RGB", (20, 10)), "{img}")
    assert (pil.width, pil.height) == (20, 10)
    assert image_from_value("just text") is None and image_from_value(42) is None


# -- the message part and the store --------------------------------------------------------------


def test_image_part_round_trips_as_a_reference_only():
    part = image_part(png(40, 30), "image/png", "Figure 1")
    message = Message(
        "s",
        Role.TOOL,
        [ToolResultPart("c1", "python", "ok", images=[part]), part],
    )
    data = message.to_dict()
    assert '"data"' not in json.dumps(data)  # the bytes never go into a record
    back = Message.from_dict(json.loads(json.dumps(data)))
    assert back.images == [part, part]
    assert isinstance(back.tool_results[0].images[0], ImagePart)
    assert part.describe() == "[image Figure 1: 40x30 PNG, 1 KB]"


def test_store_writes_each_image_once_and_a_reopened_store_reads_it(tmp_path):
    path = tmp_path / "store"
    data = png(4000, 3000)
    part = image_part(data, "image/png", "Figure 1")
    store = TranscriptStore(path)
    session = store.create_session("plots")
    prompt = Message(session.id, Role.USER, [TextPart("look"), part])
    store.add_message(prompt)
    results = Message(session.id, Role.TOOL, [ToolResultPart("c1", "python", "ok", images=[part])])
    store.add_message(results)
    for _ in range(5):  # rewritten like a tool message that gains results
        store.update_message(results, force=True)
    store.close()

    assert [p.name for p in (path / "images").iterdir()] == [part.file]
    journal = (path / "messages" / f"{session.id}.jsonl").read_text()
    assert base64.b64encode(part.read()[:60]).decode()[:40] not in journal
    lines = journal.splitlines()
    assert len(lines) == 7 and max(map(len, lines)) < 1000  # none carries the image

    reopened = TranscriptStore(path)
    try:
        stored_prompt, stored_results = reopened.list_messages(session.id)
        assert stored_prompt.images[0].read() == part.read()
        assert stored_results.tool_results[0].images[0].read() == part.read()
        assert reopened.get_message(session.id, prompt.id).images[0].read() == part.read()
    finally:
        reopened.close()


def test_a_stored_image_whose_file_is_gone_or_renamed_fails_clearly(tmp_path):
    store = TranscriptStore(tmp_path / "store")
    try:
        session = store.create_session()
        part = image_part(png(8, 8), "image/png")
        store.add_message(Message(session.id, Role.USER, [TextPart("x"), part]))
        (store.images_dir / part.file).unlink()
        stored = store.list_messages(session.id)[0].images[0]
        with pytest.raises(FileNotFoundError):
            stored.read()
        stored.file = "../../etc/passwd"
        with pytest.raises(ValueError, match="not an image file name"):
            stored.read()
    finally:
        store.close()


# -- from the notebook: the python tool and a prompt's placeholders -------------------------------


async def test_python_tool_returns_figures_and_displayed_images_and_says_what_it_refused(ip):
    from jupyter_crush.core.tools import ToolContext
    from jupyter_crush.tools.python import PythonTool

    ip.user_ns["small_png"] = png(30, 20)
    ip.user_ns["bomb_png"] = png_header_only(50_000, 50_000)
    code = (
        "import matplotlib\nmatplotlib.use('Agg')\nimport matplotlib.pyplot as plt\n"
        "from IPython.display import Image, display\n"
        "fig, ax = plt.subplots(figsize=(4, 3))\nax.plot([1, 2, 3], [3, 1, 2])\n"
        "display(Image(data=small_png))\n"
        "display({'image/gif': 'R0lGODlhAQABAAAAACw='}, raw=True)\n"
        "display({'image/png': base64.b64encode(bomb_png).decode()}, raw=True)\n"
        "Image(data=small_png)"  # the same picture as the display: sent once
    )
    ip.user_ns["base64"] = base64
    result = await PythonTool(ip).run({"code": code}, ToolContext("s", "c1"))
    assert not result.is_error, result.content
    assert [i.label for i in result.images] == ["display()", "Figure 1"]
    assert (result.images[0].width, result.images[0].height) == (30, 20)
    figure = result.images[1]
    assert 300 < figure.width <= 400 and 200 < figure.height <= 300
    assert "[image not sent: display() is image/gif, which models are not sent" in result.content
    assert "[image not sent: display() has too many pixels to decode safely" in result.content
    assert "Figures created (now closed): <matplotlib Figure 1: 400x300 px" in result.content


def test_a_figure_named_in_a_prompt_is_attached_and_shown_in_history(ip, crush, tmp_path):
    from test_magics import messages, run

    from jupyter_crush.history import history, session_markdown
    from jupyter_crush.testing import ScriptedModel

    model = ScriptedModel(["A rising line."])
    crush.use_model(model)
    run(ip, "import matplotlib\nmatplotlib.use('Agg')\nimport matplotlib.pyplot as plt")
    run(ip, "fig, ax = plt.subplots(figsize=(4, 3))\nax.plot([1, 2, 3])\nplt.close(fig)")
    run(ip, "%%crush\nWhat does {fig} show?")
    prompt = model.requests[0].messages[-1]
    image = prompt.images[0]
    assert prompt.text == f"What does {image.describe()} (attached below) show?"
    with Image.open(io.BytesIO(image.read())) as img:
        assert img.format == "PNG" and img.size == (image.width, image.height)
    stored = messages(crush)[0]
    assert stored.images[0].read() == image.read()
    rows = history(store=crush.store)  # what crush.history() shows
    paths = rows["images"].iloc[0]
    assert len(paths) == 1 and Path(paths[0]).read_bytes() == image.read()
    session = crush.store.get_session(crush.current_session_id)
    exported = session_markdown(session, messages(crush))
    assert f"]](<{paths[0]}>)" in exported and "![\\[image {fig}: " in exported


def test_a_broken_figure_in_a_prompt_is_one_line_and_the_prompt_still_goes(ip, crush, capsys):
    from test_magics import run

    from jupyter_crush.testing import ScriptedModel

    class Broken:
        def _repr_png_(self):
            return b"not a png"

        def __str__(self):
            return "<broken plot>"

    model = ScriptedModel(["ok"])
    crush.use_model(model)
    ip.user_ns["plot"] = Broken()
    run(ip, "%%crush\nLook at {plot}")
    assert capsys.readouterr().out.splitlines()[0] == (
        "{plot}: image not attached: {plot} could not be read as image/png "
        "(its bytes are no image format known); show it as a PNG or JPEG image"
    )
    assert model.requests[0].messages[-1].text == "Look at <broken plot>"


def test_an_update_that_adds_an_image_is_written_at_once_with_its_file(tmp_path):
    store = TranscriptStore(tmp_path / "store", flush_interval=3600)  # coalesce everything
    try:
        session = store.create_session()
        results = Message(session.id, Role.TOOL, [ToolResultPart("c1", "python", "ok")])
        store.add_message(results)
        part = image_part(png(16, 16), "image/png", "Figure 1")
        results.parts.append(ToolResultPart("c2", "python", "drawn", images=[part]))
        store.update_message(results)  # not forced, within the flush interval
        journal = store.journal_path(session.id).read_text().splitlines()
        assert part.file in journal[-1]  # the record is on disk, not pending...
        assert (store.images_dir / part.file).read_bytes() == part.read()  # ...with its file
    finally:
        store.close()
