"""MuonAdamW: orthogonalizers, every variant trains, per-group learning rates, schedules."""

import pytest
import torch

from model.config import ModelConfig, OptimConfig, TrainConfig
from model.gpt import GPT
from model.optim import MuonAdamW, build_optimizer, orthogonalize
from model.schedule import lr_multiplier, muon_momentum, weight_decay_multiplier

SHAPES = [(64, 256), (256, 64), (96, 384)]


def singular_band(method, steps=5):
    lo, hi = float("inf"), 0.0
    g = torch.Generator().manual_seed(0)
    for shape in SHAPES:
        sv = torch.linalg.svdvals(orthogonalize(torch.randn(3, *shape, generator=g), method, steps))
        lo, hi = min(lo, sv.min().item()), max(hi, sv.max().item())
    return lo, hi


def test_both_orthogonalizers_are_near_orthogonal_and_polar_express_is_tighter():
    ns_lo, ns_hi = singular_band("newton_schulz")
    pe_lo, pe_hi = singular_band("polar_express")
    # The quintic NS iteration deliberately stops in a band around 1 (roughly 0.7-1.15); Polar Express,
    # with a polynomial per step, lands much closer.
    assert 0.6 < ns_lo and ns_hi < 1.25, (ns_lo, ns_hi)
    assert 0.8 < pe_lo and pe_hi < 1.2, (pe_lo, pe_hi)
    assert pe_hi - pe_lo <= ns_hi - ns_lo


def test_orthogonalize_keeps_singular_vectors():
    g = torch.Generator().manual_seed(1)
    G = torch.randn(32, 128, generator=g)
    U, _, Vh = torch.linalg.svd(G, full_matrices=False)
    O = orthogonalize(G, "polar_express", 5)
    # O ~ U diag(s') Vh with s' ~ 1: projecting back onto G's singular vectors gives a near-diagonal matrix.
    core = U.T @ O @ Vh.T
    off_diagonal = core - torch.diag(torch.diagonal(core))
    assert off_diagonal.abs().max() < 0.05 and torch.diagonal(core).min() > 0.8


def test_more_steps_tighten_polar_express():
    lo3, hi3 = singular_band("polar_express", steps=3)
    lo5, hi5 = singular_band("polar_express", steps=5)
    assert hi5 - lo5 < hi3 - lo3


VARIANTS = [
    {},
    {"orthogonalizer": "newton_schulz"},
    {"ns_steps": 3},
    {"normuon": False},
    {"muon_eq": False},
    {"muon_plus": False},
    {"cautious_wd": False, "weight_decay": 0.5},
    {"nesterov": False},
    {"shape_scaling": False},
    {"wd_schedule": "constant"},
]


@pytest.mark.parametrize("variant", VARIANTS, ids=[",".join(f"{k}={v}" for k, v in v.items()) or "default" for v in VARIANTS])
def test_every_variant_lowers_the_loss_on_a_fixed_batch(variant):
    torch.manual_seed(0)
    config = ModelConfig.from_depth(2, vocab_size=128, sequence_len=32, head_dim=16, aspect_ratio=32)
    model = GPT(config)
    optim = OptimConfig(**variant)
    # A small batch with nanochat's LRs scaled by sqrt(batch/2^19) would barely move in 30 steps; the LR
    # rule is tested separately, here we check that each variant optimises.
    opt = build_optimizer(model, optim, total_batch_size=2 ** 19)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 128, (4, 32), generator=g)
    y = torch.roll(x, -1, dims=1)
    losses = []
    for step in range(30):
        for group in opt.param_groups:
            if group["kind"] == "muon":
                group["momentum"] = muon_momentum(step, step / 30, optim, TrainConfig())
        loss = model(x, y)
        loss.backward()
        opt.step()
        model.zero_grad(set_to_none=True)
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses


def test_variants_take_different_steps():
    """Each Muon switch must change the update itself, not just exist as a field."""
    def one_step(**variant):
        torch.manual_seed(0)
        config = ModelConfig.from_depth(2, vocab_size=128, sequence_len=32, head_dim=16, aspect_ratio=32,
                                        zero_init_proj=False)
        model = GPT(config)
        opt = build_optimizer(model, OptimConfig(**{"weight_decay": 0.5, **variant}), total_batch_size=2 ** 19)
        for _ in range(2):
            x = torch.randint(0, 128, (2, 32), generator=torch.Generator().manual_seed(0))
            model(x, torch.roll(x, -1, 1)).backward()
            opt.step()
            model.zero_grad()
        return model.blocks[0].mlp.c_fc.weight.detach().clone()

    base = one_step()
    for variant in VARIANTS[1:-1]:
        assert not torch.allclose(base, one_step(**variant)), variant


def test_per_group_learning_rates_follow_nanochat_scaling():
    config = ModelConfig.from_depth(4, vocab_size=128, sequence_len=32, head_dim=64)  # dim 256
    model = GPT(config)
    cfg = OptimConfig()
    opt = build_optimizer(model, cfg, total_batch_size=2 ** 17)  # batch scale sqrt(1/4) = 0.5
    by_param = {id(p): g for g in opt.param_groups for p in g["params"]}
    dim_scale = (256 / 768) ** -0.5
    assert by_param[id(model.lm_head.weight)]["lr"] == pytest.approx(cfg.unembedding_lr * dim_scale * 0.5)
    assert by_param[id(model.wte.weight)]["lr"] == pytest.approx(cfg.embedding_lr * dim_scale * 0.5)
    assert by_param[id(model.blocks[0].mlp.c_fc.weight)]["lr"] == pytest.approx(cfg.matrix_lr * 0.5)
    assert by_param[id(model.blocks[0].mlp.c_fc.weight)]["kind"] == "muon"
    assert by_param[id(model.wte.weight)]["kind"] == "adamw"
    muon_shapes = [tuple(g["params"][0].shape) for g in opt.param_groups if g["kind"] == "muon"]
    assert len(muon_shapes) == len(set(muon_shapes))  # one stacked group per shape


def test_muon_group_rejects_mixed_shapes():
    with pytest.raises(AssertionError, match="one 2-D shape"):
        MuonAdamW([dict(kind="muon", params=[torch.nn.Parameter(torch.zeros(2, 3)), torch.nn.Parameter(torch.zeros(3, 3))],
                        lr=0.1, weight_decay=0.0, momentum=0.9)])


def test_schedules():
    train = TrainConfig(warmup_steps=10, warmdown_ratio=0.5, final_lr_frac=0.1)
    assert lr_multiplier(0, 0.0, train) == pytest.approx(0.1)
    assert lr_multiplier(20, 0.3, train) == 1.0
    assert lr_multiplier(50, 0.75, train) == pytest.approx(0.5 + 0.5 * 0.1)
    assert lr_multiplier(99, 1.0, train) == pytest.approx(0.1)
    optim = OptimConfig(momentum_start=0.85, momentum_peak=0.95, momentum_warmup_steps=100, momentum_end=0.9)
    assert muon_momentum(0, 0.0, optim, train) == pytest.approx(0.85)
    assert muon_momentum(100, 0.4, optim, train) == pytest.approx(0.95)
    assert muon_momentum(1000, 1.0, optim, train) == pytest.approx(0.9)
    assert weight_decay_multiplier(0.0, OptimConfig()) == 1.0 and weight_decay_multiplier(1.0, OptimConfig()) == pytest.approx(0)
    assert weight_decay_multiplier(0.5, OptimConfig(wd_schedule="linear")) == 0.5
    assert weight_decay_multiplier(0.9, OptimConfig(wd_schedule="constant")) == 1.0


def nanochat_momentum(it: int, num_iterations: int, warmdown_ratio: float = 0.65) -> float:
    """nanochat's get_muon_momentum (scripts/base_train.py, master 92d63d4), in its own integer terms."""
    warmdown_iters = round(warmdown_ratio * num_iterations)
    warmdown_start = num_iterations - warmdown_iters
    if it < 400:
        return (1 - it / 400) * 0.85 + it / 400 * 0.97
    if it >= warmdown_start:
        progress = (it - warmdown_start) / warmdown_iters
        return 0.97 * (1 - progress) + 0.90 * progress
    return 0.97


@pytest.mark.parametrize("num_iterations", [300, 1000, 4000])
def test_the_default_momentum_schedule_is_nanochats(num_iterations):
    train, optim = TrainConfig(), OptimConfig()
    for step in (1, 200, 400, 1000):
        if step <= num_iterations:
            ours = muon_momentum(step, step / num_iterations, optim, train)
            assert ours == pytest.approx(nanochat_momentum(step, num_iterations), abs=1e-12), step
    # The alternative blends the warming-up value towards the end value: in a short run (warm-down from step 105
    # of 300) it differs from nanochat's, which keeps warming up and only then cools.
    cool = OptimConfig(momentum_schedule="cool_from_warm")
    assert abs(muon_momentum(200, 200 / 300, cool, train) - nanochat_momentum(200, 300)) > 0.004
    assert muon_momentum(3000, 0.75, cool, train) == pytest.approx(nanochat_momentum(3000, 4000))


def nanochat_muon_step(grads, params, momentum_buffer, second_moment, momentum, lr, weight_decay, beta2=0.9):
    """One Muon step for a stack of same-shape matrices, in float32, written from nanochat's muon_step_fused
    (nanochat/optim.py, master 92d63d4): Nesterov momentum, MuonEq, Polar Express (safety 1.01), Muon+, NorMuon's
    variance reduction, cautious weight decay, the LR scaled by sqrt(max(1, rows/cols)). Returns the new params."""
    from model.optim import POLAR_EXPRESS_COEFFS
    rows, cols = grads.shape[-2:]
    momentum_buffer.lerp_(grads, 1 - momentum)
    g = grads.lerp(momentum_buffer, momentum)
    target = g.norm(dim=(-2, -1), keepdim=True) / rows ** 0.5
    g = g * (target / g.norm(dim=-1, keepdim=True).clamp_min(1e-6))
    X = g / (g.norm(dim=(-2, -1), keepdim=True) * 1.01 + 1e-6)
    for a, b, c in POLAR_EXPRESS_COEFFS:
        if rows > cols:
            A = X.mT @ X
            X = a * X + X @ (b * A + c * (A @ A))
        else:
            A = X @ X.mT
            X = a * X + (b * A + c * (A @ A)) @ X
    g = X * (min(rows, cols) ** 0.5 / X.norm(dim=(-2, -1), keepdim=True).clamp_min(1e-6))
    red_dim = -1 if rows >= cols else -2
    v_mean = g.square().mean(dim=red_dim, keepdim=True)
    v_norm = (v_mean.sum(dim=(-2, -1), keepdim=True) * g.size(red_dim)).sqrt()
    second_moment.lerp_(v_mean, 1 - beta2)
    step_size = second_moment.clamp_min(1e-10).rsqrt()
    v_norm_new = (v_mean * g.size(red_dim) * step_size.square()).sum(dim=(-2, -1), keepdim=True).sqrt()
    g = g * step_size * (v_norm / v_norm_new.clamp_min(1e-10))
    lr = lr * max(1.0, rows / cols) ** 0.5
    mask = (g * params) >= 0
    return params - (lr * g + lr * weight_decay * params * mask)


def muon_steps(optim: OptimConfig, steps: int = 3):
    """Run a tiny fp32 GPT's Muon groups for a few steps on fixed random gradients; return every Muon group's
    parameters before and after, its gradients per step and the momentum / lr / weight decay each step used."""
    torch.manual_seed(0)
    config = ModelConfig.from_depth(2, vocab_size=128, sequence_len=32, head_dim=16, aspect_ratio=32, dtype="float32")
    model = GPT(config)
    opt = build_optimizer(model, optim, total_batch_size=2 ** 19, weight_decay=0.3)
    groups = [g for g in opt.param_groups if g["kind"] == "muon"]
    assert any(g["params"][0].shape[0] > g["params"][0].shape[1] for g in groups)  # tall and wide shapes both
    assert any(g["params"][0].shape[0] < g["params"][0].shape[1] for g in groups)
    gen = torch.Generator().manual_seed(1)
    start = [torch.stack([p.detach().clone() for p in g["params"]]) for g in groups]
    history = []
    for step in range(steps):
        settings = dict(momentum=muon_momentum(step, step / 100, optim, TrainConfig()), lr=0.02 * (1 - step / 10),
                        weight_decay=0.3 * (1 - step / 10))
        grads = []
        for g in groups:
            g.update(settings)
            for p in g["params"]:
                p.grad = torch.randn(p.shape, generator=gen)
            grads.append(torch.stack([p.grad.clone() for p in g["params"]]))
        for p in model.parameters():  # only the Muon groups move: the AdamW ones have no gradient
            if not any(p is q for g in groups for q in g["params"]):
                p.grad = None
        opt.step()
        history.append((grads, settings))
    return start, [torch.stack([p.detach() for p in g["params"]]) for g in groups], history


def reference_steps(start, history):
    params = [s.clone() for s in start]
    buffers = [torch.zeros_like(s) for s in start]
    seconds = [torch.zeros(s.shape[0], s.shape[1], 1) if s.shape[1] >= s.shape[2] else torch.zeros(s.shape[0], 1, s.shape[2])
               for s in start]
    for grads, settings in history:
        params = [nanochat_muon_step(g, p, b, v, **settings) for g, p, b, v in zip(grads, params, buffers, seconds)]
    return params


def test_one_muon_step_at_the_defaults_is_nanochats_to_float32_rounding():
    start, ours, history = muon_steps(OptimConfig())
    expected = reference_steps(start, history)
    for a, b, s in zip(ours, expected, start):
        assert (a - b).norm() <= 1e-5 * (b - s).norm() + 1e-7, ((a - b).norm(), (b - s).norm())
        assert (a - s).norm() > 0
    # The test sees the difference each of nanochat's choices makes (each alone moves the update by > 1%).
    for variant in ({"muon_plus": False}, {"muon_eq": False}, {"ortho_safety": 1.02}):
        _, other, _ = muon_steps(OptimConfig(**variant))
        moved = max(((a - b).norm() / (b - s).norm()).item() for a, b, s in zip(other, expected, start))
        assert moved > 0.01, (variant, moved)


def test_fused_adamw_matches_the_reference_update():
    """MuonAdamW's AdamW groups use torch's fused kernel; it must compute the written-out AdamW update."""
    g = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(64, 8, generator=g)), torch.nn.Parameter(torch.randn(5, generator=g))]
    grads = [[torch.randn(p.shape, generator=g) for p in params] for _ in range(4)]
    results = []
    for fused in (True, False):
        ps = [torch.nn.Parameter(p.detach().clone()) for p in params]
        opt = MuonAdamW([dict(kind="adamw", params=ps, lr=0.3, betas=(0.8, 0.995), eps=1e-10, weight_decay=0.01)],
                        fused_adamw=fused)
        for step_grads in grads:
            for p, grad in zip(ps, step_grads):
                p.grad = grad.clone()
            opt.step()
        results.append([p.detach() for p in ps])
    for a, b, start in zip(*results, params):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6) and not torch.allclose(a, start)


def test_relu_squared_gradient():
    from model.gpt import ReluSquared
    x = torch.randn(5, 7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(ReluSquared.apply, (x,))
    assert torch.equal(ReluSquared.apply(x), torch.relu(x) ** 2)
