"""What a figure costs on its way to the model, and what the transcript keeps of it.

    .venv/bin/python benchmarks/bench_images.py [--quick]

- a figure named in a prompt, drawn at a dpi that fits rather than shrunk after;
- bytes and pixels of matplotlib figures (the inline default, a large high-dpi one) and of a
  photo-like image, before and after :func:`jupyter_crush.core.images.image_part`, and the time
  it takes;
- journal size of a session whose tool message, carrying one figure, is rewritten once per
  tool result (as the agent does): with the image file referenced from the record, next to
  the same records carrying the image inline as base64 (what storing the bytes in the
  message would cost);
- characters of a request built from a prompt naming a 5 MB value, with the cap of
  :mod:`jupyter_crush.core.limits`, next to the uncapped size.

The whole run takes seconds, so ``--quick`` (the suite's smoke mode) runs all of it.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from PIL import Image

from jupyter_crush.core.images import image_from_value, image_part
from jupyter_crush.core.message import Message, Role, TextPart, ToolResultPart
from jupyter_crush.providers.openai import build_messages
from jupyter_crush.store.transcript import TranscriptStore

REWRITES = 10


def make_figure(width_in: float, height_in: float, dpi: int):
    fig, ax = plt.subplots(figsize=(width_in, height_in), dpi=dpi)
    for k in range(5):
        ax.plot([x * (k + 1) ** 0.5 for x in range(200)], label=f"series {k}")
    ax.legend()
    ax.set_title("five series")
    return fig


def figure_png(width_in: float, height_in: float, dpi: int) -> bytes:
    fig = make_figure(width_in, height_in, dpi)
    out = io.BytesIO()
    fig.savefig(out, format="png")
    plt.close(fig)
    return out.getvalue()


def photo_png(width: int, height: int) -> bytes:
    out = io.BytesIO()
    Image.frombytes("RGB", (width, height), os.urandom(width * height * 3)).save(out, "PNG")
    return out.getvalue()


def downscale_rows() -> list[tuple[str, bytes]]:
    return [
        ("inline default figure 6.4x4.8 in @ 100 dpi", figure_png(6.4, 4.8, 100)),
        ("large figure 16x10 in @ 200 dpi", figure_png(16, 10, 200)),
        ("photo-like noise 3000x2000 px", photo_png(3000, 2000)),
    ]


def journal_sizes(part) -> tuple[int, int]:
    with tempfile.TemporaryDirectory() as tmp:
        store = TranscriptStore(Path(tmp) / "store")
        session = store.create_session()
        results = Message(session.id, Role.TOOL)
        for n in range(REWRITES):
            results.parts.append(
                ToolResultPart(f"c{n}", "python", "ok", images=[part] if n == 0 else [])
            )
            store.update_message(results, force=True)
        store.close()
        journal = (Path(tmp) / "store" / "messages" / f"{session.id}.jsonl").stat().st_size
    inline = len(json.dumps({"data": base64.b64encode(part.read()).decode()})) * REWRITES
    return journal, journal + inline


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the same run (it takes seconds)")
    parser.parse_args()
    print("figure / image                              before        after        time")
    parts = []
    for name, data in downscale_rows():
        with Image.open(io.BytesIO(data)) as img:
            size = img.size
        start = time.perf_counter()
        part = image_part(data, "image/png", name)
        took = time.perf_counter() - start
        parts.append(part)
        print(
            f"{name:42s} {len(data) / 1024:7.0f} KB {size[0]}x{size[1]}  "
            f"{part.size / 1024:6.0f} KB {part.width}x{part.height} {part.media_type}  "
            f"{took * 1000:5.0f} ms"
        )
    fig = make_figure(16, 10, 200)
    start = time.perf_counter()
    drawn = image_from_value(fig, "{fig}")
    took = time.perf_counter() - start
    plt.close(fig)
    print(
        f"{'the large figure named in a prompt, {fig}':42s} drawn to fit: "
        f"{drawn.size / 1024:.0f} KB {drawn.width}x{drawn.height}  {took * 1000:5.0f} ms"
    )
    referenced, inline = journal_sizes(parts[1])
    print(
        f"\njournal of a tool message rewritten {REWRITES} times with one figure "
        f"({parts[1].size / 1024:.0f} KB): {referenced / 1024:.1f} KB with the file reference, "
        f"{inline / 1024:.0f} KB with the image inline"
    )
    big = "0123456789abcdef" * (5 * 1024 * 1024 // 16)
    prompt = Message("s", Role.USER, [TextPart(f"What happened? {big}")])
    wire = json.dumps(build_messages([prompt], None))
    print(
        f"request for a prompt naming a 5 MB value: {len(wire):,} characters "
        f"(uncapped: {len(prompt.text):,})"
    )


if __name__ == "__main__":
    main()
