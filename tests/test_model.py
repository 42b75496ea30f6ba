"""The GPT: causality, every switch really changes the computation, shapes, counts, backends, cache, errors."""

import dataclasses
import math
import re

import pytest
import torch
import torch.nn.functional as F

from model.attention import attend
from model.config import TIERS, ConfigError, ModelConfig, OptimConfig, TrainConfig, parse_set_args, split_overrides
from model.fused_loss import linear_softcap_cross_entropy
from model.gpt import GPT
from model.kv_cache import KVCache

# Short windows unrounded (8 tokens at sequence 32), so the windowed paths are exercised at these sizes; fp32, so
# the numerics tests compare exact math (a CPU with native bf16 would pick bf16 under "auto").
TINY = dict(vocab_size=256, sequence_len=32, head_dim=16, aspect_ratio=32, short_window_multiple=1, dtype="float32")


def tiny_config(depth=3, **overrides) -> ModelConfig:
    return ModelConfig.from_depth(depth, **{**TINY, **overrides})


def build(config, seed=0) -> GPT:
    torch.manual_seed(seed)
    return GPT(config)


def randomize(model: GPT, seed=1) -> GPT:
    """Give every parameter random values that depend only on its name and shape, so two models that share a
    parameter get the same values for it. (At init several tweaks are exact no-ops by design: smear_lambda = 0,
    zero output projections; random weights expose what the switch computes.)"""
    with torch.no_grad():
        for name, p in model.named_parameters():
            g = torch.Generator().manual_seed(seed + sum(ord(ch) * (i + 1) for i, ch in enumerate(name)))
            p.copy_(torch.randn(p.shape, generator=g) * (0.5 if p.ndim < 2 else p.shape[-1] ** -0.5))
    return model


def tokens(B=2, T=32, seed=0, vocab=256):
    return torch.randint(0, vocab, (B, T), generator=torch.Generator().manual_seed(seed))


# --- the depth dial ----------------------------------------------------------------------------------------

def test_depth_dial_follows_nanochat_rules():
    c = ModelConfig.from_depth(12)
    assert (c.model_dim, c.n_head, c.n_kv_head, c.head_dim) == (768, 6, 6, 128)
    c = ModelConfig.from_depth(20, head_dim=128)
    assert c.model_dim == 1280 and c.n_head == 10
    c = ModelConfig.from_depth(3, head_dim=64)  # 3 * 64 = 192 -> 192, 3 heads
    assert (c.model_dim, c.n_head) == (192, 3)
    c = ModelConfig.from_depth(5, head_dim=128)  # 320 rounds up to 384
    assert (c.model_dim, c.n_head) == (384, 3)


# nanochat's scripts/base_train.py (master 92d63d4) at its record settings (vocab 32768, sequence 2048, head dim 128,
# aspect 64, weight decay 0.28), computed by hand from its formulas: scaling params p = L x 12 d^2 + 32768 d (block
# matrices + lm_head); batch = 2^round(log2(2^19 x (p / p_d12)^0.383)); LR scale = sqrt(batch / 2^19);
# weight decay = 0.28 x sqrt(batch / 2^19) x p_d12 / p. (nanochat's count also has the value-embedding gates, 12 x heads
# weights on every other layer: 2e-6 of p at d24, below the last digit of every number here.)
NANOCHAT_DIAL = {  # depth: (scaling params, batch, LR scale, weight decay)
    12: (110_100_480, 524_288, 1.0, 0.28),
    20: (435_159_040, 1_048_576, 1.414214, 0.100188),
    24: (729_808_896, 1_048_576, 1.414214, 0.059738),
    26: (918_421_504, 1_048_576, 1.414214, 0.047470),
}


@pytest.mark.parametrize("depth", sorted(NANOCHAT_DIAL))
def test_the_gpu_tiers_batch_learning_rates_and_weight_decay_are_nanochats(depth, tmp_path):
    from model.config import batch_lr_scale
    from model.train import build_parser, resolve_setup, scaled_weight_decay
    params, batch, lr_scale, weight_decay = NANOCHAT_DIAL[depth]
    for ratio in ("8", "12"):  # the record's ratio and nanochat's default: neither moves batch or weight decay
        args = build_parser().parse_args(["--depth", str(depth), "--tier", "gpu", "--out", str(tmp_path),
                                          "--param-data-ratio", ratio])
        setup = resolve_setup(args, torch.device("cpu"), world=8)
        assert setup.model_config.scaling_params() == params
        assert setup.train.total_batch_size == batch
        assert batch_lr_scale(setup.train.total_batch_size) == pytest.approx(lr_scale, abs=1e-6)
        assert scaled_weight_decay(setup) == pytest.approx(weight_decay, abs=1e-6)
    # A batch given by hand is kept, and the weight decay follows it.
    args = build_parser().parse_args(["--depth", str(depth), "--tier", "gpu", "--out", str(tmp_path),
                                      "--set", "total_batch_size=524288"])
    setup = resolve_setup(args, torch.device("cpu"))
    assert setup.train.total_batch_size == 524_288
    assert scaled_weight_decay(setup) == pytest.approx(0.28 * NANOCHAT_DIAL[12][0] / params, abs=1e-6)


def test_the_cpu_tier_keeps_its_measured_batch_and_weight_decay(tmp_path):
    from model.train import build_parser, resolve_setup, scaled_weight_decay
    args = build_parser().parse_args(["--depth", "4", "--tier", "cpu", "--out", str(tmp_path)])
    setup = resolve_setup(args, torch.device("cpu"))
    assert setup.train.total_batch_size == 2048 and scaled_weight_decay(setup) == setup.optim.weight_decay


def test_the_cpu_tiers_smear_and_backout_lr_short_window_and_smear_gate_are_nanochats(tmp_path):
    """nanochat gives the smear and backout scalars a fixed LR of 0.2 (not scaled by batch: at the cpu tier's 2048
    tokens a batch-scaled LR would be 16x smaller), starts the smear gate at U(0, 0.02), and rounds the short
    window up to 128 tokens (a quarter of 256 would be 64)."""
    from model.optim import build_optimizer
    from model.train import build_parser, resolve_setup
    args = build_parser().parse_args(["--depth", "2", "--tier", "cpu", "--out", str(tmp_path)])
    setup = resolve_setup(args, torch.device("cpu"))
    torch.manual_seed(0)
    model = GPT(setup.model_config)
    opt = build_optimizer(model, setup.optim, total_batch_size=setup.train.total_batch_size)
    by_param = {id(p): g for g in opt.param_groups for p in g["params"]}
    for p in (model.smear_gate.weight, model.smear_lambda, model.backout_lambda):
        assert by_param[id(p)]["lr"] == 0.2 and by_param[id(p)]["weight_decay"] == 0.0
    assert by_param[id(model.wte.weight)]["lr"] < setup.optim.embedding_lr  # the others still scale with batch
    gate = model.smear_gate.weight
    assert 0.0 <= gate.min() and gate.max() <= 0.02 and gate.std() > 0.002  # uniform on [0, 0.02], not zero
    assert model.smear_lambda.item() == 0.0 and model.backout_lambda.item() == pytest.approx(0.2)
    assert model.window_sizes == [128, None]


def test_window_sizes_tile_the_pattern_and_last_layer_is_full():
    c = tiny_config(depth=5, window_pattern="SL", short_window_frac=0.25)
    assert c.window_sizes() == [8, None, 8, None, None]
    assert tiny_config(depth=4, window_pattern="SSSL").window_sizes() == [8, 8, 8, None]
    assert tiny_config(depth=4, window_pattern="S").window_sizes()[-1] is None


def test_the_short_window_is_rounded_up_to_a_multiple_of_128_as_nanochat():
    """nanochat: ceil(sequence_len / 4) rounded up to FlashAttention-3's 128-token tile."""
    def short(sequence_len, **overrides):
        return ModelConfig.from_depth(4, sequence_len=sequence_len, **overrides).window_sizes()[0]
    assert short(256) == 128  # the cpu tier: a quarter would be 64
    assert short(2048) == 512 and short(1024) == 256 and short(640) == 256 and short(1000) == 256
    assert short(256, short_window_multiple=1) == 64 and short(256, short_window_multiple=64) == 64
    cpu = {k: TIERS["cpu"][k] for k in ("vocab_size", "sequence_len", "head_dim")}
    assert ModelConfig.from_depth(2, **cpu).window_sizes() == [128, None]


def test_value_embeds_on_alternating_layers_including_last():
    for depth in (1, 2, 3, 4, 5):
        c = tiny_config(depth=depth)
        layers = [i for i in range(depth) if c.has_value_embed(i)]
        assert depth - 1 in layers and all(b - a == 2 for a, b in zip(layers, layers[1:]))
    assert not any(tiny_config(depth=4, value_embeds=False).has_value_embed(i) for i in range(4))


# --- the forward pass ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("overrides", [{}, {"window_pattern": "SSL", "n_kv_head": 1}, {"smear": False, "backout": False}])
def test_causality(overrides):
    model = randomize(build(tiny_config(**overrides)))
    x = tokens(B=1)
    logits = model(x)
    for t in (0, 10, 30):
        x2 = x.clone()
        x2[0, t + 1] = (x2[0, t + 1] + 1) % 256
        logits2 = model(x2)
        assert torch.allclose(logits[0, : t + 1], logits2[0, : t + 1], atol=1e-5), f"position <= {t} saw the future"
        assert not torch.allclose(logits[0, t + 1], logits2[0, t + 1]), "the changed token itself must matter"


def test_loss_matches_logits_and_ignores_minus_one():
    model = randomize(build(tiny_config()))
    x, y = tokens(seed=1), tokens(seed=2)
    y[:, ::3] = -1
    logits = model(x)
    expected = F.cross_entropy(logits.view(-1, 256), y.view(-1), ignore_index=-1)
    assert torch.allclose(model(x, y), expected, atol=1e-5)
    per_token = model(x, y, loss_reduction="none")
    assert per_token.shape == (2, 32) and torch.all(per_token[:, ::3] == 0)


def test_init_loss_is_log_vocab():
    model = build(tiny_config())
    loss = model(tokens(), tokens(seed=3))
    assert abs(loss.item() - math.log(256)) < 0.05  # tiny lm_head init: near-uniform predictions


SWITCHES = [
    ("smear", False), ("backout", False), ("value_embeds", False), ("layer_lambdas", False),
    ("softcap", 0.0), ("softcap", 5.0), ("qk_scale", 1.0), ("rope_base", 10000.0),
    ("window_pattern", "L"), ("short_window_frac", 0.5), ("n_kv_head", 1), ("ve_gate_range", 2.0),
    ("mlp_ratio", 2),
]


@pytest.mark.parametrize("field,value", SWITCHES, ids=[f"{f}={v}" for f, v in SWITCHES])
def test_each_switch_changes_the_computation(field, value):
    base = tiny_config(window_pattern="SSL")
    assert getattr(base, field) != value
    x = tokens()
    reference = randomize(build(base))(x)
    assert torch.equal(reference, randomize(build(base))(x)), "same config must give identical outputs"
    changed_config = tiny_config(**{"window_pattern": "SSL", field: value})
    changed = randomize(build(changed_config))(x)
    assert not torch.allclose(reference, changed, atol=1e-4), f"{field}={value} did not change the outputs"
    assert changed_config.effective_settings() != base.effective_settings()  # the search's no-op check sees it


@pytest.mark.parametrize("a,b", [
    (dict(depth=1, window_pattern="SSSL"), dict(depth=1, window_pattern="L")),  # depth 1: its one layer is full
    (dict(window_pattern="SSSL", short_window_frac=1.0), dict(window_pattern="L")),  # a window as long as the sequence
    (dict(window_pattern="SL"), dict(window_pattern="SLSL")),  # the same windows at depth 3
    (dict(short_window_frac=0.25, short_window_multiple=16), dict(short_window_frac=0.5)),  # both: 16 at 32 tokens
], ids=["depth1", "full-window", "same-tiling", "same-short-window"])
def test_configs_with_equal_effective_settings_compute_the_same_model(a, b):
    """What the search's no-op check (harness/search.py) relies on: configs that differ in their fields but not in
    their effective settings give the same parameters and the same outputs, bit for bit."""
    first, second = tiny_config(**a), tiny_config(**b)
    assert first != second and first.effective_settings() == second.effective_settings()
    x = tokens()
    assert torch.equal(randomize(build(first))(x), randomize(build(second))(x))


INIT_SWITCHES = [  # field, value, the parameter whose initial values it sets
    ("embedding_init_std", 0.3, "wte.weight"), ("lm_head_init_std", 0.05, "lm_head.weight"),
    ("fc_init_scale", 1.0, "blocks.0.mlp.c_fc.weight"), ("x0_lambda_init", 0.5, "x0_lambdas"),
    ("resid_lambda_final", 0.9, "resid_lambdas"), ("backout_init", 0.5, "backout_lambda"),
    ("zero_init_proj", False, "blocks.1.attn.c_proj.weight"),
]


@pytest.mark.parametrize("field,value,param", INIT_SWITCHES, ids=[f"{f}={v}" for f, v, _ in INIT_SWITCHES])
def test_each_init_switch_changes_the_initial_weights(field, value, param):
    base = tiny_config()
    assert getattr(base, field) != value
    before = dict(build(base).named_parameters())[param]
    after = dict(build(tiny_config(**{field: value})).named_parameters())[param]
    assert not torch.allclose(before, after)


def test_per_parameter_init_keeps_shared_parameters_identical_across_a_structural_change():
    """Common random numbers: with init_per_param, removing value embeddings or a kv head leaves every parameter
    the two models share exactly as it was; from the one global stream (nanochat's), every draw after the first
    added or reshaped module shifts. Either way the init is a function of the seed, and its scale is the same."""
    def init(seed=0, **kw):
        return dict(build(tiny_config(depth=4, **kw), seed=seed).named_parameters())

    for change in ({"value_embeds": False}, {"n_kv_head": 1}):
        a, b = init(init_per_param=True), init(init_per_param=True, **change)
        shared = [n for n in a if n in b and a[n].shape == b[n].shape]
        assert all(torch.equal(a[n], b[n]) for n in shared) and len(shared) >= 10
        c, d = init(), init(**change)
        assert not torch.equal(c["wte.weight"], d["wte.weight"])
    assert torch.equal(init(init_per_param=True)["wte.weight"], init(init_per_param=True)["wte.weight"])
    assert not torch.equal(init(init_per_param=True)["wte.weight"], init(seed=1, init_per_param=True)["wte.weight"])
    for name in ("wte.weight", "blocks.2.attn.c_q.weight", "blocks.0.mlp.c_fc.weight"):
        assert init(init_per_param=True)[name].std().item() == pytest.approx(init()[name].std().item(), rel=0.1)


def test_zero_init_changes_the_initial_function():
    x = tokens()
    assert not torch.allclose(build(tiny_config())(x), build(tiny_config(zero_init_proj=False))(x), atol=1e-5)


def test_zero_init_projections_make_blocks_start_as_identity():
    model = build(tiny_config())
    for block in model.blocks:
        assert torch.all(block.attn.c_proj.weight == 0) and torch.all(block.mlp.c_proj.weight == 0)
    assert all(torch.any(b.attn.c_proj.weight != 0) for b in build(tiny_config(zero_init_proj=False)).blocks)


def test_gqa_and_mqa_shapes():
    for n_kv in (4, 2, 1):
        c = tiny_config(depth=2, aspect_ratio=64, n_kv_head=n_kv)  # dim 128, 8 heads of 16
        assert c.n_head == 8
        model = build(c)
        attn = model.blocks[0].attn
        assert attn.c_q.weight.shape == (8 * 16, 128)
        assert attn.c_k.weight.shape == attn.c_v.weight.shape == (n_kv * 16, 128)
        assert model.value_embeds["1"].weight.shape == (256, n_kv * 16)
        assert model(tokens()).shape == (2, 32, 256)


def test_parameter_and_flop_counts_match_a_hand_count():
    # depth 2, dim 64 (4 heads of 16), 2 kv heads, vocab 256 (no padding), seq 32, windows S then L.
    c = tiny_config(depth=2, aspect_ratio=32, n_kv_head=2, window_pattern="SL", short_window_frac=0.25)
    model = build(c)
    d, kv, V, L = 64, 2 * 16, 256, 2
    per_block = d * d + 2 * d * kv + d * d + 2 * 4 * d * d  # q, k+v, proj, mlp
    ve_gate = 12 * 2  # only the last layer (index 1) has a value embedding with its gate
    counts = model.num_params()
    assert counts["matrix"] == L * per_block + ve_gate
    assert counts["embedding"] == V * d and counts["lm_head"] == V * d
    assert counts["value_embeds"] == V * kv
    assert counts["resid_lambdas"] == counts["x0_lambdas"] == L
    assert counts["gates"] == 24 + 1 + 1
    assert counts["total"] == sum(p.numel() for p in model.parameters())
    attention = 12 * 4 * 16 * 8 + 12 * 4 * 16 * 32  # layer 0 sees 8 keys (window), layer 1 all 32
    assert model.num_flops_per_token() == 6 * (L * per_block + ve_gate + V * d) + attention


def test_vocab_is_padded_but_logits_are_cropped():
    model = build(tiny_config(vocab_size=250))
    assert model.wte.weight.shape[0] == 256 and model(tokens(vocab=250)).shape[-1] == 250


# --- attention backends and the KV cache ----------------------------------------------------------------------

@pytest.mark.parametrize("window,q_offset,n_kv", [(None, 0, 4), (5, 0, 4), (5, 0, 1), (None, 24, 2), (6, 24, 2), (3, 31, 4)])
def test_attention_backends_agree(window, q_offset, n_kv):
    g = torch.Generator().manual_seed(0)
    S = 32
    T = S - q_offset
    q = torch.randn(2, T, 4, 16, generator=g)
    k, v = torch.randn(2, S, n_kv, 16, generator=g), torch.randn(2, S, n_kv, 16, generator=g)
    reference = attend(q, k, v, window, q_offset, "eager")
    for backend in ("sdpa", "flex"):
        assert torch.allclose(attend(q, k, v, window, q_offset, backend), reference, atol=1e-5), backend


def test_sliding_window_limits_what_a_query_sees():
    q = torch.randn(1, 16, 1, 8)
    k, v = torch.randn(1, 16, 1, 8), torch.randn(1, 16, 1, 8)
    y = attend(q, k, v, 3, 0, "sdpa")
    k2, v2 = k.clone(), v.clone()
    k2[:, 0], v2[:, 0] = 100.0, 100.0  # position 0 is outside the window of queries >= 4
    y2 = attend(q, k2, v2, 3, 0, "sdpa")
    assert torch.allclose(y[:, 4:], y2[:, 4:]) and not torch.allclose(y[:, :4], y2[:, :4])


@pytest.mark.parametrize("overrides", [{}, {"window_pattern": "SSL", "n_kv_head": 1}, {"smear": False, "value_embeds": False},
                                       {"backout": False, "layer_lambdas": False, "softcap": 0.0}])
def test_cached_decoding_equals_full_recompute(overrides):
    model = randomize(build(tiny_config(**overrides))).eval()
    x = tokens(B=2)
    with torch.no_grad():
        full = model(x)
        cache = KVCache.for_model(model, batch_size=2, max_len=32)
        prefill = model(x[:, :20], kv_cache=cache)
        steps = [model(x[:, t:t + 1], kv_cache=cache) for t in range(20, 32)]
    assert torch.allclose(prefill, full[:, :20], atol=1e-4)
    assert torch.allclose(torch.cat(steps, dim=1), full[:, 20:], atol=1e-4)


def test_cache_expand_gives_independent_rows():
    model = randomize(build(tiny_config())).eval()
    x = tokens(B=1)
    with torch.no_grad():
        cache = KVCache.for_model(model, batch_size=1, max_len=32)
        model(x[:, :16], kv_cache=cache)
        many = cache.expand(3)
        nxt = torch.tensor([[1], [2], [3]])
        out = model(nxt, kv_cache=many)
        for i in range(3):
            single = model(torch.cat([x[:, :16], nxt[i:i + 1]], dim=1))[:, -1]
            assert torch.allclose(out[i, -1], single[0], atol=1e-4)


# --- fused loss, determinism, state dicts ---------------------------------------------------------------------

def test_fused_loss_matches_plain_cross_entropy_and_gradients():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(100, 16, generator=g, requires_grad=True)
    w = torch.randn(64, 16, generator=g, requires_grad=True)
    t = torch.randint(0, 60, (100,), generator=g)
    t[::9] = -1
    for cap in (15.0, 0.0):
        fused = linear_softcap_cross_entropy(x, w, t, 60, cap, "mean", chunk_rows=32)
        gx, gw = torch.autograd.grad(fused * 3, (x, w))
        z = x @ w[:60].T
        plain = F.cross_entropy(cap * torch.tanh(z / cap) if cap else z, t, ignore_index=-1)
        px, pw = torch.autograd.grad(plain * 3, (x, w))
        assert torch.allclose(fused, plain, atol=1e-5)
        assert torch.allclose(gx, px, atol=1e-5) and torch.allclose(gw, pw, atol=1e-5)


def test_fused_loss_in_bf16_matches_the_fp32_path_within_bf16_rounding():
    """bf16 activations (a CPU with native bf16): the matmuls run in bf16, the weight's gradient lands in fp32."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(100, 32, generator=g).bfloat16().requires_grad_()
    w = torch.randn(64, 32, generator=g, requires_grad=True)  # the fp32 master weight
    t = torch.randint(0, 60, (100,), generator=g)
    t[::7] = -1
    fused = linear_softcap_cross_entropy(x, w, t, 60, 15.0, "mean", chunk_rows=32)
    gx, gw = torch.autograd.grad(fused, (x, w))
    xf = x.detach().float().requires_grad_()
    plain = F.cross_entropy(15.0 * torch.tanh(xf @ w[:60].T / 15.0), t, ignore_index=-1)
    px, pw = torch.autograd.grad(plain, (xf, w))
    assert gx.dtype == torch.bfloat16 and gw.dtype == torch.float32
    assert abs(fused.item() - plain.item()) < 1e-2 * plain.item()
    # The loss is the one the plain path (bf16 logits, then the soft-cap in fp32) gives, to fp32 rounding: what the
    # sealed evaluator recomputes from the logits.
    logits = F.linear(x.detach(), w.detach()[:60].bfloat16()).float()
    sealed = F.cross_entropy(15.0 * torch.tanh(logits / 15.0), t, ignore_index=-1)
    assert abs(fused.item() - sealed.item()) < 1e-6 * sealed.item()
    for ours, exact in ((gx.float(), px), (gw, pw)):
        assert (ours - exact).norm() < 2e-2 * exact.norm()


def train_steps(seed, steps=3):
    from model.optim import build_optimizer
    model = build(tiny_config(), seed=seed)
    opt = build_optimizer(model, OptimConfig(), total_batch_size=64)
    losses = []
    for i in range(steps):
        loss = model(tokens(seed=10 + i), tokens(seed=20 + i))
        loss.backward()
        opt.step()
        model.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return model, opt, losses


def test_training_is_deterministic_under_a_seed():
    m1, _, l1 = train_steps(seed=7)
    m2, _, l2 = train_steps(seed=7)
    _, _, l3 = train_steps(seed=8)
    assert l1 == l2 and l1 != l3
    assert all(torch.equal(a, b) for a, b in zip(m1.state_dict().values(), m2.state_dict().values()))


def test_state_dict_round_trip_continues_identically(tmp_path):
    from model.optim import build_optimizer
    model, opt, _ = train_steps(seed=3, steps=2)
    torch.save({"model": model.state_dict(), "optim": opt.state_dict()}, tmp_path / "ck.pt")
    restored = build(tiny_config(), seed=99)
    ropt = build_optimizer(restored, OptimConfig(), total_batch_size=64)
    saved = torch.load(tmp_path / "ck.pt")
    restored.load_state_dict(saved["model"])
    ropt.load_state_dict(saved["optim"])
    for m, o in ((model, opt), (restored, ropt)):
        loss = m(tokens(seed=50), tokens(seed=51))
        loss.backward()
        o.step()
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), restored.state_dict().values()))


# --- bad configuration ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("overrides,needle", [
    ({"n_kv_head": 4}, "n_kv_head=4"),
    ({"window_pattern": "SXL"}, "window_pattern='SXL'"),
    ({"softcap": -1.0}, "softcap=-1.0"),
    ({"attention_backend": "magic"}, "attention_backend='magic'"),
    ({"smear": "yes"}, "smear='yes'"),
    ({"head_dim": 15}, "head_dim=15"),
    ({"dtype": "fp8"}, "dtype='fp8'"),
    ({"nonsense": 1}, "'nonsense'"),
])
def test_bad_model_config_errors_name_the_field(overrides, needle):
    with pytest.raises(ConfigError) as info:
        tiny_config(**overrides)
    message = str(info.value)
    assert needle in message and "expected" in message and "\n" not in message


def test_bad_optim_and_train_values_and_set_parsing():
    with pytest.raises(ConfigError, match="orthogonalizer='svd'.*polar_express"):
        OptimConfig(orthogonalizer="svd").validate()
    with pytest.raises(ConfigError, match="warmdown_ratio=1.5"):
        TrainConfig(warmdown_ratio=1.5).validate()
    with pytest.raises(ConfigError, match="unknown config field 'matrx_lr'"):
        split_overrides({"matrx_lr": "0.1"})
    with pytest.raises(ConfigError, match="matrix_lr='fast': expected a number"):
        split_overrides({"matrix_lr": "fast"})
    with pytest.raises(ConfigError, match="--set 'smear'"):
        parse_set_args(["smear"])
    model, optim, train = split_overrides(parse_set_args(["smear=off", "matrix_lr=0.01", "eval_every=7"]))
    assert model == {"smear": False} and optim == {"matrix_lr": 0.01} and train == {"eval_every": 7}


def test_validate_refuses_just_outside_every_declared_legal_range():
    """A field's legal values are declared once, on the field (model/config.py's `setting`); validate() enforces
    them: a value just outside each one (an open end itself, a step past a closed one, an unknown choice, a string
    that does not match) is refused with the field's name and what it accepts."""
    from model.config import field_types
    checked = set()
    for cls in (ModelConfig, OptimConfig, TrainConfig):
        kinds = field_types(cls)
        for f in dataclasses.fields(cls):
            legal = f.metadata.get("legal")
            if legal is None:
                continue
            if legal.choices:
                bad = ["bogus"]
            elif legal.pattern is not None:
                bad = ["", "SXL"]
            else:
                step = 1 if kinds[f.name] is int else 0.5
                bad = [legal.low if legal.low_open else legal.low - step] if legal.low is not None else []
                bad += [legal.high if legal.high_open else legal.high + step] if legal.high is not None else []
            for value in bad:
                config = cls()
                setattr(config, f.name, kinds[f.name](value))
                with pytest.raises(ConfigError, match=re.escape(f"{f.name}=") + ".*" + re.escape(f": expected {legal.expected}")):
                    config.validate()
                checked.add(f.name)
    assert {"depth", "short_window_frac", "window_pattern", "dtype", "ns_steps", "momentum_peak", "warmdown_ratio",
            "param_data_ratio"} <= checked and len(checked) >= 40


def test_auto_dtype_is_bf16_where_the_cpu_multiplies_bf16_natively(monkeypatch):
    import model.hardware
    from model.gpt import compute_dtype
    config = ModelConfig.from_depth(2, **{**TINY, "dtype": "auto"})
    cpu = torch.device("cpu")
    monkeypatch.setattr(model.hardware, "cpu_has_bf16_matmul", lambda: True)
    assert compute_dtype(config, cpu) == torch.bfloat16
    assert compute_dtype(ModelConfig.from_depth(2, **TINY), cpu) == torch.float32  # asked for fp32: fp32
    monkeypatch.setattr(model.hardware, "cpu_has_bf16_matmul", lambda: False)
    assert compute_dtype(config, cpu) == torch.float32  # emulated bf16 would be slower than fp32
    assert compute_dtype(ModelConfig.from_depth(2, **{**TINY, "dtype": "bfloat16"}), cpu) == torch.bfloat16
