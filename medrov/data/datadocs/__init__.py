"""Great Expectations Data Docs that open offline.

The GX pages load Bootstrap, jQuery, bootstrap-table, Font Awesome and Vega from CDNs and a logo from S3 whose URL
carries the data context id: opened in a hospital browser, a report about medical data would phone home. This
module rewrites a built site in place: external scripts and stylesheets go, a local stylesheet and a small script
(``offline.css``, ``offline.js``, both shipped here) stand in for them, the remote logo becomes GX's own local copy,
external links lose their ``href``, and the context id is scrubbed.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

ASSETS = Path(__file__).parent
_EXTERNAL = r"""(?:https?:)?//[^"'\s>)]*"""
_SCRIPT = re.compile(rf"""<script\b[^>]*\bsrc\s*=\s*["']{_EXTERNAL}["'][^>]*>\s*</script>\s*""", re.I)
_LINK = re.compile(rf"""<link\b[^>]*\bhref\s*=\s*["']{_EXTERNAL}["'][^>]*>\s*""", re.I)
_IMG_SRC = re.compile(rf"""(<img\b[^>]*?\bsrc\s*=\s*["']){_EXTERNAL}(["'])""", re.I)
_CSS_URL = re.compile(rf"""url\(\s*["']?{_EXTERNAL}["']?\s*\)""", re.I)
_ANCHOR_HREF = re.compile(rf"""(<a\b[^>]*?)\s\bhref\s*=\s*["']{_EXTERNAL}["']""", re.I)
_LOCAL_STATIC = re.compile(r"""(\b(?:src|href)\s*=\s*["'])(?:\.\./)*static/""", re.I)
_CONTEXT_PARAM = re.compile(r"[?&]?dataContextId=[0-9a-fA-F-]+", re.I)
LOGO = "static/images/logo-long.png"  # GX ships the same logo it links on S3


def make_offline(site: str | Path, context_id: str | None = None) -> int:
    """Rewrite every page and stylesheet of a Data Docs site so that opening it makes no external request.

    Args:
        site: the site folder (holding ``index.html`` and ``static/``).
        context_id: the GX data context id, removed wherever it appears.

    Returns:
        The number of files rewritten.
    """
    site = Path(site)
    (site / "static" / "styles").mkdir(parents=True, exist_ok=True)
    (site / "static" / "scripts").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(ASSETS / "offline.css", site / "static" / "styles" / "medrov_offline.css")
    shutil.copyfile(ASSETS / "offline.js", site / "static" / "scripts" / "medrov_offline.js")
    changed = 0
    for path in sorted([*site.rglob("*.html"), *site.rglob("*.css")]):
        text = path.read_text(encoding="utf-8")
        up = "../" * (len(path.relative_to(site).parts) - 1)
        new = _rewrite(text, up, path.suffix == ".html", context_id)
        if new != text:
            path.write_text(new, encoding="utf-8")
            changed += 1
    return changed


def _rewrite(text: str, up: str, html: bool, context_id: str | None) -> str:
    """One page or stylesheet; ``up`` leads from its folder back to the site root."""
    text = _CONTEXT_PARAM.sub("", text)
    if context_id:
        text = text.replace(context_id, "")
    # a stylesheet in static/styles/ reaches the logo at ../images/, whatever `up` says for pages
    logo = "../images/logo-long.png" if not html else up + LOGO
    text = _CSS_URL.sub(f"url('{logo}')", text)
    if not html:
        return text
    text = _SCRIPT.sub("", text)
    text = _LINK.sub("", text)
    text = _IMG_SRC.sub(lambda m: f"{m.group(1)}{up}{LOGO}{m.group(2)}", text)
    text = _ANCHOR_HREF.sub(r"\1", text)
    # GX points the 4-deep validation pages at ../../../static (one level short): name the site root exactly
    text = _LOCAL_STATIC.sub(lambda m: f"{m.group(1)}{up}static/", text)
    local = (
        f'<link rel="stylesheet" href="{up}static/styles/medrov_offline.css">'
        f'<script src="{up}static/scripts/medrov_offline.js"></script>'
    )
    if "medrov_offline.js" not in text:
        text = re.sub(r"<head[^>]*>", lambda m: m.group(0) + local, text, count=1, flags=re.I)
    return text
