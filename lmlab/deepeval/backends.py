"""Answer backends for DeepEval: text-only (lmlab's native engine or any OpenAI-compatible endpoint), OpenAI-
compatible vision chat (the image as a base64 data URL) and local vision-language models through transformers
(`AutoModelForImageTextToText` + `AutoProcessor` with the model's own chat template: LLaVA, Qwen2-VL, Idefics3 /
SmolVLM...). Decoding is greedy by default, so a run is deterministic."""

from __future__ import annotations

import base64
import mimetypes
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.engine import SamplingParams
from ..core.errors import LmlabError


@dataclass
class Request:
    text: str
    image: Path | None = None


class TextAnswerer:
    """Any lmlab `Backend` (LocalBackend, OpenAIBackend); images are not sent (text-only conditions)."""

    vision = False

    def __init__(self, backend: Any):
        self.backend = backend
        self.name = backend.name

    def answer(self, reqs: Sequence[Request], params: SamplingParams) -> list[str]:
        return [c.text for c in self.backend.complete([[{"role": "user", "content": r.text}] for r in reqs], params)]


def data_url(path: str | Path) -> str:
    """`data:<mime>;base64,...` for an image file (mime from Pillow's format, else the suffix)."""
    from PIL import Image

    path = Path(path)
    with Image.open(path) as im:
        mime = Image.MIME.get(im.format or "", None)
    mime = mime or mimetypes.guess_type(path.name)[0] or "image/jpeg"
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode()}"


def vision_messages(req: Request) -> list[dict[str, Any]]:
    """OpenAI chat content parts: the image (data URL) then the question text."""
    parts: list[dict[str, Any]] = []
    if req.image is not None:
        parts.append({"type": "image_url", "image_url": {"url": data_url(req.image)}})
    parts.append({"type": "text", "text": req.text})
    return [{"role": "user", "content": parts}]


class OpenAIVisionAnswerer:
    """OpenAI-compatible vision chat (OpenAI, vLLM, SGLang) through lmlab's HTTP backend (its retries, timeouts
    and concurrency)."""

    vision = True

    def __init__(self, backend: Any):
        self.backend = backend
        self.name = backend.name

    def answer(self, reqs: Sequence[Request], params: SamplingParams) -> list[str]:
        return [c.text for c in self.backend.complete([vision_messages(r) for r in reqs], params)]


def hf_messages(req: Request) -> list[dict[str, Any]]:
    """transformers' multimodal chat format: an image placeholder part then the text."""
    content: list[dict[str, Any]] = [{"type": "image"}] if req.image is not None else []
    content.append({"type": "text", "text": req.text})
    return [{"role": "user", "content": content}]


class HFVisionAnswerer:
    """A local VLM through transformers; the prompt comes from the processor's chat template."""

    vision = True

    def __init__(self, model: Any, processor: Any, name: str = "hf", device: str = "cpu"):
        self.model, self.processor, self.name, self.device = model, processor, name, device

    @classmethod
    def load(cls, name: str, device: str = "cpu", dtype: str = "auto") -> HFVisionAnswerer:
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        try:
            proc = AutoProcessor.from_pretrained(name)
            td = {"auto": "auto", "float32": torch.float32, "bfloat16": torch.bfloat16}.get(dtype, "auto")
            model = AutoModelForImageTextToText.from_pretrained(name, dtype=td).to(device).eval()
        except ImportError as e:  # e.g. Qwen2-VL / SmolVLM2 processors carry a video processor that needs torchvision
            msg = " ".join(str(e).split())[:200]
            raise LmlabError(
                f"cannot load vision model {name!r}: {msg}", hint="pip install the missing package (often torchvision)"
            ) from None
        except (OSError, ValueError) as e:
            raise LmlabError(f"cannot load vision model {name!r}: {str(e).splitlines()[0][:200]}") from None
        return cls(model, proc, name, device)

    def prompt_text(self, req: Request) -> str:
        return self.processor.apply_chat_template(hf_messages(req), add_generation_prompt=True, tokenize=False)

    def answer(self, reqs: Sequence[Request], params: SamplingParams) -> list[str]:
        import torch
        from PIL import Image

        out = []
        for r in reqs:  # one at a time: image sizes (and so token counts) differ per item
            images = None
            if r.image is not None:
                with Image.open(r.image) as im:
                    images = [im.convert("RGB")]
            inputs = self.processor(text=[self.prompt_text(r)], images=images, return_tensors="pt").to(self.device)
            kw: dict[str, Any] = {"max_new_tokens": params.max_new_tokens, "do_sample": params.temperature > 0}
            if params.temperature > 0:
                kw.update(temperature=params.temperature, top_p=params.top_p)
            with torch.inference_mode():
                ids = self.model.generate(**inputs, **kw)
            new = ids[0, inputs["input_ids"].shape[1] :]
            out.append(self.processor.decode(new, skip_special_tokens=True))
        return out


def make_answerer(
    backend: str,
    model: str,
    *,
    vision: bool = False,
    device: str = "cpu",
    api_key: str | None = None,
    retries: int = 4,
) -> Any:
    """local -> native engine (text); hf -> transformers VLM; openai | http(s)://... -> HTTP, vision with --vision."""
    from ..core.backends import LocalBackend, OpenAIBackend

    if backend == "local":
        if vision:
            raise LmlabError("the native engine is text-only", hint="use --backend hf or an http(s) URL for images")
        return TextAnswerer(LocalBackend(model, device=device))
    if backend == "hf":
        return HFVisionAnswerer.load(model, device=device)
    if backend == "openai" or backend.startswith(("http://", "https://")):
        base = None if backend == "openai" else backend
        be = OpenAIBackend(model, base_url=base, api_key=api_key, max_retries=retries)
        return OpenAIVisionAnswerer(be) if vision else TextAnswerer(be)
    raise LmlabError(f"unknown backend {backend!r}", hint="use local, hf, openai or an http(s):// base URL")
