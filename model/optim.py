"""
MuonAdamW: one optimizer object, Muon for the 2-D block matrices and AdamW for everything else.

Muon (https://kellerjordan.github.io/posts/muon/) runs SGD-momentum and replaces each matrix update by an
approximately orthogonal matrix with the same singular vectors. Variants, each an OptimConfig field:
- orthogonalizer: `newton_schulz` (the quintic iteration with coefficients (3.4445, -4.7750, 2.0315), which
  trades exact convergence for a steep slope at zero: singular values land in a band around 1) or
  `polar_express` (Amsel et al. 2025, https://arxiv.org/abs/2505.16932: a different polynomial per iteration,
  the 5-step list used by modded-nanogpt/nanochat, converging much tighter); number of steps; the normalisation
  safety factor.
- Nesterov momentum, with the momentum itself on a schedule (see model/schedule.py).
- NorMuon (https://arxiv.org/abs/2510.05491): after orthogonalising, normalise each row (or column) by a running
  second moment of the update, rescaled to keep the update's overall norm.
- MuonEq (https://arxiv.org/abs/2603.28254): rescale each row of the momentum to the mean row norm before
  orthogonalising, so the spectrum it starts from is better conditioned.
- Muon+ (https://arxiv.org/abs/2602.21545): rescale the orthogonalised update to the Frobenius norm of an exactly
  semi-orthogonal matrix, sqrt(min(rows, cols)), undoing the polynomial's under-convergence.
- cautious weight decay: decay only the coordinates where the update and the weight have the same sign.
- shape scaling: multiply the LR by sqrt(max(1, rows/cols)) so tall matrices take comparable steps.

The defaults are nanochat's (master, 92d63d4): MuonEq and Muon+ on, Polar Express with safety 1.01, NorMuon,
cautious weight decay, shape scaling; the orthogonalisation runs in the model's compute dtype (bf16 where that is
native). One Muon step agrees with one written from nanochat's formulas to float32 rounding (tests/test_optim.py).

AdamW groups follow nanochat: embeddings, lm_head, value embeddings and the per-layer scalars each with their
own LR and betas; AdamW LRs scale by (model_dim/768)^-0.5 (tuned at d12) and every LR by sqrt(batch/2^19), except
the smear and backout gates' (gate_lr, fixed as in nanochat).
Under torchrun the model is wrapped in DDP, so gradients arrive averaged over ranks and every rank applies
the same update; sharding the optimizer state is a later optimisation.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from model.config import REFERENCE_BATCH_TOKENS, OptimConfig, batch_lr_scale

# Quintic Newton-Schulz: one coefficient triple for every iteration (modded-nanogpt).
NEWTON_SCHULZ_COEFFS = (3.4445, -4.7750, 2.0315)
# Polar Express: computed for 5 iterations, safety factor 2e-2, cushion 2 (one triple per iteration).
POLAR_EXPRESS_COEFFS = [
    (8.156554524902461, -22.48329292557795, 15.878769915207462),
    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
]
REFERENCE_MODEL_DIM = 768


def orthogonalize(G: Tensor, method: str = "polar_express", steps: int = 5, safety: float = 1.01,
                  dtype: torch.dtype | None = None) -> Tensor:
    """Approximate the orthogonal polar factor U V^T of G (..., rows, cols) with an odd matrix polynomial, computed
    in `dtype` (default: bf16 on CUDA, as nanochat, else fp32; the iterations are stable in bf16)."""
    if dtype is None:
        dtype = torch.bfloat16 if G.is_cuda else torch.float32
    X = G.to(dtype)
    tall = X.size(-2) > X.size(-1)
    if tall:
        X = X.mT  # iterate on the wide orientation: the Gram matrix X X^T is then the smaller one
    X = X / (X.norm(dim=(-2, -1), keepdim=True) * safety + 1e-6)
    if method == "newton_schulz":
        coeffs = [NEWTON_SCHULZ_COEFFS] * steps
    else:
        coeffs = POLAR_EXPRESS_COEFFS[:steps] + [POLAR_EXPRESS_COEFFS[-1]] * max(0, steps - len(POLAR_EXPRESS_COEFFS))
    for a, b, c in coeffs:
        A = X @ X.mT
        B = b * A + c * (A @ A)
        X = a * X + B @ X
    if tall:
        X = X.mT
    return X.to(G.dtype)


def _undecorated(fn):
    return getattr(fn, "__wrapped__", fn)


class MuonAdamW(torch.optim.Optimizer):
    """param_groups: dicts with 'params', 'kind' ('adamw' | 'muon'), 'lr', 'weight_decay' and:
    adamw: 'betas', 'eps';  muon: 'momentum' and the Muon variant switches (see build_optimizer).
    Muon groups must hold parameters of one shape: they are stacked and orthogonalised as a batch."""

    def __init__(self, param_groups: list[dict], fused_adamw: bool = True, ortho_dtype: torch.dtype | None = None):
        self.fused_adamw = fused_adamw
        self.ortho_dtype = ortho_dtype  # Muon orthogonalises in the model's compute dtype (None: orthogonalize's)
        for group in param_groups:
            group.setdefault("initial_lr", group["lr"])
            group.setdefault("initial_weight_decay", group["weight_decay"])
            if group["kind"] == "muon":
                shapes = {tuple(p.shape) for p in group["params"]}
                assert len(shapes) == 1 and len(next(iter(shapes))) == 2, f"a Muon group needs one 2-D shape, got {shapes}"
        super().__init__(param_groups, defaults={})

    # torch wraps these in torch._disable_dynamo, whose first call imports all of torch._dynamo: 1.4 s of every
    # training process's start-up on a CPU, for an optimizer that is never compiled. Call the plain functions.
    def add_param_group(self, param_group: dict) -> None:
        _undecorated(torch.optim.Optimizer.add_param_group)(self, param_group)

    def state_dict(self) -> dict:
        return _undecorated(torch.optim.Optimizer.state_dict)(self)

    def load_state_dict(self, state_dict: dict) -> None:
        _undecorated(torch.optim.Optimizer.load_state_dict)(self, state_dict)

    @torch.no_grad()
    def step(self) -> None:
        for group in self.param_groups:
            if not group["params"]:
                continue
            if group["kind"] == "adamw":
                self._adamw(group)
            elif group["kind"] == "muon":
                self._muon(group)
            else:
                raise ValueError(f"unknown optimizer group kind {group['kind']!r}: expected adamw or muon")

    def _adamw(self, group: dict) -> None:
        params = [p for p in group["params"] if p.grad is not None]
        if not params:
            return
        for p in params:
            state = self.state[p]
            if not state:
                state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
                state["exp_avg"] = torch.zeros_like(p)
                state["exp_avg_sq"] = torch.zeros_like(p)
        grads = [p.grad for p in params]
        exp_avg = [self.state[p]["exp_avg"] for p in params]
        exp_avg_sq = [self.state[p]["exp_avg_sq"] for p in params]
        steps = [self.state[p]["step"] for p in params]
        torch._foreach_add_(steps, 1.0)
        beta1, beta2 = group["betas"]
        if self.fused_adamw and all(p.dtype == torch.float32 and p.device.type in ("cpu", "cuda") for p in params):
            # torch's fused AdamW kernel: the same update in one pass over memory instead of eight (the embedding
            # tables make this a visible share of a small model's step).
            torch._fused_adamw_(params, grads, exp_avg, exp_avg_sq, [], steps, lr=group["lr"], beta1=beta1,
                                beta2=beta2, weight_decay=group["weight_decay"], eps=group["eps"], amsgrad=False,
                                maximize=False)
            return
        adamw_reference(params, grads, exp_avg, exp_avg_sq, int(steps[0].item()), group["lr"], beta1, beta2,
                        group["weight_decay"], group["eps"])

    def _muon(self, group: dict) -> None:
        params: list[Tensor] = group["params"]
        first = self.state[params[0]]  # group-level buffers live in the first parameter's state
        rows, cols = params[0].shape
        if "momentum_buffer" not in first:
            first["momentum_buffer"] = torch.zeros(len(params), rows, cols, device=params[0].device)
            # NorMuon's second moment is factored along the longer side: one value per row of a tall matrix.
            factored = (len(params), rows, 1) if rows >= cols else (len(params), 1, cols)
            first["second_moment"] = torch.zeros(factored, device=params[0].device)
        grads = torch.stack([p.grad if p.grad is not None else torch.zeros_like(p) for p in params]).float()
        buf = first["momentum_buffer"]
        momentum = group["momentum"]
        buf.lerp_(grads, 1 - momentum)
        update = grads.lerp_(buf, momentum) if group["nesterov"] else buf.clone()
        if group["muon_eq"]:  # every row to the mean row norm: a better-conditioned spectrum to orthogonalise
            mean_row_norm = update.norm(dim=(-2, -1), keepdim=True) / rows ** 0.5
            update = update * (mean_row_norm / update.norm(dim=-1, keepdim=True).clamp_min(1e-6))
        update = orthogonalize(update, group["orthogonalizer"], group["ns_steps"], group["ortho_safety"],
                               self.ortho_dtype).float()
        if group.get("muon_plus", False):  # (.get: optimizer states saved before Muon+ existed resume without it)
            # The polynomial stops short of exact orthogonality; snap to the norm of a semi-orthogonal matrix.
            update = update * (min(rows, cols) ** 0.5 / update.norm(dim=(-2, -1), keepdim=True).clamp_min(1e-6))
        if group["normuon"]:
            update = self._normuon(update, first["second_moment"], group["normuon_beta2"], rows >= cols)
        lr = group["lr"] * (max(1.0, rows / cols) ** 0.5 if group["shape_scaling"] else 1.0)
        wd = group["weight_decay"]
        stacked = torch.stack(params).float()
        if wd:
            decay = stacked * lr * wd
            if group["cautious_wd"]:
                decay = decay * ((update * stacked) >= 0)
            stacked.sub_(decay)
        stacked.sub_(update, alpha=lr)
        torch._foreach_copy_(params, list(stacked.unbind(0)))

    @staticmethod
    def _normuon(update: Tensor, second_moment: Tensor, beta2: float, per_row: bool) -> Tensor:
        """Normalise each row (per_row) or column by the running RMS of the update, keeping the overall norm."""
        reduce_dim = -1 if per_row else -2
        mean_sq = update.square().mean(dim=reduce_dim, keepdim=True)
        second_moment.lerp_(mean_sq, 1 - beta2)
        scale = second_moment.clamp_min(1e-10).rsqrt()
        norm_before = update.square().sum(dim=(-2, -1), keepdim=True).sqrt()
        norm_after = (update.square() * scale.square()).sum(dim=(-2, -1), keepdim=True).sqrt()
        return update * (scale * norm_before / norm_after.clamp_min(1e-10))


def adamw_reference(params, grads, exp_avg, exp_avg_sq, step: int, lr: float, beta1: float, beta2: float,
                    weight_decay: float, eps: float) -> None:
    """AdamW with decoupled weight decay, written out with foreach ops (the fallback and the test reference)."""
    if weight_decay:
        torch._foreach_mul_(params, 1 - lr * weight_decay)
    torch._foreach_lerp_(exp_avg, grads, 1 - beta1)
    torch._foreach_mul_(exp_avg_sq, beta2)
    torch._foreach_addcmul_(exp_avg_sq, grads, grads, value=1 - beta2)
    bias1, bias2 = 1 - beta1 ** step, 1 - beta2 ** step
    denom = torch._foreach_sqrt(exp_avg_sq)
    torch._foreach_div_(denom, math.sqrt(bias2))
    torch._foreach_add_(denom, eps)
    torch._foreach_addcdiv_(params, exp_avg, denom, value=-lr / bias1)


def build_optimizer(model, cfg: OptimConfig, total_batch_size: int = REFERENCE_BATCH_TOKENS,
                    weight_decay: float | None = None) -> MuonAdamW:
    """MuonAdamW over `model.param_groups()` with nanochat's per-group LRs and betas.

    total_batch_size (tokens per optimizer step) scales every LR by sqrt(batch / 2^19); weight_decay overrides
    cfg.weight_decay (model.train passes the horizon-scaled value)."""
    cfg.validate()
    groups = model.param_groups()
    dim = model.config.model_dim
    batch_scale = batch_lr_scale(total_batch_size)
    adam_scale = (dim / REFERENCE_MODEL_DIM) ** -0.5 * batch_scale
    muon_wd = cfg.weight_decay if weight_decay is None else weight_decay

    def adamw(params, lr, betas, wd):
        return dict(kind="adamw", params=params, lr=lr, betas=betas, eps=1e-10, weight_decay=wd)

    param_groups = [
        adamw(groups["lm_head"], cfg.unembedding_lr * adam_scale, (0.8, 0.96), 0.01),
        adamw(groups["embedding"], cfg.embedding_lr * adam_scale, (0.8, 0.995), 0.001),
        adamw(groups["value_embeds"], cfg.embedding_lr * adam_scale * 0.5, (0.8, 0.995), 0.01),
        adamw(groups["resid_lambdas"], cfg.scalar_lr * 0.01 * batch_scale, (0.8, 0.95), 0.05),
        adamw(groups["x0_lambdas"], cfg.scalar_lr * batch_scale, (0.96, 0.95), 0.0),  # slow-moving blend
        adamw(groups["gates"], cfg.gate_lr, (0.8, 0.95), 0.0),
    ]
    muon_switches = dict(orthogonalizer=cfg.orthogonalizer, ns_steps=cfg.ns_steps, ortho_safety=cfg.ortho_safety,
                         nesterov=cfg.nesterov, normuon=cfg.normuon, normuon_beta2=cfg.normuon_beta2,
                         muon_eq=cfg.muon_eq, muon_plus=cfg.muon_plus, cautious_wd=cfg.cautious_wd,
                         shape_scaling=cfg.shape_scaling)
    matrices = groups["matrix"]
    for shape in sorted({tuple(p.shape) for p in matrices}):
        param_groups.append(dict(kind="muon", params=[p for p in matrices if tuple(p.shape) == shape],
                                 lr=cfg.matrix_lr * batch_scale, weight_decay=muon_wd,
                                 momentum=cfg.momentum_start, **muon_switches))
    return MuonAdamW([g for g in param_groups if g["params"]], ortho_dtype=model.compute_dtype())
