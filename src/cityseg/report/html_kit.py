"""The HTML kit of ``cityseg report``: escaping, tables, notes, inlined pictures, the page itself.

The page needs nothing but itself: pictures are inlined as ``data:image/png;base64,`` URIs, the
style sheet and the one small script are inline, and a Content-Security-Policy forbids the
browser to load anything else. Every piece of text from the folder is escaped with
:func:`html.escape`.
"""

from __future__ import annotations

import base64
import html
import io
import math
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from cityseg.errors import CitysegError

#: Folders of a run never searched for pictures or scores (large or binary).
SKIP_DIRS = {"checkpoints", "tb", "trials", "__pycache__"}
#: Pictures inlined at most per section (a folder of thousands of predictions stays a readable page).
MAX_PICTURES = 12
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 2rem auto; max-width: 1200px;
       padding: 0 1rem; color: #222; line-height: 1.4; }
h1 { font-size: 1.6rem; margin-bottom: 0.2rem; } h2 { border-bottom: 1px solid #ccc; margin-top: 2.2rem; }
.meta { color: #666; font-size: 0.9rem; }
table { border-collapse: collapse; margin: 0.8rem 0; font-size: 0.85rem; } .scroll { overflow-x: auto; }
th, td { border: 1px solid #ddd; padding: 0.2rem 0.5rem; text-align: right; }
th { background: #f3f3f3; } td.text, th.text { text-align: left; }
tr.best td { background: #fff6d5; font-weight: 600; }
.swatch { display: inline-block; width: 0.9em; height: 0.9em; border: 1px solid #555; margin-right: 0.4em;
          vertical-align: -0.1em; }
.note { background: #f5f7fa; border-left: 4px solid #8aa; padding: 0.5rem 0.8rem; }
figure { margin: 1rem 0; } figcaption { color: #555; font-size: 0.85rem; }
img { max-width: 100%; height: auto; border: 1px solid #eee; }
pre { background: #f7f7f7; padding: 0.8rem; overflow-x: auto; font-size: 0.8rem; }
"""

# Counts the pictures that decoded, for a look with a headless browser (body[data-images-loaded]).
_SCRIPT = """
window.addEventListener("load", function () {
  var images = document.images, ok = 0;
  for (var i = 0; i < images.length; i++) { if (images[i].complete && images[i].naturalWidth > 0) { ok++; } }
  document.body.setAttribute("data-images-loaded", ok + "/" + images.length);
});
"""

_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"


# --- small HTML pieces -------------------------------------------------------------------------


def esc(value: Any) -> str:
    """Any value as escaped HTML text (quotes too, so it is safe inside attributes)."""
    return html.escape(str(value), quote=True)


def fmt(value: Any, digits: int = 4) -> str:
    """A cell's text: floats to ``digits`` significant digits, None/NaN as an en dash."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "\u2013"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1e5 else f"{value:,.0f}"
    return str(value)


def table(header: Sequence[str], rows: Iterable[Sequence[Any]], table_id: str, best_row: int | None = None,
          text_columns: Sequence[int] = (0,)) -> str:
    """An HTML table; cells are escaped unless given as :class:`Raw`; row ``best_row`` highlighted."""

    def cell(tag: str, j: int, value: Any) -> str:
        klass = ' class="text"' if j in text_columns else ""
        return f"<{tag}{klass}>{value.html if isinstance(value, Raw) else esc(fmt(value))}</{tag}>"

    head = "".join(cell("th", j, h) for j, h in enumerate(header))
    body = []
    for i, row in enumerate(rows):
        klass = ' class="best"' if i == best_row else ""
        body.append(f"<tr{klass}>" + "".join(cell("td", j, v) for j, v in enumerate(row)) + "</tr>")
    return (f'<div class="scroll"><table id="{esc(table_id)}"><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table></div>')


class Raw:
    """A table cell that is already HTML (built from escaped parts)."""

    def __init__(self, html_text: str) -> None:
        self.html = html_text


def note(text: str) -> str:
    """A grey box of escaped text: what the folder lacks, how numbers were derived."""
    return f'<p class="note">{esc(text)}</p>'


def png_bytes_ok(data: bytes) -> bool:
    """True when ``data`` is a PNG Pillow can decode (a half-written or corrupt file is not inlined)."""
    if not data.startswith(PNG_SIGNATURE):
        return False
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
        return True
    except Exception:  # Pillow raises many types for broken files
        return False


def figure(data: bytes, alt: str, caption: str) -> str:
    """An inlined PNG (``data:image/png;base64,...``) with its caption."""
    uri = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
    return f'<figure><img src="{uri}" alt="{esc(alt)}"><figcaption>{esc(caption)}</figcaption></figure>'


def png_figure(path: Path, caption: str, root: Path) -> str:
    """:func:`figure` of a PNG file of the folder, or a note when it cannot be read or decoded."""
    name = rel(path, root)
    try:
        data = path.read_bytes()
    except OSError as exc:
        return note(f"{name}: cannot be read ({exc.strerror or exc})")
    if not png_bytes_ok(data):
        return note(f"{name}: not a readable PNG (half-written or damaged); not shown")
    return figure(data, alt=name, caption=caption or name)


def drawn_figure(draw: Callable[[Path], Any], alt: str, caption: str) -> str:
    """A picture drawn now by ``draw(path)`` (a :mod:`cityseg.viz` function) into a temporary file, inlined."""
    with tempfile.TemporaryDirectory(prefix="cityseg-report-") as tmp:
        path = Path(tmp) / "figure.png"
        draw(path)
        return figure(path.read_bytes(), alt=alt, caption=caption)


def rel(path: Path, root: Path) -> str:
    """``path`` relative to ``root`` when it lies inside, else as it is."""
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def files_under(root: Path, pattern: str = "*.png", exclude: Iterable[Path] = ()) -> list[Path]:
    """Files under ``root`` matching ``pattern``, sorted, outside :data:`SKIP_DIRS` and hidden folders."""
    excluded = {p.resolve() for p in exclude}
    found = []
    for path in sorted(root.rglob(pattern)):
        parts = path.relative_to(root).parts[:-1]
        if any(p in SKIP_DIRS or p.startswith(".") for p in parts) or path.name.startswith("."):
            continue
        if path.is_file() and path.resolve() not in excluded:
            found.append(path)
    return found


def picture_list(paths: list[Path], root: Path, what: str) -> str:
    """Figures of up to :data:`MAX_PICTURES` PNGs, with a note of how many more there are."""
    parts = [png_figure(p, rel(p, root), root) for p in paths[:MAX_PICTURES]]
    if len(paths) > MAX_PICTURES:
        parts.append(note(f"{len(paths) - MAX_PICTURES} more {what} in the folder are not shown"))
    return "\n".join(parts)


def read_text(path: Path) -> str:
    """A text file of the folder (undecodable bytes replaced), or CitysegError naming it."""
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise CitysegError(f"{path}: cannot read ({exc.strerror or exc})") from None


def read_yaml_text(text: str) -> dict[str, Any]:
    """The mapping of a YAML text, or {} when it is not one (the page still shows the text)."""
    import yaml

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        return {}
    return data if isinstance(data, dict) else {}


def page(title: str, subtitle: str, sections: list[tuple[str, str, str]]) -> str:
    """The whole document: ``sections`` are ``(id, heading, body html)`` (the section's element id is
    ``s-<id>``, tables keep the plain ids), with a table of contents."""
    toc = " &middot; ".join(f'<a href="#s-{esc(sid)}">{esc(heading)}</a>' for sid, heading, _ in sections)
    body = "\n".join(f'<section id="s-{esc(sid)}"><h2>{esc(heading)}</h2>\n{html_body}</section>'
                     for sid, heading, html_body in sections)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{esc(title)}</title>\n<style>{_STYLE}</style>\n<script>{_SCRIPT}</script>\n</head>\n<body>\n"
        f"<h1>{esc(title)}</h1>\n<p class=\"meta\">{esc(subtitle)}</p>\n<nav>{toc}</nav>\n{body}\n</body>\n</html>\n"
    )


def generated(folder: Path) -> str:
    """The page's subtitle: the folder and when its report was written."""
    return f"{folder.resolve()} \u2013 report written {time.strftime('%Y-%m-%d %H:%M:%S %Z')} by cityseg report"


def config_section(path: Path, label: str) -> str:
    """A YAML file as a preformatted block (escaped), or a note when it is missing."""
    if not path.is_file():
        return note(f"no {label} in this folder")
    return f"<pre>{esc(read_text(path))}</pre>"
