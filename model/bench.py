"""
`python -m model.bench --depth D [--device cpu|cuda] [--steps N] [--compile] [--set key=value ...]`

Throughput of one full training step (forward, backward, optimizer) on random tokens: ms/step, tokens/s,
achieved FLOP/s and, on a GPU with a known peak, MFU. A benchmark, not a test: it prints numbers.
"""

from __future__ import annotations

import statistics
import sys
import time

import torch

from model.cli import ArgumentParser
from model.config import TIERS, ConfigError, ModelConfig, OptimConfig, parse_set_args, split_overrides
from model.gpt import GPT
from model.hardware import peak_flops, synchronize
from model.optim import build_optimizer


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m model.bench", description=__doc__.strip().splitlines()[0])
    parser.add_argument("--depth", type=int, required=True)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tier", choices=sorted(TIERS), default=None, help="defaults: cpu on CPU, gpu on CUDA")
    parser.add_argument("--steps", type=int, default=20, help="timed steps (after warm-up)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation, allocator)")
    parser.add_argument("--batch-size", type=int, default=None, help="sequences per step (default: the tier's)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any ModelConfig/OptimConfig field")
    args = parser.parse_args(argv)

    try:
        device = torch.device(args.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError("--device cuda: no CUDA device is available")
        tier = TIERS[args.tier or ("gpu" if device.type == "cuda" else "cpu")]
        model_over, optim_over, train_over = split_overrides(parse_set_args(args.set))
        if train_over:
            raise ConfigError(f"--set {next(iter(train_over))}: training fields do not apply to the benchmark")
        model_keys = ("vocab_size", "sequence_len", "head_dim")
        config = ModelConfig.from_depth(args.depth, **{**{k: tier[k] for k in model_keys}, **model_over})
        optim_cfg = OptimConfig(**optim_over)
        optim_cfg.validate()
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)

    batch = args.batch_size or tier["device_batch_size"]
    T = config.sequence_len
    torch.manual_seed(0)
    with torch.device(device):
        model = GPT(config)
    optimizer = build_optimizer(model, optim_cfg, total_batch_size=batch * T)
    step_model = torch.compile(model) if args.compile else model
    x = torch.randint(0, config.vocab_size, (batch, T), device=device)
    y = torch.randint(0, config.vocab_size, (batch, T), device=device)

    def train_step():
        loss = step_model(x, y)
        loss.backward()
        optimizer.step()
        model.zero_grad(set_to_none=True)
        return loss

    params = model.num_params()
    print(f"bench: depth {config.depth}, dim {config.model_dim}, heads {config.n_head}/{config.n_kv_head} kv, "
          f"vocab {config.vocab_size}, seq {T}, batch {batch}, windows {config.window_pattern}, "
          f"{params['total'] / 1e6:.2f}M params ({params['scaling'] / 1e6:.2f}M matmul), device {device}, "
          f"dtype {model.compute_dtype()}, attention {model.attention_backend()}, compile {args.compile}, "
          f"threads {torch.get_num_threads()}", flush=True)
    t0 = time.perf_counter()
    for _ in range(args.warmup):
        train_step()
    synchronize(device)
    print(f"bench: warm-up {args.warmup} steps in {time.perf_counter() - t0:.1f}s", flush=True)
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        train_step()
        synchronize(device)
        times.append(time.perf_counter() - t0)

    step_s = statistics.median(times)
    tokens_per_s = batch * T / step_s
    flops_per_s = model.num_flops_per_token() * tokens_per_s
    print(f"ms/step     {step_s * 1e3:10.1f}   (median of {args.steps}; min {min(times) * 1e3:.1f}, max {max(times) * 1e3:.1f})")
    print(f"tokens/s    {tokens_per_s:10,.0f}")
    print(f"GFLOP/s     {flops_per_s / 1e9:10.1f}   ({model.num_flops_per_token() / 1e6:.1f} MFLOP/token)")
    peak = peak_flops(device)
    if peak:
        print(f"MFU         {100 * flops_per_s / peak:10.1f}%  (peak {peak / 1e12:.0f} TFLOP/s bf16, {torch.cuda.get_device_name(device)})")
    elif device.type == "cuda":
        print(f"MFU         unknown peak for {torch.cuda.get_device_name(device)}")
    if device.type == "cuda":
        print(f"peak memory {torch.cuda.max_memory_allocated(device) / 2**30:10.2f} GiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
