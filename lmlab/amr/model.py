"""The seq2seq parser: a Hugging Face BART with the AMR vocabulary extension, and RGL's dual-encoder variant.

Plain parsers (default NLR and the reverse NRL parser of pass 1) are stock `BartForConditionalGeneration`, so
AMRBART / SPRING checkpoints load for GPU users. `RglBart` (paper section 3.2, official `modeling_bart.py`) adds:

- `amr_encoder`: a second full BART encoder, initialised as a copy of the text encoder, sharing token embeddings,
  that reads the reversed linearization;
- in every decoder layer a second cross-attention `amr_attn` (random init) and a gate, per position and layer:

      h = LN_self(h + SelfAttn(h))
      a = LN_amr(CrossAttn_amr(h, AMR_enc))      # no residual before the LN, as in the official code
      s = LN_src(CrossAttn_src(h, TXT_enc))
      g = sigmoid(W2 tanh(W1 h + b1) + b2)        # [B, T, 1]
      h = LN_fuse(h + Dropout(g a + (1 - g) s))
      h = LN_ffn(h + FFN(h))

The two encoders' states travel to the decoder concatenated along the sequence axis (text first, its padded length
in `split`), so HF `generate` (beam search, KV cache for self- and text cross-attention, beam expansion of the
encoder states) runs unchanged. The `amr_attn` keys are recomputed each step (not cached): negligible at our sizes.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from transformers import BartConfig, BartForConditionalGeneration
from transformers.modeling_outputs import BaseModelOutput
from transformers.models.bart.modeling_bart import BartAttention, BartDecoderLayer, BartEncoder


class RglDecoderLayer(BartDecoderLayer):
    """A BART decoder layer that cross-attends to the text and the reversed graph and gates the two."""

    def __init__(self, config: BartConfig, layer_idx: int, split: list[int]):
        super().__init__(config, layer_idx=layer_idx)
        d = config.d_model
        self.split = split  # shared one-element list: padded text length of the current batch
        self.amr_attn = BartAttention(
            d,
            config.decoder_attention_heads,
            dropout=config.attention_dropout,
            is_decoder=True,
            config=config,
            layer_idx=layer_idx,
        )
        self.amr_attn_layer_norm = nn.LayerNorm(d)
        self.fusion_attn_layer_norm = nn.LayerNorm(d)
        gate_dim = getattr(config, "rgl_gate_dim", 2048)
        self.gate = nn.Sequential(nn.Linear(d, gate_dim), nn.Tanh(), nn.Linear(gate_dim, 1))
        self.last_gate: torch.Tensor | None = None  # [B, T, 1] of the last forward (inspection, tests)

    def forward(
        self,
        hidden_states,
        attention_mask=None,
        encoder_hidden_states=None,
        encoder_attention_mask=None,
        cache=None,
        use_cache=True,
        **kwargs,
    ):
        residual = hidden_states
        h, _ = self.self_attn(hidden_states, cache=cache, attention_mask=attention_mask, **kwargs)
        h = nn.functional.dropout(h, p=self.dropout, training=self.training)
        h = self.self_attn_layer_norm(residual + h)

        k = self.split[0]
        txt, amr = encoder_hidden_states[:, :k], encoder_hidden_states[:, k:]
        m_txt = m_amr = None
        if encoder_attention_mask is not None:
            m_txt, m_amr = encoder_attention_mask[..., :k], encoder_attention_mask[..., k:]
        s, _ = self.encoder_attn(h, key_value_states=txt, attention_mask=m_txt, cache=cache, **kwargs)
        s = self.encoder_attn_layer_norm(s)
        a, _ = self.amr_attn(h, key_value_states=amr, attention_mask=m_amr, **kwargs)
        a = self.amr_attn_layer_norm(a)
        g = torch.sigmoid(self.gate(h))
        self.last_gate = g
        fused = nn.functional.dropout(g * a + (1 - g) * s, p=self.dropout, training=self.training)
        h = self.fusion_attn_layer_norm(h + fused)

        residual = h
        h = self.activation_fn(self.fc1(h))
        h = nn.functional.dropout(h, p=self.activation_dropout, training=self.training)
        h = self.fc2(h)
        h = nn.functional.dropout(h, p=self.dropout, training=self.training)
        return self.final_layer_norm(residual + h)


class RglBart(BartForConditionalGeneration):
    """BART + reverse-graph encoder + gated dual cross-attention (RGL). Saves/loads as a HF checkpoint."""

    def __init__(self, config: BartConfig):
        super().__init__(config)
        self.split = [0]
        dec = self.model.decoder
        dec.layers = nn.ModuleList([RglDecoderLayer(config, i, self.split) for i in range(config.decoder_layers)])
        self.amr_encoder = BartEncoder(config)
        self.amr_encoder.embed_tokens = self.model.shared  # shared token embeddings
        # declared here, not on the class: the parent's post_init runs before amr_encoder exists
        self._tied_weights_keys = {**self._tied_weights_keys, "amr_encoder.embed_tokens.weight": "model.shared.weight"}
        self.post_init()

    def init_from_text_encoder(self) -> None:
        """Official initialisation (main.py): amr_encoder <- text encoder; amr/fusion LNs <- encoder_attn LN;
        amr_attn keeps its random init; the gate is Xavier-initialised."""
        state = copy.deepcopy(self.model.encoder.state_dict())
        self.amr_encoder.load_state_dict(state)
        self.amr_encoder.embed_tokens = self.model.shared
        for layer in self.model.decoder.layers:
            layer.amr_attn_layer_norm.load_state_dict(layer.encoder_attn_layer_norm.state_dict())
            layer.fusion_attn_layer_norm.load_state_dict(layer.encoder_attn_layer_norm.state_dict())
            for lin in (layer.gate[0], layer.gate[2]):
                nn.init.xavier_uniform_(lin.weight)
                nn.init.zeros_(lin.bias)

    @classmethod
    def from_plain(cls, plain: BartForConditionalGeneration, gate_dim: int = 2048) -> RglBart:
        """An RGL model whose BART part is `plain` (e.g. an AMRBART checkpoint); new parts initialised as above."""
        config = copy.deepcopy(plain.config)
        config.rgl_gate_dim = gate_dim
        model = cls(config)
        missing, unexpected = model.load_state_dict(plain.state_dict(), strict=False)
        assert not unexpected, unexpected
        model.init_from_text_encoder()
        return model

    def encode(
        self, input_ids, attention_mask, amr_input_ids, amr_attention_mask
    ) -> tuple[BaseModelOutput, torch.Tensor]:
        txt = self.model.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        amr = self.amr_encoder(input_ids=amr_input_ids, attention_mask=amr_attention_mask).last_hidden_state
        self.split[0] = txt.shape[1]
        states = torch.cat([txt, amr], dim=1)
        return BaseModelOutput(last_hidden_state=states), torch.cat([attention_mask, amr_attention_mask], dim=1)

    def rgl_forward(self, input_ids, attention_mask, amr_input_ids, amr_attention_mask, decoder_input_ids):
        """Logits [B, T, V] of the default linearization given the text and a reversed graph."""
        enc, mask = self.encode(input_ids, attention_mask, amr_input_ids, amr_attention_mask)
        return self(encoder_outputs=enc, attention_mask=mask, decoder_input_ids=decoder_input_ids).logits

    def rgl_generate(self, input_ids, attention_mask, amr_input_ids, amr_attention_mask, **gen_kwargs):
        enc, mask = self.encode(input_ids, attention_mask, amr_input_ids, amr_attention_mask)
        return self.generate(encoder_outputs=enc, attention_mask=mask, **gen_kwargs)


def tiny_config(
    vocab_size: int,
    pad: int,
    bos: int,
    eos: int,
    dec_start: int,
    d: int = 256,
    layers: int = 3,
    heads: int = 4,
    ffn: int = 1024,
    max_len: int = 512,
    dropout: float = 0.1,
) -> BartConfig:
    """A small BART for CPU training from scratch (same class and config as bart-base/large)."""
    return BartConfig(
        vocab_size=vocab_size,
        d_model=d,
        encoder_layers=layers,
        decoder_layers=layers,
        encoder_attention_heads=heads,
        decoder_attention_heads=heads,
        encoder_ffn_dim=ffn,
        decoder_ffn_dim=ffn,
        max_position_embeddings=max_len,
        dropout=dropout,
        attention_dropout=0.0,
        activation_dropout=0.0,
        pad_token_id=pad,
        bos_token_id=bos,
        eos_token_id=eos,
        decoder_start_token_id=dec_start,
        forced_eos_token_id=None,
        scale_embedding=True,
        tie_word_embeddings=True,
        attn_implementation="sdpa",
    )
