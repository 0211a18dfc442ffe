"""The decoder LM as a bidirectional denoiser, with the LM head applied to masked positions only.

Only masked positions carry a target, so projecting every position onto the vocabulary (49k-152k
columns) would waste most of the head's FLOPs and memory; we gather the masked hidden states first.
The loss is computed inside ``forward`` so that DDP/FSDP wrap one module whose forward runs the
whole graph (calling submodules from outside would bypass gradient synchronisation).

The forward returns sums, not means, so that evaluation can aggregate exactly across batches and
processes: ``loss_sum / loss_count`` is the objective of the batch.
- diffusion: per sequence, sum of CE / t over masked positions, divided by the sequence length;
  loss_sum adds these per-sequence values and loss_count is the number of sequences.
- mntp: the hidden state at i - 1 predicts the masked token at i; loss_sum adds CE over targets and
  loss_count is the number of targets.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from diffembed.training.objectives import IGNORE

OBJECTIVES = ("diffusion", "mntp")


def causal_lm_of(model: nn.Module) -> nn.Module:
    """The transformers *ForCausalLM under an optional peft wrapper."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


class MaskedDenoiser(nn.Module):
    def __init__(self, lm: nn.Module, objective: str = "diffusion"):
        super().__init__()
        if objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
        self.lm = lm
        self.objective = objective
        causal = causal_lm_of(lm)
        self.softcap = getattr(causal.config, "final_logit_softcapping", None)

    @property
    def causal_lm(self) -> nn.Module:
        return causal_lm_of(self.lm)

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = self.causal_lm.get_output_embeddings()(hidden).float()
        if self.softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor,
                t: torch.Tensor) -> dict[str, torch.Tensor]:
        backbone = self.causal_lm.get_decoder()
        hidden = backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        if self.objective == "mntp":
            hidden, labels = hidden[:, :-1], labels[:, 1:]
        rows, cols = (labels != IGNORE).nonzero(as_tuple=True)
        targets = labels[rows, cols]
        logits = self._logits(hidden[rows, cols])
        ce = F.cross_entropy(logits, targets, reduction="none")
        if self.objective == "diffusion":
            lengths = attention_mask.sum(dim=1).clamp(min=1).to(ce.dtype)
            weights = 1.0 / (t.to(ce.dtype)[rows] * lengths[rows])
            loss_sum = (ce * weights).sum()
            loss_count = torch.tensor(float(input_ids.shape[0]), device=ce.device)
        else:
            loss_sum = ce.sum()
            loss_count = torch.tensor(float(targets.numel()), device=ce.device)
        if targets.numel() == 0:  # nothing masked: keep a graph so every process runs backward
            loss_sum = loss_sum + hidden.sum() * 0.0
        correct = (logits.argmax(dim=-1) == targets).sum()
        return {
            "loss": loss_sum / loss_count.clamp(min=1.0),
            "loss_sum": loss_sum.detach(),
            "loss_count": loss_count,
            "correct": correct.to(torch.float64),
            "total": torch.tensor(float(targets.numel()), dtype=torch.float64, device=ce.device),
        }
