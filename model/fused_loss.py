"""
lm_head + logit soft-cap + cross-entropy, fused and chunked over rows.

The plain path materialises the (tokens x vocab) fp32 logits and then walks them half a dozen times (matmul,
divide, tanh, multiply, log-softmax, and the same again backwards). On a CPU that is memory-bound: at batch
8 x 256 and vocab 8192 the logits are 64 MB and those passes cost as much as every matmul in a small model.
Here the rows are processed in chunks that stay in cache, and the gradients with respect to the hidden states
and the lm_head weight are computed during the forward pass (the loss is always followed by backward in
training), so the logits never exist in full. Results equal the plain path to float rounding (tested).

d loss / d logit = (softmax(s) - onehot(target)) * (1 - tanh^2(z / cap)), with s = cap * tanh(z / cap).
"""

from __future__ import annotations

import torch


class LinearSoftcapCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, targets, vocab_size: int, softcap: float, reduction: str, chunk_rows: int):
        # x (N, C) activations, weight (padded_vocab, C) fp32 master weight, targets (N,) with -1 = ignore.
        N = x.size(0)
        w = weight[:vocab_size].to(x.dtype)
        valid = targets != -1
        n_valid = int(valid.sum())
        losses = torch.zeros(N, dtype=torch.float32, device=x.device)
        want_grad = (ctx.needs_input_grad[0] or ctx.needs_input_grad[1]) and reduction != "none"
        grad_x = torch.empty_like(x) if want_grad else None
        grad_w = torch.zeros_like(weight, dtype=torch.float32) if want_grad else None
        # With reduction='mean' each valid token's loss is weighted 1/n_valid; bake that into the gradients.
        weight_per_token = 1.0 / max(n_valid, 1) if reduction == "mean" else 1.0
        for start in range(0, N, chunk_rows):
            end = min(start + chunk_rows, N)
            xc, tc = x[start:end], targets[start:end]
            z = (xc @ w.T).float()
            if softcap > 0:
                t = torch.tanh(z.div_(softcap))  # z is scratch from here on
                s = t * softcap
            else:
                t, s = None, z
            lse = torch.logsumexp(s, dim=-1)
            safe = tc.clamp_min(0).unsqueeze(1)
            chunk_valid = valid[start:end]
            losses[start:end] = (lse - s.gather(1, safe).squeeze(1)) * chunk_valid
            if want_grad:
                g = s.sub_(lse.unsqueeze(1)).exp_()  # softmax, in place
                g.scatter_add_(1, safe, torch.full_like(safe, -1.0, dtype=g.dtype))
                g.mul_((chunk_valid * weight_per_token).unsqueeze(1))
                if t is not None:
                    g.mul_(1.0 - t.square_())
                g = g.to(x.dtype)
                grad_x[start:end] = g @ w
                grad_w[:vocab_size].addmm_(g.T.to(torch.float32), xc.to(torch.float32))
        if want_grad:
            ctx.save_for_backward(grad_x, grad_w)
        ctx.reduction = reduction
        if reduction == "mean":
            return losses.sum() / max(n_valid, 1)
        if reduction == "sum":
            return losses.sum()
        return losses

    @staticmethod
    def backward(ctx, grad_output):
        grad_x, grad_w = ctx.saved_tensors
        if ctx.reduction == "none":
            raise RuntimeError("the fused loss with reduction='none' is for evaluation only (no backward)")
        scale = grad_output.to(torch.float32)
        return (grad_x * scale.to(grad_x.dtype), (grad_w * scale).to(grad_w.dtype) if grad_w is not None else None,
                None, None, None, None, None)


def linear_softcap_cross_entropy(x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, vocab_size: int,
                                 softcap: float, reduction: str = "mean", chunk_rows: int = 256) -> torch.Tensor:
    """Cross-entropy of softcap(x @ weight[:vocab].T) against targets (-1 ignored), without full logits.
    x (N, C), targets (N,). reduction: mean (over valid targets) | sum | none (per row, 0 where ignored)."""
    return LinearSoftcapCrossEntropy.apply(x, weight, targets, vocab_size, softcap, reduction, chunk_rows)
