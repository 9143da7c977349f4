"""Local image folders and the content-addressed downloader, against a loopback server."""

import json

import pytest

from lmlab.core.errors import LmlabError
from lmlab.deepeval.images import Fetcher, ImageSource, find_local

from .conftest import png_bytes

PNG = png_bytes()


def handler(method, path, body, hit):
    if path == "/ok.png":
        return 200, {"content-type": "image/png"}, PNG
    if path == "/same.png":  # identical bytes under another URL: stored once
        return 200, {"content-type": "image/png"}, PNG
    if path == "/flaky.png":
        return (503, {}, b"busy") if hit == 1 else (200, {"content-type": "image/png"}, PNG)
    if path == "/html":
        return 200, {"content-type": "text/html"}, b"<html>moved</html>"
    if path == "/corrupt.png":
        return 200, {"content-type": "image/png"}, PNG[:40]
    if path == "/big.png":
        return 200, {"content-type": "image/png"}, b"\x89PNG" + b"0" * 5000
    return 404, {}, b"nope"


def test_fetch_cache_and_dead_links(serve, tmp_path):
    srv = serve(handler)
    f = Fetcher(cache=tmp_path / "cache", retries=1, backoff=0.01, max_bytes=2000, timeout=5)
    p = f.fetch(srv.url + "/ok.png")
    assert p is not None and p.read_bytes() == PNG and p.parent.name == "sha256"
    assert f.fetch(srv.url + "/same.png") == p  # content-addressed
    assert f.fetch(srv.url + "/ok.png") == p and srv.hits["/ok.png"] == 1  # cached: no second request
    assert f.fetch(srv.url + "/flaky.png") == p and srv.hits["/flaky.png"] == 2  # retried after a 503
    for bad in ("/html", "/corrupt.png", "/big.png", "/missing.png"):
        assert f.fetch(srv.url + bad) is None
    d = f.dead
    assert "content-type 'text/html'" in d[srv.url + "/html"]
    assert "not a decodable image" in d[srv.url + "/corrupt.png"]
    assert "cap" in d[srv.url + "/big.png"]
    assert "HTTP 404" in d[srv.url + "/missing.png"]
    rep = [json.loads(x) for x in f.dead_report(tmp_path / "dead.jsonl").read_text().splitlines()]
    assert len(rep) == 4
    # a new Fetcher on the same cache finds the file through the index, offline
    srv.close()
    assert Fetcher(cache=tmp_path / "cache").fetch(srv.url + "/ok.png") == p


def test_local_folder(tmp_path):
    (tmp_path / "Img7.JPG").write_bytes(PNG)
    assert find_local(tmp_path, "Img7").name == "Img7.JPG"
    src = ImageSource(folder=tmp_path)
    assert src.get("Img8", "") is None and src.missing == {"Img8": "not in --images folder"}
    with pytest.raises(LmlabError, match="not a folder"):
        ImageSource(folder=tmp_path / "nope")
