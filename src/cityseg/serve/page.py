"""``GET /``: one self-contained page (``page.html``, inline style and script, no external URL) to
try the model: drop or choose a photo, see the class colours over it with an opacity slider, a
legend with each class's share. It talks to ``/v1/model`` and ``/v1/segment`` (a bearer token typed
into it is kept in the browser's localStorage) and may load nothing else (:data:`CSP`)."""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

#: The page may load nothing but itself: its pictures are blob: URLs of the answers it fetched.
CSP = ("default-src 'none'; img-src blob: data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'; "
       "connect-src 'self'; base-uri 'none'; form-action 'none'")


@lru_cache(maxsize=1)
def html() -> str:
    """The page's text (a package resource)."""
    return resources.files("cityseg.serve").joinpath("page.html").read_text(encoding="utf-8")
