"""Hugging Face wrappers of lcplm's reference networks (shipped in exported directories).

``AutoModel`` / ``AutoModelForMaskedLM`` with ``trust_remote_code=True`` load these from an
exported directory. Inputs: ``input_ids`` (B, L) and an optional right-padding
``attention_mask``; the genome transformer also takes ``pid`` (B, L) and ``allowed`` (B, P, P).
The network sits under ``net`` (``base_model_prefix``): the exported weights carry lcplm's
names without that prefix, which transformers adds when it loads them.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel
from transformers.modeling_outputs import BaseModelOutput, MaskedLMOutput

from .configuration_lcplm import LcPlmConfig, LcplmConfig
from .reference_lcplm import ReleasedBiMambaNetwork, build_network, lengths_from_attention_mask


class _ReferencePreTrainedModel(PreTrainedModel):
    base_model_prefix = "net"
    # stored once in the file (tied to the input embedding when the config ties them)
    _tied_weights_keys = ["lm_head.weight", "decoder.weight"]

    def _build(self, config) -> torch.nn.Module:
        raise NotImplementedError

    def __init__(self, config):
        super().__init__(config)
        self.net = self._build(config)
        self.post_init()

    def _init_weights(self, module: torch.nn.Module) -> None:
        """No-op: every weight comes from the exported file (the networks' constructors give
        plain PyTorch initialisations for a model built from a config alone)."""

    def get_input_embeddings(self) -> torch.nn.Module:
        return self.net.input_embeddings()

    def get_output_embeddings(self) -> torch.nn.Module:
        return self.net.output_embeddings()

    def _hidden(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor], **inputs) -> torch.Tensor:
        return self.net.encode(input_ids, lengths=lengths_from_attention_mask(attention_mask), **inputs)


class _MaskedLMHead:
    def forward(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                labels: Optional[torch.Tensor] = None, return_dict: Optional[bool] = None, **inputs) -> MaskedLMOutput:
        logits = self.net.logits(self._hidden(input_ids, attention_mask, **inputs))
        loss = None
        if labels is not None:  # -100 marks positions that are not targets
            loss = F.cross_entropy(logits.float().view(-1, logits.shape[-1]), labels.view(-1), ignore_index=-100)
        return MaskedLMOutput(loss=loss, logits=logits)


class LcplmPreTrainedModel(_ReferencePreTrainedModel):
    config_class = LcplmConfig

    def _build(self, config: LcplmConfig) -> torch.nn.Module:
        return build_network(config.lcplm_config)


class LcplmModel(LcplmPreTrainedModel):
    """Final hidden states (after the final norm): ``last_hidden_state`` (B, L, d)."""

    def forward(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                return_dict: Optional[bool] = None, **inputs) -> BaseModelOutput:
        return BaseModelOutput(last_hidden_state=self._hidden(input_ids, attention_mask, **inputs))


class LcplmForMaskedLM(_MaskedLMHead, LcplmPreTrainedModel):
    """Masked-LM logits (B, L, vocab_size); cross-entropy ``loss`` when ``labels`` are given."""


class LcPlmForMaskedLM(_MaskedLMHead, _ReferencePreTrainedModel):
    """BiMamba-S in LC-PLM's released layout (``bimamba.backbone.*``, ``lm_head``)."""

    config_class = LcPlmConfig

    def _build(self, config: LcPlmConfig) -> torch.nn.Module:
        return ReleasedBiMambaNetwork(config.to_dict())
