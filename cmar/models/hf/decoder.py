"""A pretrained causal language model (the GPT-2 family) as the caption decoder.

Same contract as :class:`cmar.models.decoders.CaptionDecoder`::

    decoder(target_in (B, L), memory (B, M, d), memory_mask (B, M)) -> logits (B, L, V)
    decoder.init_state(memory, memory_mask) -> state;  decoder.step(tokens (N,), state)
        state: a State; its shared entries (the bridged memory and its mask) are the same
        for every beam, the cache ("past") follows the beams

The model loads with ``add_cross_attention=True``: every block gains a cross-attention over the
story memory, projected from ``d_model`` to the model's width. Those layers are new (randomly
initialised, as ``from_pretrained`` reports); the rest is the pretrained model, fine-tuned
unless ``freeze`` (then only the cross-attention layers and the projection train). Generation
is the shared decoding (greedy, batched beam, nucleus) over ``step``, which feeds one token and
the model's own ``past_key_values`` cache; beam search reorders that cache with its
``reorder_cache``. The run's caption tokenizer is this model's tokenizer, so token ids and
logits share one vocabulary.
"""

from __future__ import annotations

import inspect

import torch
from torch import nn

from cmar.models.decoding import Decoding, State
from cmar.models.hf.loading import enable_checkpointing, freeze, load_pretrained


class HFDecoder(Decoding, nn.Module):
    def __init__(self, source: str, vocab_size: int, d_model: int, pad_id: int, bos_id: int,
                 eos_id: int, unk_id: int | None = None, max_len: int = 128,
                 freeze_model: bool = False, gradient_checkpointing: bool = False):
        super().__init__()
        import transformers

        self.source, self.max_len = source, max_len
        self.pad_id, self.bos_id, self.eos_id, self.unk_id = pad_id, bos_id, eos_id, unk_id
        config = load_pretrained(transformers.AutoConfig, source, "decoder config")
        if getattr(config, "is_encoder_decoder", False):
            raise ValueError(
                f"hf:{source} is an encoder-decoder model ({config.model_type}); model.decoder "
                "takes a causal language model that can cross-attend, such as the GPT-2 family "
                "(gpt2, distilgpt2)")
        cannot = ValueError(
            f"hf:{source} ({config.model_type}) cannot cross-attend to the story memory; "
            "model.decoder takes a causal language model with cross-attention layers, such as "
            "the GPT-2 family (gpt2, distilgpt2)")
        try:
            self.lm, info = load_pretrained(transformers.AutoModelForCausalLM, source,
                                            "decoder", add_cross_attention=True,
                                            output_loading_info=True)
        except TypeError as error:  # its class takes no add_cross_attention
            raise cannot from error
        accepts = inspect.signature(self.lm.forward).parameters
        # the cache argument's name: "cache" from transformers 5.x, "past_key_values" before
        self.cache_argument = "cache" if "cache" in accepts else "past_key_values"
        if "encoder_hidden_states" not in accepts:
            raise cannot
        if vocab_size > self.lm.get_output_embeddings().weight.shape[0]:
            self.lm.resize_token_embeddings(vocab_size)
        if freeze_model:  # the new cross-attention layers (missing from the file) still train
            freeze(self.lm, keep=set(info["missing_keys"]))
        enable_checkpointing(self.lm, gradient_checkpointing)
        self.bridge = nn.Linear(d_model, int(self.lm.config.hidden_size))

    def _memory(self, memory: torch.Tensor, memory_mask: torch.Tensor) -> State:
        return {"memory_mask": memory_mask, "memory_states": self.bridge(memory)}

    def forward(self, target_in, memory, memory_mask, memory_ids=None):
        """Teacher forcing: logits (B, L, V). Padding after a caption is never attended to by
        a real position (causal attention), so no attention mask is needed."""
        out = self.lm(input_ids=target_in, encoder_hidden_states=self.bridge(memory),
                      encoder_attention_mask=memory_mask.long(), use_cache=False)
        return out.logits

    def init_state(self, memory, memory_mask, memory_ids=None) -> State:
        fixed = self._memory(memory, memory_mask)  # the same for every beam
        return State(fixed, shared=fixed)  # the cache ("past", per beam) starts at step one

    def step(self, tokens, state: State):
        out = self.lm(input_ids=tokens[:, None], encoder_hidden_states=state["memory_states"],
                      encoder_attention_mask=state["memory_mask"].long(), use_cache=True,
                      **{self.cache_argument: state.get("past")})
        cache = getattr(out, "cache", None)
        return out.logits[:, -1], {**state, "past": out.past_key_values if cache is None
                                   else cache}
