"""MesaNet language models on Hugging Face ``PreTrainedModel`` + ``GenerationMixin``.

Backbone as in the MesaNet paper (App. E/G): tied embedding scaled by ``sqrt(D)``; per block
``x + Mixer(RMSNorm(x))`` then ``x + MLP(RMSNorm(x))`` with a gated SiLU MLP (3x); final RMSNorm;
logits soft-capped ``c * tanh(z / c)``. Fan-in normal init, the projections back into the residual
stream scaled by ``sqrt(2 / N)``. The mixer of each layer comes from ``config.mixer_types``.
"""

from __future__ import annotations

import functools
import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from ..layers.mlp import GatedMLP
from ..layers.norms import RMSNorm
from ..layers.registry import build_mixer
from ..layers.solver_stats import replay_quietly
from .cache import MesaNetCache
from .configuration_mesanet import MIXER_KINDS, MesaNetConfig

#: Label value that takes no part in the loss (the PyTorch / Hugging Face convention).
IGNORE_INDEX = -100

_ATTENTION_KINDS = ("attention", "sliding_attention")

#: Index dtypes ``nn.Embedding`` accepts; labels of either dtype are cast to int64 for the loss.
TOKEN_ID_DTYPES = (torch.int64, torch.int32)


def check_token_ids(where: str, vocab_size: int, input_ids: Optional[Tensor], labels: Optional[Tensor] = None) -> None:
    """``ValueError`` unless ``input_ids`` (and ``labels``, which may also be :data:`IGNORE_INDEX`) are integer
    tensors of ids in ``[0, vocab_size)``: one ``aminmax`` per tensor and ONE host sync for both; labels that are
    ``input_ids`` are not checked twice; the value check is skipped while compiling and on the meta device."""
    given = [(name, t) for name, t in (("input_ids", input_ids), ("labels", labels)) if t is not None]
    for name, ids in given:
        if ids.dtype not in TOKEN_ID_DTYPES:
            raise ValueError(f"{where}: expected {name} of an integer dtype (torch.int64 or torch.int32), got {ids.dtype}")
    if labels is not None and labels is input_ids:
        given = given[:1]
    given = [(name, t) for name, t in given if t.numel() and not t.is_meta]
    if not given or torch.compiler.is_compiling():
        return
    ranges = []
    for name, ids in given:
        if name == "labels":  # ignored positions count as a valid id
            ids = ids.masked_fill(ids == IGNORE_INDEX, 0)
        ranges.append(torch.stack(torch.aminmax(ids)).long())
    for (name, _), (low, high) in zip(given, torch.stack(ranges).tolist()):
        if low < 0 or high >= vocab_size:
            allowed = f" or {IGNORE_INDEX} (ignored)" if name == "labels" else ""
            raise ValueError(
                f"{where}: expected {name} in [0, vocab_size) = [0, {vocab_size - 1}]{allowed}, got values from {low} to {high}"
            )


#: Optional ``MesaNetConfig`` fields handed to the q/k/v-gate mixers (:class:`~mesanet.layers.RecurrentMixer`) when set.
RECURRENT_MIXER_OPTIONS = ("forget_init_range", "beta_max", "use_output_gate", "conv_on_v")


def mixer_options(config: MesaNetConfig, kind: str) -> dict:
    """Constructor options of the mixer ``kind`` taken from the model config."""
    if kind in _ATTENTION_KINDS:
        options = dict(num_kv_heads=config.num_kv_heads, rope_theta=config.rope_theta)
        if kind == "sliding_attention":
            options["window"] = config.attention_window
        return options
    if kind == "hawk":
        return dict(conv_size=config.conv_size, expansion=config.hawk_expansion, chunk_size=config.chunk_size)
    options = dict(
        value_head_dim=config.value_head_dim, conv_size=config.conv_size, gamma_cap=config.gamma_cap, chunk_size=config.chunk_size
    )
    for name in RECURRENT_MIXER_OPTIONS:  # None: the mixer's own default
        value = getattr(config, name)
        if value is not None:
            options[name] = tuple(value) if name == "forget_init_range" else value
    if kind == "mesa":
        options.update(solver_training=config.solver_training, solver_inference=config.solver_inference)
    return options


def positions_from(attention_mask: Optional[Tensor], length: int, seen: int, cu_seqlens: Optional[Tensor], device) -> Tensor:
    """Absolute positions ``[B, T]`` of this call's tokens: count of real tokens before each one
    (left padding aware), or restarting at every packed sequence."""
    if cu_seqlens is not None:
        starts = torch.zeros(length, dtype=torch.long, device=device)
        starts[cu_seqlens[1:-1].long()] = 1
        seq = starts.cumsum(0)
        return (torch.arange(length, device=device) - cu_seqlens.long()[seq]).unsqueeze(0)
    if attention_mask is not None:
        return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -length:]
    return torch.arange(seen, seen + length, device=device).unsqueeze(0)


class MesaNetBlock(nn.Module):
    """Pre-norm residual block: ``x + Mixer(RMSNorm(x))``, then ``x + MLP(RMSNorm(x))``.

    ``gradient_checkpointing`` / ``_gradient_checkpointing_func`` are set by the Hugging Face
    ``activation_checkpointing_enable()`` (the model then recomputes the block in the backward pass)."""

    gradient_checkpointing = False

    def __init__(self, config: MesaNetConfig, layer_idx: int):
        super().__init__()
        self.kind = config.mixer_types[layer_idx]
        self.mixer_norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.mixer = build_mixer(
            self.kind, config.hidden_size, config.num_heads, config.head_dim, **mixer_options(config, self.kind)
        )
        self.mlp_norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.mlp = GatedMLP(config.hidden_size, expansion=config.mlp_expansion)
        self.mlp.down.residual_output = True
        self.mixer.is_token_mixer = True  # its own reset_parameters() initialises it (see _init_weights)

    def forward(self, x: Tensor, *, state, attention_mask, position_ids, cu_seqlens, use_cache, output_attentions=False):
        kwargs = dict(
            state=state, attention_mask=attention_mask, position_ids=position_ids, cu_seqlens=cu_seqlens, use_cache=use_cache
        )
        if output_attentions:
            kwargs["return_weights"] = True
            h, new_state, weights = self.mixer(self.mixer_norm(x), **kwargs)
        else:
            h, new_state = self.mixer(self.mixer_norm(x), **kwargs)
            weights = None
        x = x + h
        x = x + self.mlp(self.mlp_norm(x))
        return x, new_state, weights


class MesaNetPreTrainedModel(PreTrainedModel):
    config_class = MesaNetConfig
    base_model_prefix = "model"
    _no_split_modules = ["MesaNetBlock"]
    _is_stateful = True
    supports_gradient_checkpointing = True  # activation_checkpointing_enable(): every block is recomputed in backward

    def save_pretrained(self, save_directory, *args, **kwargs):
        """``PreTrainedModel.save_pretrained``, plus the modeling code and ``auto_map`` (:mod:`.remote_code`): the
        folder loads with ``trust_remote_code=True`` where ``mesanet`` is not installed."""
        super().save_pretrained(save_directory, *args, **kwargs)
        if kwargs.get("is_main_process", True):
            from .remote_code import write_remote_code

            write_remote_code(save_directory)

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        # The model builds its own MesaNetCache (recurrent states + KV caches) on the first forward.
        return False

    def _initialize_weights(self, module: nn.Module, is_custom_code: bool = False) -> None:
        """Hugging Face's per-module init, except that a token mixer is always handed to :meth:`_init_weights`
        unless every one of its parameters (children's included) is already initialised (loaded).

        Hugging Face's custom-code path skips a module none of whose *own* parameters needs initialising, and a
        module without parameters of its own passes that check vacuously: mixers whose parameters all live in
        child ``nn.Linear`` / convolution modules (Gated DeltaNet, DeltaNet, GLA, Mamba2, attention) were left
        with the generic ``nn.Linear`` init (zero gate biases: every forget gate at 0.5, no residual scaling
        of ``o_proj``) instead of their own ``reset_parameters`` (``docs/results/gdn_mqar.md``)."""
        if getattr(module, "is_token_mixer", False) and not getattr(module, "_is_hf_initialized", False):
            if not all(getattr(p, "_is_hf_initialized", False) for p in module.parameters()):
                self._init_weights(module)
            module._is_hf_initialized = True
            return
        super()._initialize_weights(module, is_custom_code)

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """Fan-in normal init of the backbone (embedding std 1/sqrt(D)); every token mixer initialises itself
        (gate biases, lambda, convolutions) by ``reset_parameters``; the projections back into the residual
        stream (MLP ``down``, mixer ``o_proj``) are then scaled by ``sqrt(2 / N)``. Called children first."""
        residual_scale = math.sqrt(2.0 / self.config.num_hidden_layers)
        if getattr(module, "is_token_mixer", False):
            module.reset_parameters()
            module.o_proj.weight.mul_(residual_scale)
        elif isinstance(module, nn.Linear):
            std = 1.0 / math.sqrt(module.in_features)
            nn.init.normal_(
                module.weight, mean=0.0, std=std * (residual_scale if getattr(module, "residual_output", False) else 1.0)
            )
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=1.0 / math.sqrt(module.embedding_dim))
        elif isinstance(module, RMSNorm):
            module.reset_parameters()


class MesaNetModel(MesaNetPreTrainedModel):
    """Embedding, blocks and final norm: ``input_ids [B, T] -> hidden states [B, T, D]``."""

    def __init__(self, config: MesaNetConfig):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(MesaNetBlock(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embed_tokens = value

    def forward(
        self,
        input_ids: Optional[Tensor] = None,
        attention_mask: Optional[Tensor] = None,
        position_ids: Optional[Tensor] = None,
        past_key_values: Optional[MesaNetCache] = None,
        inputs_embeds: Optional[Tensor] = None,
        use_cache: Optional[bool] = None,
        output_hidden_states: Optional[bool] = None,
        output_attentions: Optional[bool] = None,
        cu_seqlens: Optional[Tensor] = None,
        return_dict: Optional[bool] = None,
        check_ids: bool = True,
        **kwargs,
    ) -> BaseModelOutputWithPast:
        """``check_ids=False``: the caller has checked ``input_ids`` with :func:`check_token_ids` already."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("MesaNetModel: pass exactly one of input_ids [B, T] and inputs_embeds [B, T, D]")
        if input_ids is not None and input_ids.dim() != 2:
            raise ValueError(f"MesaNetModel: expected input_ids of shape [B, T], got {list(input_ids.shape)}")
        if check_ids:
            check_token_ids("MesaNetModel", self.config.vocab_size, input_ids)
        use_cache = self.config.use_cache if use_cache is None else use_cache
        use_cache = use_cache and not self.training and cu_seqlens is None
        if output_attentions:
            recurrent = [f"{i}: {k}" for i, k in enumerate(self.config.mixer_types) if k not in _ATTENTION_KINDS]
            if recurrent:
                raise ValueError(
                    f"MesaNetModel: output_attentions needs softmax-attention layers only; layers {recurrent} are recurrent "
                    "mixers and have no attention weights"
                )
        if past_key_values is not None and not isinstance(past_key_values, MesaNetCache):
            raise ValueError(f"MesaNetModel: expected past_key_values to be a MesaNetCache, got {type(past_key_values).__name__}")
        if past_key_values is not None and cu_seqlens is not None:
            raise ValueError("MesaNetModel: cu_seqlens (packed sequences) cannot continue from a cache")

        x = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        batch, length = x.shape[:2]
        if attention_mask is not None and (attention_mask.dim() != 2 or attention_mask.shape[0] != batch):
            raise ValueError(
                f"MesaNetModel: expected attention_mask of shape [B, T_past + T] with B = {batch}, got {list(attention_mask.shape)}"
            )
        x = x * math.sqrt(self.config.hidden_size)  # unit-variance residual stream (Griffin-style)
        if use_cache and past_key_values is None:
            past_key_values = MesaNetCache(self.config.num_hidden_layers)
        seen = past_key_values.seen if past_key_values is not None else 0
        if position_ids is None:
            position_ids = positions_from(attention_mask, length, seen, cu_seqlens, x.device)

        hidden_states, attentions = [], []
        for i, block in enumerate(self.layers):
            if output_hidden_states:
                hidden_states.append(x)
            state = past_key_values.states[i] if past_key_values is not None else None
            kwargs = dict(
                state=state,
                attention_mask=attention_mask,
                position_ids=position_ids,
                cu_seqlens=cu_seqlens,
                use_cache=use_cache,
                output_attentions=bool(output_attentions),
            )
            if block.gradient_checkpointing and self.training and torch.is_grad_enabled():
                # use_cache is off in training; the recomputation solves with the forward's settings, records no stats
                x, new_state, weights = block._gradient_checkpointing_func(
                    replay_quietly(functools.partial(block.__call__, **kwargs)), x
                )
            else:
                x, new_state, weights = block(x, **kwargs)
            if use_cache:
                past_key_values.states[i] = new_state
            if output_attentions:
                attentions.append(weights)
        x = self.norm(x)
        if output_hidden_states:
            hidden_states.append(x)
        if use_cache:
            past_key_values.seen = seen + length
        return BaseModelOutputWithPast(
            last_hidden_state=x,
            past_key_values=past_key_values if use_cache else None,
            hidden_states=tuple(hidden_states) if output_hidden_states else None,
            attentions=tuple(attentions) if output_attentions else None,
        )


class MesaNetForCausalLM(MesaNetPreTrainedModel, GenerationMixin):
    """Causal LM head (tied to the embedding) with the logit soft-cap; ``labels`` give the mean next-token loss."""

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: MesaNetConfig):
        super().__init__(config)
        self.model = MesaNetModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.embed_tokens = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.lm_head = value

    def forward(
        self,
        input_ids: Optional[Tensor] = None,
        attention_mask: Optional[Tensor] = None,
        position_ids: Optional[Tensor] = None,
        past_key_values: Optional[MesaNetCache] = None,
        inputs_embeds: Optional[Tensor] = None,
        labels: Optional[Tensor] = None,
        use_cache: Optional[bool] = None,
        output_hidden_states: Optional[bool] = None,
        output_attentions: Optional[bool] = None,
        cu_seqlens: Optional[Tensor] = None,
        logits_to_keep: int = 0,
        return_dict: Optional[bool] = None,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        if input_ids is not None and input_ids.dim() == 2:  # ids and labels in one check (the model checks shapes)
            check_token_ids("MesaNetForCausalLM", self.config.vocab_size, input_ids, labels)
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
            cu_seqlens=cu_seqlens,
            check_ids=input_ids is None or input_ids.dim() != 2,
        )
        hidden = out.last_hidden_state if not logits_to_keep else out.last_hidden_state[:, -logits_to_keep:]
        logits = self.lm_head(hidden).float()
        if self.config.logit_soft_cap is not None:
            cap = self.config.logit_soft_cap
            logits = cap * torch.tanh(logits / cap)
        loss = None
        if labels is not None:
            if labels.shape != out.last_hidden_state.shape[:2]:
                raise ValueError(
                    f"MesaNetForCausalLM: expected labels of shape [B, T] = {list(out.last_hidden_state.shape[:2])}, got {list(labels.shape)}"
                )
            if logits_to_keep:
                raise ValueError("MesaNetForCausalLM: labels need the logits of every position (logits_to_keep = 0)")
            if input_ids is None:  # inputs_embeds: the labels were not checked above
                check_token_ids("MesaNetForCausalLM", self.config.vocab_size, None, labels)
            loss = F.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1).long(), ignore_index=IGNORE_INDEX
            )
        return CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            past_key_values=out.past_key_values,
            hidden_states=out.hidden_states,
            attentions=out.attentions,
        )

    def prepare_inputs_for_generation(self, input_ids, past_key_values=None, attention_mask=None, inputs_embeds=None, **kwargs):
        """Feed only the tokens the cache has not seen yet; the full attention mask stays (left padding)."""
        if past_key_values is not None and past_key_values.seen > 0:
            input_ids = input_ids[:, past_key_values.seen :]
            inputs_embeds = None
        model_inputs = dict(
            past_key_values=past_key_values, attention_mask=attention_mask, use_cache=kwargs.get("use_cache", True)
        )
        if inputs_embeds is not None:
            model_inputs["inputs_embeds"] = inputs_embeds
        else:
            model_inputs["input_ids"] = input_ids.contiguous()
        return model_inputs


__all__ = ["MesaNetForCausalLM", "MesaNetModel", "MesaNetPreTrainedModel", "MIXER_KINDS"]
