"""The HTML page in a real headless browser (Debian's chromium), checked on its screenshot."""

import shutil
import subprocess

import pytest

from lmlab.socratic.tree import PATTERN_COLOURS, PATTERNS
from lmlab.socratic.viewer import dot, html_page, mermaid

CHROMIUM = next((b for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)


def _hex(c):
    return tuple(int(c[i : i + 2], 16) for i in (1, 3, 5))


def _screenshot(html, tmp_path):
    page, png = tmp_path / "page.html", tmp_path / "shot.png"
    page.write_text(html)
    cmd = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--hide-scrollbars",
        "--no-first-run",
        "--user-data-dir=" + str(tmp_path / "profile"),
        f"--screenshot={png}",
        "--window-size=1200,900",
        page.as_uri(),
    ]
    subprocess.run(cmd, capture_output=True, timeout=120)
    assert png.exists(), "chromium wrote no screenshot"
    from PIL import Image

    return Image.open(png).convert("RGB")


def _colour_pixels(img):
    """Pixels within a small distance of each pattern colour."""
    counts = {p: 0 for p in PATTERNS}
    targets = {p: _hex(c) for p, c in PATTERN_COLOURS.items()}
    for (r, g, b), n in ((px, n) for n, px in img.getcolors(maxcolors=1 << 20)):
        for p, (tr, tg, tb) in targets.items():
            if abs(r - tr) + abs(g - tg) + abs(b - tb) <= 12:
                counts[p] += n
    return counts


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary (Debian: apt-get install -y chromium)")
def test_page_renders_offline_with_every_pattern_colour(pvsnp_tree, tmp_path):
    img = _screenshot(html_page(pvsnp_tree, title="P vs NP"), tmp_path)
    assert img.size == (1200, 900)
    colours = _colour_pixels(img)
    assert all(n >= 500 for n in colours.values()), colours  # the legend's swatches
    assert _colour_pixels(img.crop((0, 160, 1200, 900)))["deduction"] >= 500  # turn 1's badge and border
    extrema = img.convert("L").getextrema()
    assert extrema[1] - extrema[0] > 100  # not blank
    # control: an empty page has none of the colours, so the check above can fail
    blank = _colour_pixels(_screenshot("<!doctype html><html><body>nothing</body></html>", tmp_path))
    assert all(n < 50 for n in blank.values()), blank


def test_page_is_self_contained_and_exports_are_well_formed(pvsnp_tree):
    page = html_page(pvsnp_tree, price_in=10.0, price_out=30.0)
    assert "<script src" not in page and "http://" not in page.split("<body>")[0] and "<link" not in page
    assert page.count("<details open") == 97 and page.count('data-pattern="integration"') == 3
    m, d = mermaid(pvsnp_tree), dot(pvsnp_tree)
    assert m.count(":::") == 97 and all(f"classDef {p}" in m for p in PATTERNS)
    assert d.startswith("digraph") and d.count("fillcolor") == 97 and d.count("peripheries=2") == 39
