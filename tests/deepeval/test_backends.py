"""Vision backends: OpenAI-compatible chat with a base64 data URL (fake server on 127.0.0.1) and transformers VLMs
built offline from tiny random LLaVA, Qwen2-VL and Idefics3 (SmolVLM v1) configs with the embedded SmolLM2 tokenizer
plus each family's special tokens, image processor and chat template."""

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


def _smollm_tokenizer(extra):
    from transformers import AutoTokenizer

    from lmlab.core.loader import resolve

    tok = AutoTokenizer.from_pretrained(str(resolve("smollm2-135m-instruct")))
    tok.add_special_tokens({"additional_special_tokens": extra})
    return tok


def _tiny_text(tok):
    return dict(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )  # fmt: skip


def _matches_direct_generate(ans, img, image_token_id):
    """The backend's answer equals the processor + greedy generate called by hand; returns the inputs."""
    from PIL import Image

    req = Request("Which? (A) x (B) y", img)
    out = ans.answer([req], SamplingParams(max_new_tokens=6))
    inp = ans.processor(text=[ans.prompt_text(req)], images=[Image.open(img).convert("RGB")], return_tensors="pt")
    ref = ans.model.generate(**inp, max_new_tokens=6, do_sample=False)
    new = ref[0, inp["input_ids"].shape[1] :]
    assert len(new) > 0 and out == [ans.processor.decode(new, skip_special_tokens=True)]
    assert int((inp["input_ids"] == image_token_id).sum()) > 0
    return inp


QWEN_TPL = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% for c in m['content'] %}{% if c['type'] == 'image' %}"
    "<|vision_start|><|image_pad|><|vision_end|>{% else %}{{ c['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture(scope="module")
def tiny_qwen2vl(tmp_path_factory):
    """A tiny random Qwen2-VL (M-RoPE text model, windowless ViT with 2x2 patch merging), saved with its tokenizer,
    PIL image processor and chat template. transformers' Qwen2VLProcessor insists on a video processor, which needs
    torchvision; without it the processor is built in memory with no video processor (images only)."""
    from transformers import AutoModelForImageTextToText, Qwen2VLConfig, Qwen2VLImageProcessorPil, Qwen2VLProcessor

    special = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
    tok = _smollm_tokenizer(special)
    ids = dict(zip(special, tok.convert_tokens_to_ids(special)))
    text = _tiny_text(tok) | {"rope_parameters": {"rope_type": "default", "mrope_section": [1, 1, 2]}}
    vision = dict(depth=2, embed_dim=32, hidden_size=32, num_heads=4, patch_size=14, spatial_merge_size=2)
    cfg = Qwen2VLConfig(
        text_config=text, vision_config=vision, image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )  # fmt: skip
    torch.manual_seed(0)
    model = AutoModelForImageTextToText.from_config(cfg).eval()
    ip = Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=56 * 56)
    path = tmp_path_factory.mktemp("tinyqwen2vl")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    ip.save_pretrained(path)
    (path / "processor_config.json").write_text(json.dumps({"processor_class": "Qwen2VLProcessor"}))
    (path / "chat_template.jinja").write_text(QWEN_TPL)
    try:
        import torchvision  # noqa: F401

        proc = None  # the full processor loads from disk
    except ImportError:
        from transformers.processing_utils import ProcessorMixin

        check = ProcessorMixin.check_argument_for_proper_class
        ProcessorMixin.check_argument_for_proper_class = lambda self, n, a: None if a is None else check(self, n, a)
        try:
            proc = Qwen2VLProcessor(image_processor=ip, tokenizer=tok, video_processor=None, chat_template=QWEN_TPL)
        finally:
            ProcessorMixin.check_argument_for_proper_class = check
    return path, proc, model


def test_hf_vision_backend_qwen2vl(tiny_qwen2vl, tmp_path):
    path, proc, model = tiny_qwen2vl
    img = tmp_path / "Img4.png"
    img.write_bytes(png_bytes(size=(56, 56)))
    if proc is None:
        ans = HFVisionAnswerer.load(str(path))
    else:  # no torchvision: loading says so in one line; the model + image-only processor still run end to end
        with pytest.raises(LmlabError, match="(?i)torchvision"):
            HFVisionAnswerer.load(str(path))
        from transformers import AutoModelForImageTextToText

        ans = HFVisionAnswerer(AutoModelForImageTextToText.from_pretrained(path).eval(), proc, "tiny-qwen2vl")
        assert type(ans.model).__name__ == "Qwen2VLForConditionalGeneration"
    text = ans.prompt_text(Request("Which? (A) x (B) y", img))
    assert text == "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Which? (A) x (B) y<|im_end|>\n" + (
        "<|im_start|>assistant\n"
    )
    inp = _matches_direct_generate(ans, img, model.config.image_token_id)
    # 56x56 pixels -> a 4x4 grid of 14-px patches, merged 2x2 -> 4 image tokens
    assert inp["image_grid_thw"].tolist() == [[1, 4, 4]]
    assert int((inp["input_ids"] == model.config.image_token_id).sum()) == 4


@pytest.fixture(scope="module")
def tiny_idefics3(tmp_path_factory):
    """A tiny random Idefics3 (the architecture of SmolVLM v1 checkpoints): SigLIP-style vision tower, pixel-shuffle
    connector (scale 2), Llama text model; processor saved and reloaded through AutoProcessor."""
    from transformers import AutoModelForImageTextToText, Idefics3Config, Idefics3ImageProcessorPil, Idefics3Processor

    tok = _smollm_tokenizer(["<fake_token_around_image>", "<image>", "<end_of_utterance>", "<global-img>"])
    tpl = (
        "<|im_start|>{% for m in messages %}{{ m['role'] | capitalize }}:{% for c in m['content'] %}"
        "{% if c['type'] == 'image' %}<image>{% else %} {{ c['text'] }}{% endif %}{% endfor %}<end_of_utterance>\n"
        "{% endfor %}{% if add_generation_prompt %}Assistant:{% endif %}"
    )
    ip = Idefics3ImageProcessorPil(
        do_image_splitting=False, size={"longest_edge": 32}, max_image_size={"longest_edge": 32}
    )
    proc = Idefics3Processor(image_processor=ip, tokenizer=tok, image_seq_len=4, chat_template=tpl)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=32,
                  patch_size=8)  # fmt: skip
    cfg = Idefics3Config(
        text_config=_tiny_text(tok) | {"model_type": "llama"}, vision_config=vision, scale_factor=2,
        image_token_id=tok.convert_tokens_to_ids("<image>"),
    )  # fmt: skip
    torch.manual_seed(0)
    model = AutoModelForImageTextToText.from_config(cfg).eval()
    path = tmp_path_factory.mktemp("tinyidefics3")
    model.save_pretrained(path)
    proc.save_pretrained(path)
    return path


def test_hf_vision_backend_idefics3(tiny_idefics3, tmp_path):
    img = tmp_path / "Img5.png"
    img.write_bytes(png_bytes(size=(40, 50)))
    ans = HFVisionAnswerer.load(str(tiny_idefics3))
    assert type(ans.model).__name__ == "Idefics3ForConditionalGeneration"
    assert ans.prompt_text(Request("Which? (A) x (B) y", img)) == (
        "<|im_start|>User:<image> Which? (A) x (B) y<end_of_utterance>\nAssistant:"
    )
    inp = _matches_direct_generate(ans, img, ans.model.config.image_token_id)
    # one 32x32 image (no splitting): (32/8)^2 = 16 patches, pixel-shuffled by 2 -> 4 <image> tokens, wrapped
    ids = ans.processor.tokenizer.convert_tokens_to_ids(["<fake_token_around_image>", "<global-img>"])
    assert int((inp["input_ids"] == ans.model.config.image_token_id).sum()) == 4
    assert int((inp["input_ids"] == ids[0]).sum()) == 2 and int((inp["input_ids"] == ids[1]).sum()) == 1
    assert tuple(inp["pixel_values"].shape) == (1, 1, 3, 32, 32)
