"""Images for DeepEval items: a local folder matched by Image_ID, or download by URL into a content-addressed cache.

Downloads use httpx with a connect/read timeout, bounded retries with backoff (on transport errors, 429 and 5xx),
a size cap enforced while streaming, a content-type check and full Pillow decoding. Files are stored once under
their SHA-256 (`<cache>/sha256/<hex>.<ext>`) with a url -> digest index; a failed URL goes to the dead-link report
instead of stopping the run."""

from __future__ import annotations

import hashlib
import io
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..core.errors import LmlabError
from ..core.paths import atomic_write_text, cache_dir

EXTS = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp")


def find_local(folder: str | Path, image_id: str) -> Path | None:
    """`<folder>/<Image_ID>.<ext>` for any usual image extension (case-insensitive), else None."""
    folder = Path(folder)
    for ext in EXTS:
        for cand in (folder / f"{image_id}{ext}", folder / f"{image_id}{ext.upper()}"):
            if cand.is_file():
                return cand
    return None


def verify_image(data: bytes) -> tuple[str, tuple[int, int]]:
    """Decode fully with Pillow; returns (format, size). Raises ValueError when the bytes are not an image."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            im.verify()
        with Image.open(io.BytesIO(data)) as im:  # verify() leaves the image unusable; decode a fresh copy
            im.load()
            return str(im.format), im.size
    except Exception as e:  # Pillow raises many types for bad data
        raise ValueError(f"not a decodable image ({type(e).__name__})") from None


@dataclass
class Fetcher:
    cache: Path = field(default_factory=lambda: cache_dir("deepeval", "images"))
    timeout: float = 20.0
    retries: int = 2
    max_bytes: int = 20 * 1024 * 1024
    backoff: float = 0.5
    dead: dict[str, str] = field(default_factory=dict)  # url -> reason

    def __post_init__(self) -> None:
        self.cache = Path(self.cache)
        (self.cache / "sha256").mkdir(parents=True, exist_ok=True)
        self._index_path = self.cache / "index.json"
        self.index: dict[str, str] = json.loads(self._index_path.read_text()) if self._index_path.exists() else {}

    def path_for(self, url: str) -> Path | None:
        name = self.index.get(url)
        p = self.cache / "sha256" / name if name else None
        return p if p is not None and p.exists() else None

    def fetch(self, url: str) -> Path | None:
        """The cached file for `url` (downloading it if needed), or None with the reason in `self.dead`."""
        hit = self.path_for(url)
        if hit is not None:
            return hit
        try:
            data = self._download(url)
            fmt, _ = verify_image(data)
        except ValueError as e:
            self.dead[url] = str(e)
            return None
        digest = hashlib.sha256(data).hexdigest()
        path = self.cache / "sha256" / f"{digest}.{fmt.lower()}"
        if not path.exists():
            tmp = path.with_suffix(".part")
            tmp.write_bytes(data)
            tmp.replace(path)
        self.index[url] = path.name
        atomic_write_text(self._index_path, json.dumps(self.index, indent=0))
        return path

    def _download(self, url: str) -> bytes:
        import httpx

        last = "unknown error"
        for attempt in range(1 + self.retries):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                with httpx.Client(timeout=self.timeout, follow_redirects=True) as client:
                    with client.stream("GET", url) as r:
                        if r.status_code == 429 or r.status_code >= 500:
                            last = f"HTTP {r.status_code}"
                            continue
                        if r.status_code != 200:
                            raise ValueError(f"HTTP {r.status_code}")
                        ctype = r.headers.get("content-type", "").split(";")[0].strip().lower()
                        if not ctype.startswith("image/"):
                            raise ValueError(f"content-type {ctype or 'missing'!r} is not an image")
                        if int(r.headers.get("content-length") or 0) > self.max_bytes:
                            raise ValueError(f"larger than the {self.max_bytes}-byte cap")
                        buf = bytearray()
                        for chunk in r.iter_bytes():
                            buf += chunk
                            if len(buf) > self.max_bytes:
                                raise ValueError(f"larger than the {self.max_bytes}-byte cap")
                        return bytes(buf)
            except httpx.HTTPError as e:
                last = type(e).__name__
        raise ValueError(f"{last} after {1 + self.retries} attempts")

    def dead_report(self, path: str | Path) -> Path:
        rows = [{"url": u, "reason": r} for u, r in sorted(self.dead.items())]
        atomic_write_text(Path(path), "".join(json.dumps(r) + "\n" for r in rows))
        return Path(path)


class ImageSource:
    """Where a run's images come from: `folder` (matched by Image_ID) first, then the URL cache when `download`."""

    def __init__(self, folder: str | Path | None = None, download: bool = False, fetcher: Fetcher | None = None):
        if folder is not None and not Path(folder).is_dir():
            raise LmlabError(f"--images {folder}: not a folder", hint="pass a folder of <Image_ID>.jpg/.png files")
        self.folder = Path(folder) if folder is not None else None
        self.fetcher = fetcher or (Fetcher() if download else None)
        self.missing: dict[str, str] = {}

    @property
    def available(self) -> bool:
        return self.folder is not None or self.fetcher is not None

    def get(self, image_id: str, url: str) -> Path | None:
        if self.folder is not None:
            p = find_local(self.folder, image_id)
            if p is not None:
                return p
        if self.fetcher is not None and url:
            p = self.fetcher.fetch(url)
            if p is not None:
                return p
            self.missing[image_id] = self.fetcher.dead.get(url, "download failed")
            return None
        self.missing[image_id] = "not in --images folder"
        return None
