"""Model configuration for the native Llama family (Llama, Mistral, Qwen2, SmolLM), read from HF config.json."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .errors import LmlabError

SUPPORTED_ARCHS = {"LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM"}
SUPPORTED_TYPES = {"llama", "mistral", "qwen2"}


@dataclass
class ModelConfig:
    vocab_size: int = 49152
    hidden_size: int = 576
    intermediate_size: int = 1536
    num_layers: int = 30
    num_heads: int = 9
    num_kv_heads: int = 3
    head_dim: int = 64
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None  # HF rope_scaling / rope_parameters minus rope_theta
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = True
    attention_bias: bool = False  # Qwen2: bias on q, k, v
    mlp_bias: bool = False
    model_type: str = "llama"
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # the untouched HF config, for round trips

    @classmethod
    def from_hf(cls, cfg: dict[str, Any], source: str = "config.json") -> ModelConfig:
        """Build from a Hugging Face config dict; unknown architectures fail with a clear message."""
        mtype = cfg.get("model_type")
        archs = set(cfg.get("architectures") or [])
        if mtype not in SUPPORTED_TYPES and not (archs & SUPPORTED_ARCHS):
            raise LmlabError(
                f"{source}: unsupported architecture model_type={mtype!r} architectures={sorted(archs)}",
                hint=f"lmlab's native engine runs model_type in {sorted(SUPPORTED_TYPES)}; use the openai backend for others",
            )
        try:
            heads = cfg["num_attention_heads"]
            hidden = cfg["hidden_size"]
            rope = dict(cfg.get("rope_parameters") or cfg.get("rope_scaling") or {})
            theta = float(rope.pop("rope_theta", cfg.get("rope_theta", 10000.0)))
            if rope.get("rope_type", rope.get("type", "default")) == "default":
                rope = {}
            return cls(
                vocab_size=cfg["vocab_size"],
                hidden_size=hidden,
                intermediate_size=cfg["intermediate_size"],
                num_layers=cfg["num_hidden_layers"],
                num_heads=heads,
                num_kv_heads=cfg.get("num_key_value_heads") or heads,
                head_dim=cfg.get("head_dim") or hidden // heads,
                rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
                rope_theta=theta,
                rope_scaling=rope or None,
                max_position_embeddings=cfg.get("max_position_embeddings", 2048),
                tie_word_embeddings=bool(cfg.get("tie_word_embeddings", mtype != "qwen2")),
                attention_bias=bool(cfg.get("attention_bias", mtype == "qwen2")),
                mlp_bias=bool(cfg.get("mlp_bias", False)),
                model_type=mtype or "llama",
                bos_token_id=cfg.get("bos_token_id"),
                eos_token_id=cfg.get("eos_token_id"),
                extra=cfg,
            )
        except KeyError as e:
            raise LmlabError(
                f"{source}: missing field {e.args[0]!r}", hint="is this a causal-LM config.json?"
            ) from None

    @classmethod
    def from_file(cls, path: str | Path) -> ModelConfig:
        path = Path(path)
        try:
            return cls.from_hf(json.loads(path.read_text()), source=str(path))
        except json.JSONDecodeError as e:
            raise LmlabError(f"{path}: line {e.lineno}: invalid JSON ({e.msg})") from None

    def to_hf(self) -> dict[str, Any]:
        """A Hugging Face config dict (Llama/Mistral/Qwen2) describing the same model."""
        arch = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM"}[
            self.model_type
        ]
        rope = {"rope_theta": self.rope_theta, "rope_type": "default", **(self.rope_scaling or {})}
        out = dict(self.extra)
        out.update(
            architectures=[arch],
            model_type=self.model_type,
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size,
            num_hidden_layers=self.num_layers,
            num_attention_heads=self.num_heads,
            num_key_value_heads=self.num_kv_heads,
            head_dim=self.head_dim,
            rms_norm_eps=self.rms_norm_eps,
            rope_theta=self.rope_theta,
            rope_parameters=rope,
            rope_scaling=None if not self.rope_scaling else rope,
            max_position_embeddings=self.max_position_embeddings,
            tie_word_embeddings=self.tie_word_embeddings,
            attention_bias=self.attention_bias,
            mlp_bias=self.mlp_bias,
            hidden_act="silu",
            bos_token_id=self.bos_token_id,
            eos_token_id=self.eos_token_id,
        )
        out.pop("quantization_config", None)
        return out

    def asdict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("extra")
        return d
