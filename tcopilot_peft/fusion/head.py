"""The Copilot's loss straight from its output `u` and the Pilot's LM head `W`, without the |V|-sized correction
f = W·u ever existing whole.

In training only the loss of f is needed, and for the fused cross-entropy the only |V|-sized part of it is one
log-sum-exp over the vocabulary (`fused_cross_entropy`'s tail, or its dense normaliser). `head_logsumexp` computes it
in vocabulary chunks, and its gradient with respect to u, Σ_v softmax_v·W_v, in the same pass (as fused
linear-cross-entropy kernels do): the forward makes the two products with W that the unfused forward and backward
make, and nothing |V|-sized is kept for the backward.
"""

from __future__ import annotations

import torch


# Logits per chunk (rows × vocabulary columns, 32 MiB of float32): memory stays bounded whatever |V| and the number of
# rows, and each chunk is wide enough that the per-chunk work does not turn into many small kernels (measured on a
# loaded 2-core CPU, 2,048-column chunks ran 2× slower than one pass over 16,000 columns at 512 rows).
HEAD_CHUNK_ELEMENTS = 2**23


def head_logsumexp(
    u: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    excluded: torch.Tensor | None = None,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """log Σ_v exp(W_v·u + b_v) per row, over the vocabulary minus each row's `excluded` ids.

    Args:
        u (`torch.Tensor` of shape `(N, d)`): the Copilot's output, in `weight`'s dtype; differentiable.
        weight (`torch.Tensor` of shape `(vocab, d)`): the LM head, a constant (no gradient reaches it).
        bias (`torch.Tensor` of shape `(N, vocab)`, *optional*): a constant added to the logits (e.g. log p̂).
        excluded (`torch.LongTensor` of shape `(N, m)`, *optional*): ids left out of each row's sum, as
            `fused_cross_entropy`'s tail leaves them out: their logits become the lowest finite float, so a row
            with every id excluded keeps a finite value and gradient (which its caller discards).
        chunk_size (`int`, *optional*): vocabulary rows of W per chunk; defaults to `HEAD_CHUNK_ELEMENTS` logits.

    Returns:
        `torch.Tensor` of shape `(N,)`, float32.
    """
    if weight.requires_grad or (bias is not None and bias.requires_grad):
        raise ValueError("head_logsumexp differentiates with respect to u only: pass the head and bias detached.")
    chunk_size = chunk_size or max(1, HEAD_CHUNK_ELEMENTS // max(1, u.shape[0]))
    return _HeadLogSumExp.apply(u, weight, bias, excluded, chunk_size)


class _HeadLogSumExp(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, weight, bias, excluded, chunk_size):
        need_grad = ctx.needs_input_grad[0]
        rows = u.shape[0]
        lowest = torch.finfo(torch.float32).min
        running_max = torch.full((rows,), lowest, device=u.device)
        running_sum = torch.zeros(rows, device=u.device)
        # Σ_v e^{logit_v − running_max} W_v, rescaled as the running maximum grows: the gradient's direction.
        direction = torch.zeros(rows, weight.shape[1], device=u.device) if need_grad else None
        for start in range(0, weight.shape[0], chunk_size):
            block = weight[start : start + chunk_size]
            logits = torch.nn.functional.linear(u, block).float()
            if bias is not None:
                logits += bias[:, start : start + block.shape[0]]
            if excluded is not None:
                _mask_excluded(logits, excluded, start, lowest)
            new_max = torch.maximum(running_max, logits.amax(-1))
            rescale = (running_max - new_max).exp()
            weights = logits.sub_(new_max.unsqueeze(-1)).exp_()
            running_sum = running_sum * rescale + weights.sum(-1)
            if need_grad:
                direction = direction * rescale.unsqueeze(-1) + weights.to(block.dtype) @ block
            running_max = new_max
        if need_grad:
            ctx.save_for_backward(direction / running_sum.unsqueeze(-1))
            ctx.u_dtype = u.dtype
        return running_max + running_sum.log()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_output):
        (direction,) = ctx.saved_tensors
        return (grad_output.unsqueeze(-1) * direction).to(ctx.u_dtype), None, None, None, None


def _mask_excluded(logits: torch.Tensor, excluded: torch.Tensor, start: int, lowest: float) -> None:
    """Set the excluded ids that fall in this chunk (columns `start …`) to the lowest finite float, in place."""
    local = excluded - start
    inside = (local >= 0) & (local < logits.shape[-1])
    row_ids = torch.arange(logits.shape[0], device=logits.device).unsqueeze(-1).expand_as(local)
    logits[row_ids[inside], local[inside]] = lowest
