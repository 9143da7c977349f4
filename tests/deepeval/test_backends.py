"""Vision backends: OpenAI-compatible chat with a base64 data URL (fake server on 127.0.0.1) and a transformers
VLM built offline from a tiny random LLaVA config with the embedded SmolLM2 tokenizer."""

import base64
import json

import pytest
import torch

from lmlab.core.engine import SamplingParams
from lmlab.core.errors import LmlabError
from lmlab.deepeval.backends import HFVisionAnswerer, Request, hf_messages, make_answerer

from .conftest import png_bytes


def chat_handler(method, path, body, hit):
    assert path == "/v1/chat/completions"
    reply = {
        "id": "x",
        "object": "chat.completion",
        "created": 0,
        "model": "fake-vlm",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "(B)"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
    }
    return 200, {"content-type": "application/json"}, json.dumps(reply).encode()


def test_openai_vision_sends_data_url(serve, tmp_path):
    srv = serve(chat_handler)
    img = tmp_path / "Img1.png"
    img.write_bytes(png_bytes())
    ans = make_answerer(srv.url + "/v1", "fake-vlm", vision=True, retries=0)
    out = ans.answer([Request("Which? (A) x (B) y", img)], SamplingParams(max_new_tokens=8))
    assert out == ["(B)"]
    body = srv.requests[0]
    parts = body["messages"][0]["content"]
    assert parts[0]["type"] == "image_url" and parts[1] == {"type": "text", "text": "Which? (A) x (B) y"}
    url = parts[0]["image_url"]["url"]
    assert url.startswith("data:image/png;base64,")
    assert base64.b64decode(url.split(",", 1)[1]) == img.read_bytes()
    assert body["temperature"] == 0.0 and body["model"] == "fake-vlm"


def test_unknown_backend_and_text_only_vision():
    with pytest.raises(LmlabError, match="unknown backend 'tgi'"):
        make_answerer("tgi", "m")
    with pytest.raises(LmlabError, match="text-only"):
        make_answerer("local", "smollm2-135m-instruct", vision=True)


@pytest.fixture(scope="module")
def tiny_vlm(tmp_path_factory):
    from transformers import (
        AutoModelForImageTextToText,
        AutoTokenizer,
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaProcessor,
    )

    from lmlab.core.loader import resolve

    tok = AutoTokenizer.from_pretrained(str(resolve("smollm2-135m-instruct")))
    tok.add_special_tokens({"additional_special_tokens": ["<image>"]})
    tc = LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256,
    )  # fmt: skip
    vc = CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=32, patch_size=8
    )
    cfg = LlavaConfig(text_config=tc, vision_config=vc, image_token_index=tok.convert_tokens_to_ids("<image>"))
    torch.manual_seed(0)
    model = AutoModelForImageTextToText.from_config(cfg).eval()
    tpl = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% for c in m['content'] %}{% if c['type'] == 'image' %}"
        "<image>\n{% else %}{{ c['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    ip = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    proc = LlavaProcessor(
        image_processor=ip, tokenizer=tok, patch_size=8, vision_feature_select_strategy="default", chat_template=tpl,
        num_additional_image_tokens=1,
    )  # fmt: skip
    path = tmp_path_factory.mktemp("tinyvlm")
    model.save_pretrained(path)
    proc.save_pretrained(path)
    return path


def test_hf_vision_backend_matches_direct_generate(tiny_vlm, tmp_path):
    from PIL import Image

    img = tmp_path / "Img3.png"
    img.write_bytes(png_bytes(size=(40, 50)))
    ans = HFVisionAnswerer.load(str(tiny_vlm))
    req = Request("Which? (A) x (B) y", img)
    text = ans.prompt_text(req)
    assert text == "<|im_start|>user\n<image>\nWhich? (A) x (B) y<|im_end|>\n<|im_start|>assistant\n"
    out = ans.answer([req], SamplingParams(max_new_tokens=6))
    # reference: the processor + generate called by hand on the same inputs
    inp = ans.processor(text=[text], images=[Image.open(img).convert("RGB")], return_tensors="pt")
    assert int((inp["input_ids"] == ans.model.config.image_token_index).sum()) == 16  # (32/8)^2 patches
    ref = ans.model.generate(**inp, max_new_tokens=6, do_sample=False)
    assert out == [ans.processor.decode(ref[0, inp["input_ids"].shape[1] :], skip_special_tokens=True)]
    assert hf_messages(Request("q"))[0]["content"] == [{"type": "text", "text": "q"}]


def test_hf_vision_missing_model(tmp_path):
    with pytest.raises(LmlabError, match="cannot load vision model"):
        HFVisionAnswerer.load(str(tmp_path / "none"))
