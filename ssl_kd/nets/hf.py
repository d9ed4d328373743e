"""Hugging Face sequence classifiers behind the project's network contract.

`hf:<name-or-path>[:layers=N|every2][:pool=cls|mean]` loads `AutoModelForSequenceClassification`
(a hub name or a local folder; `hf:minilm-l6` is the offline MiniLM package) with `num_labels` =
the dataset's classes (1 and `problem_type="regression"` for a regression task such as STS-B); ssl_kd.text.hub says what the options keep.
`forward(ids)` takes right-padded token ids (N,L), derives the attention mask (ids != pad) and,
for BERT-style models, the segment ids (after the first [SEP]), trims the batch to its longest
sequence, and returns `(logits, features)`: features are the input of the final classification
Linear (`self.head`, e.g. BERT's dropout(pooler output), or with pool=mean dropout(the masked mean
of the last hidden states)), read by a forward pre-hook, so logits == head(features) exactly as
the influence module assumes.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ssl_kd.errors import ConfigError
from ssl_kd.nets.base import Classifier
from ssl_kd.text.hub import HFSpec, parse_hf_name, require_transformers
from ssl_kd.text.tokenise import fill_special_tokens


def final_linear(model: nn.Module, num_classes: int) -> str:
    """The name of the last nn.Linear with `num_classes` outputs: the classification head."""
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and m.out_features == num_classes]
    if not names:
        raise ConfigError(f"{type(model).__name__} has no Linear with {num_classes} outputs to serve as the head; "
                          "use an AutoModelForSequenceClassification architecture")
    return names[-1]


def layer_list(model: nn.Module, depth: int) -> tuple[nn.Module, str]:
    """(parent, attribute) of the ModuleList holding the `depth` transformer layers."""
    for module in model.modules():
        for attr, child in module.named_children():
            if isinstance(child, nn.ModuleList) and len(child) == depth:
                return module, attr
    raise ConfigError(f"cannot find the {depth} transformer layers of {type(model).__name__}; drop the :layers= option")


def keep_layers(model: nn.Module, layers: int, every: int = 1) -> None:
    """Keep the first `layers` transformer layers (PKD's prefix students), or every `every`-th
    layer from the first (DistilBERT-style); the rest are dropped."""
    depth = int(model.config.num_hidden_layers)
    if layers > depth:
        raise ConfigError(f":layers={layers} asks for more layers than the model's {depth}; give at most {depth}")
    parent, attr = layer_list(model, depth)
    kept = list(getattr(parent, attr))[:layers or depth:every]
    for index, layer in enumerate(kept):  # attention caches and some models key on the layer's index
        for module in layer.modules():
            if isinstance(getattr(module, "layer_idx", None), int):
                module.layer_idx = index
    setattr(parent, attr, nn.ModuleList(kept))
    model.config.num_hidden_layers = len(kept)


def masked_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The mean of `hidden` (N,L,D) over the positions where `mask` (N,L) is 1 (sentence-transformers' mean pooling)."""
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)


class HFClassifier(Classifier):
    """A transformers sequence classifier with the (logits, features) contract."""

    optimizer_kind = "adamw"  # the Hugging Face convention (ssl_kd.trainer.optim)

    def __init__(self, spec: HFSpec, num_classes: int) -> None:
        super().__init__()
        require_transformers()
        from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer
        from transformers.utils import logging as hf_logging

        config = AutoConfig.from_pretrained(spec.source, num_labels=num_classes, local_files_only=spec.is_local)
        # a checkpoint with a classification head of another width (a 2-class model on STS-B's one
        # score or six classes) gets a new head, as fine-tuning on another task does; nothing else may differ
        other_head = AutoConfig.from_pretrained(spec.source, local_files_only=spec.is_local).num_labels != num_classes
        if num_classes == 1:  # one output is a regression score (transformers' convention), e.g. STS-B
            config.problem_type = "regression"
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # "newly initialised head" warnings: expected when fine-tuning
        hf_logging.disable_progress_bar()
        try:
            try:  # PyTorch's fused scaled-dot-product attention, where the architecture has it
                self.hf = AutoModelForSequenceClassification.from_pretrained(
                    spec.source, config=config, local_files_only=spec.is_local, attn_implementation="sdpa",
                    ignore_mismatched_sizes=other_head)
            except ValueError:  # an architecture without SDPA keeps its own attention
                self.hf = AutoModelForSequenceClassification.from_pretrained(
                    spec.source, config=config, local_files_only=spec.is_local, ignore_mismatched_sizes=other_head)
        finally:
            hf_logging.set_verbosity(verbosity)
            hf_logging.enable_progress_bar()
        if spec.layers or spec.every > 1:
            keep_layers(self.hf, spec.layers, spec.every)
        tokenizer = AutoTokenizer.from_pretrained(spec.source, local_files_only=spec.is_local)
        fill_special_tokens(tokenizer)  # as the data were tokenised (ssl_kd.text.tokenise): GPT-2 pads with end-of-text
        self.pad_id = int(tokenizer.pad_token_id)
        if self.hf.config.pad_token_id is None:  # GPT-2 style heads find each row's last token by it
            self.hf.config.pad_token_id = self.pad_id
        self.sep_id = tokenizer.sep_token_id
        self.segments = int(getattr(config, "type_vocab_size", 1) or 1) > 1
        self.head_name = final_linear(self.hf, num_classes)
        self.num_features = self.head.in_features
        self.pool = spec.pool
        if self.pool == "mean" and self.num_features != config.hidden_size:
            raise ConfigError(f"pool=mean needs a classification Linear reading the hidden states ({config.hidden_size} "
                              f"wide); {type(self.hf).__name__}'s reads {self.num_features}: drop :pool=mean")
        self._features: torch.Tensor | None = None
        self.head.register_forward_pre_hook(self._keep_features)

    @property
    def head(self) -> nn.Linear:  # type: ignore[override]
        return self.hf.get_submodule(self.head_name)

    def _keep_features(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        self._features = args[0]

    def segment_ids(self, ids: torch.Tensor, sep_id: int) -> torch.Tensor:
        """0 up to and including the first [SEP], 1 after it (BERT's sentence-pair segments)."""
        sep = (ids == sep_id).long()
        return ((sep.cumsum(1) - sep) > 0).long()

    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mask = ids != self.pad_id
        # the last real token (a pad-valued mask token may sit mid-sentence: GPT-2 style tokenizers)
        longest = int((mask * torch.arange(1, ids.shape[1] + 1, device=ids.device)).max()) if ids.numel() else 0
        ids, mask = ids[:, :max(1, longest)].long(), mask[:, :max(1, longest)].long()
        extra = {}
        if self.segments and self.sep_id is not None:
            extra["token_type_ids"] = self.segment_ids(ids, self.sep_id)
        if self.pool == "mean":
            hidden = self.hf.base_model(input_ids=ids, attention_mask=mask, **extra).last_hidden_state
            dropout = getattr(self.hf, "dropout", None) or nn.Identity()
            logits = self.head(dropout(masked_mean(hidden, mask)))
        else:
            logits = self.hf(input_ids=ids, attention_mask=mask, **extra).logits
        features, self._features = self._features, None
        assert features is not None, "the classification head did not run"
        return logits, features


def hf_network(name: str, num_classes: int) -> HFClassifier:
    """Build `hf:<name-or-path>[:layers=N|every2][:pool=cls|mean]` for `num_classes` classes."""
    return HFClassifier(parse_hf_name(name), num_classes)
