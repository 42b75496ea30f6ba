"""
What must be true on a GPU, checked in one go (scripts/gpu_check.sh runs this; under ten minutes on one H100/H200):

  1. device     the GPU, torch/CUDA versions, bf16 support and the peak the MFU is measured against
  2. attention  FlexAttention with a sliding window agrees with SDPA (and both with the eager reference)
  3. compile    torch.compile'd forward+backward agrees with eager, in bf16
  4. speed      d12 training throughput (compiled, bf16) and MFU; goal >= 41% (nanochat), aim 50%
  5. fp8        fp8 vs bf16 throughput at d12 and at a d24-shaped layer (model/fp8.py, torchao tensorwise)
  6. train      a short d12 run of `python -m model.train` (fitted device batch): val_bpb falls; peak memory
  7. sandbox    the same trainer inside the patch sandbox (harness/sandbox.py) still sees the GPU

`--cpu` runs every check at tiny sizes on the CPU (the test suite does, so that everything this script calls works
before a GPU is at hand): depth 1-2 models, short sequences, float32. The training check needs a corpus: --data, else
$NANORESEARCH_DATA, else a small one written from this repository's own source files (the GPU machine is offline).

Each check prints one line `CHECK <name>: PASS|FAIL|SKIP  <numbers>`; the exit code is the number of FAILs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from model import fp8  # noqa: E402
from model.attention import attend  # noqa: E402
from model.config import TIERS, ModelConfig, OptimConfig  # noqa: E402
from model.gpt import GPT  # noqa: E402
from model.hardware import peak_flops, synchronize  # noqa: E402
from model.optim import build_optimizer  # noqa: E402

FAILED: list[str] = []


def report(name: str, ok: bool | None, detail: str) -> None:
    status = "SKIP" if ok is None else "PASS" if ok else "FAIL"
    if ok is False:
        FAILED.append(name)
    print(f"CHECK {name}: {status}  {detail}", flush=True)


def device_check(device: torch.device) -> None:
    if device.type != "cuda":
        report("device", None, f"cpu ({os.cpu_count()} cores), torch {torch.__version__}: the CPU fallback sizes")
        return
    name = torch.cuda.get_device_name(device)
    peak = peak_flops(device)
    report("device", torch.cuda.is_bf16_supported(), f"{name}, torch {torch.__version__}, CUDA {torch.version.cuda}, "
           f"bf16 {'yes' if torch.cuda.is_bf16_supported() else 'NO'}, peak {peak / 1e12:.0f} TFLOP/s" if peak else
           f"{name}: unknown peak (MFU not measurable)")


def attention_check(device: torch.device, small: bool) -> None:
    T, H, D, window = (64, 2, 16, 16) if small else (2048, 6, 128, 512)
    dtype = torch.float32 if small else torch.bfloat16
    g = torch.Generator(device=device).manual_seed(0)
    q, k, v = (torch.randn(2, T, H, D, device=device, dtype=dtype, generator=g) for _ in range(3))
    reference = attend(q.float(), k.float(), v.float(), window, 0, "eager")
    diffs = {b: (attend(q, k, v, window, 0, b).float() - reference).abs().max().item() for b in ("sdpa", "flex")}
    tolerance = 1e-5 if small else 2e-2
    report("attention", all(d <= tolerance for d in diffs.values()),
           f"window {window} of {T}: max |flex - eager| {diffs['flex']:.2e}, |sdpa - eager| {diffs['sdpa']:.2e} "
           f"(tolerance {tolerance:g}, {dtype})")


def model_config(depth: int, small: bool) -> ModelConfig:
    tier = TIERS["cpu" if small else "gpu"]
    keys = ("vocab_size", "sequence_len", "head_dim")
    values = {k: tier[k] for k in keys}
    if small:
        values.update(vocab_size=512, sequence_len=64)
    return ModelConfig.from_depth(depth, **values)


def compile_check(device: torch.device, small: bool) -> None:
    config = model_config(1 if small else 12, small)
    torch.manual_seed(0)
    with torch.device(device):
        model = GPT(config)
    x = torch.randint(0, config.vocab_size, (2, config.sequence_len), device=device)
    t0 = time.perf_counter()
    eager = model(x, x)
    try:
        compiled = torch.compile(model)(x, x)
    except Exception as e:  # the check reports any failure to compile in one line
        report("compile", False, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
        return
    compiled.backward()
    diff = abs(compiled.item() - eager.item())
    report("compile", diff <= 1e-2 * abs(eager.item()), f"depth {config.depth}: loss eager {eager.item():.5f}, "
           f"compiled {compiled.item():.5f}, dtype {model.compute_dtype()}, {time.perf_counter() - t0:.1f}s "
           "including compilation")


def speed_check(device: torch.device, small: bool, use_fp8: bool = False) -> float | None:
    """Training tokens/s of the d12 model (compiled, bf16; with use_fp8 its eligible Linears in fp8)."""
    config = model_config(2 if small else 12, small)
    batch = 4 if small else 32
    steps, warmup = (3, 1) if small else (20, 5)
    torch.manual_seed(0)
    with torch.device(device):
        model = GPT(config)
    if use_fp8:
        fp8.convert(model, emulate=small)
    optimizer = build_optimizer(model, OptimConfig(), total_batch_size=batch * config.sequence_len)
    step_model = model if small else torch.compile(model)
    x = torch.randint(0, config.vocab_size, (batch, config.sequence_len), device=device)

    def step():
        step_model(x, x).backward()
        optimizer.step()
        model.zero_grad(set_to_none=True)
    for _ in range(warmup):
        step()
    synchronize(device)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        synchronize(device)
        times.append(time.perf_counter() - t0)
    tok_s = batch * config.sequence_len / statistics.median(times)
    if use_fp8:
        return tok_s
    peak = peak_flops(device)
    mfu = model.num_flops_per_token() * tok_s / peak if peak else None
    detail = (f"depth {config.depth}, batch {batch}x{config.sequence_len}: {tok_s:,.0f} tok/s"
              + (f", MFU {100 * mfu:.1f}% (goal >= 41%, aim 50%)" if mfu is not None else ", MFU unknown (no peak)"))
    report("speed", None if mfu is None else mfu >= 0.41, detail)
    return tok_s


def layer_ms(device: torch.device, use_fp8: bool, small: bool) -> float:
    """Forward + backward of one d24-shaped MLP input Linear (1536 -> 6144) on 16k tokens, in ms (bf16 or fp8)."""
    d, n = (128, 256) if small else (1536, 16384)
    layer = torch.nn.Sequential(torch.nn.Linear(d, 4 * d, bias=False)).to(device)
    if use_fp8:
        fp8.convert(layer, emulate=small)
    x = torch.randn(n, d, device=device, dtype=torch.float32 if small else torch.bfloat16, requires_grad=True)
    for _ in range(3):
        layer(x).sum().backward()
    synchronize(device)
    t0 = time.perf_counter()
    for _ in range(10):
        layer(x).sum().backward()
    synchronize(device)
    return (time.perf_counter() - t0) / 10 * 1e3


def fp8_check(device: torch.device, small: bool, bf16_tok_s: float | None) -> None:
    if small or fp8.supported(device):
        # On a CPU only the emulation runs (tests/test_fp8.py checks its numerics); exercise the same calls here.
        layer_ms(device, True, small=True)
        report("fp8", None, "no fp8 GPU here (" + (fp8.supported(device) or "CPU sizes") + "): emulation ran; "
               "no fp8 vs bf16 speed")
        return
    fp8_tok_s = speed_check(device, small, use_fp8=True)
    bf16_ms, fp8_ms = layer_ms(device, False, small), layer_ms(device, True, small)
    speedup = fp8_tok_s / bf16_tok_s if bf16_tok_s else None
    report("fp8", speedup is not None and speedup > 1.0,
           f"d12: {fp8_tok_s:,.0f} tok/s fp8 vs {bf16_tok_s or 0:,.0f} bf16 (x{speedup or 0:.2f}); d24-shaped Linear "
           f"1536->6144 on 16k tokens: {fp8_ms:.2f} ms fp8 vs {bf16_ms:.2f} ms bf16 (x{bf16_ms / fp8_ms:.2f})")


def corpus(data: str | None, workdir: Path) -> str:
    """--data, $NANORESEARCH_DATA, or two parquet shards (train, val) of this repository's own text files."""
    if data or os.environ.get("NANORESEARCH_DATA"):
        return data or os.environ["NANORESEARCH_DATA"]
    import pyarrow as pa
    import pyarrow.parquet as pq
    texts = [p.read_text(errors="replace") for p in sorted(REPO.rglob("*")) if p.suffix in (".py", ".md", ".toml")
             and ".venv" not in p.parts and ".git" not in p.parts and p.is_file()]
    chunks = [t[i:i + 2000] for t in texts for i in range(0, len(t), 2000)]
    out = workdir / "corpus"
    out.mkdir(parents=True, exist_ok=True)
    split = max(1, len(chunks) // 10)
    pq.write_table(pa.table({"text": chunks[split:]}), out / "shard_00000.parquet")
    pq.write_table(pa.table({"text": chunks[:split]}), out / "shard_00001.parquet")  # the last shard is validation
    return str(out)


def train_command(small: bool, data: str, out: Path) -> list[str]:
    depth, steps = ("1", "6") if small else ("12", "60")
    command = ["-m", "model.train", "--depth", depth, "--tier", "cpu" if small else "gpu", "--out", str(out), "--data",
               data, "--num-iterations", steps, "--eval-every", str(int(steps) // 2), "--set", "log_every=0",
               "--set", "warmup_steps=2"]
    if small:
        command += ["--set", "vocab_size=512", "--set", "sequence_len=64", "--set", "device_batch_size=4",
                    "--set", "total_batch_size=256", "--set", "eval_tokens=2048", "--set", "tokenizer_max_chars=400000",
                    "--set", "matrix_lr=0.32", "--set", "embedding_lr=4.8", "--set", "unembedding_lr=0.128"]
    else:
        command += ["--set", "vocab_size=8192", "--set", "eval_tokens=1048576", "--set", "tokenizer_max_chars=20000000"]
    return [sys.executable, *command]


def run_training(name: str, command: list[str], out: Path, env: dict) -> dict | None:
    t0 = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, env=env, timeout=900)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        report(name, False, f"exit {done.returncode}: {last[:300]}")
        return None
    points = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    result = json.loads((out / "result.json").read_text())
    config = json.loads((out / "config.json").read_text())
    first, last = points[0]["val_bpb"], points[-1]["val_bpb"]
    speed = f"{result['tok_per_s']:,.0f} tok/s, " if result.get("tok_per_s") else ""
    report(name, last < first, f"val_bpb {first:.4f} -> {last:.4f} in {result['steps']} steps, "
           f"{speed}device batch {config['train']['device_batch_size']}, "
           f"peak memory {result.get('peak_memory_bytes', 0) / 2**30:.2f} GiB, {time.perf_counter() - t0:.0f}s")
    return result


def train_checks(small: bool, data: str | None, workdir: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANTHROPIC_")}
    source = corpus(data, workdir)
    run_training("train", train_command(small, source, workdir / "run"), workdir / "run", env)
    from harness.sandbox import unavailable
    if why := unavailable():
        report("sandbox", None, why)
        return
    # The same run, shorter, in the sandbox patched code runs in: it must still see the GPU (the /dev/nvidia* binds).
    # The tokenizer comes from the first run (the sandbox cannot write the tokenizer cache).
    boxed = workdir / "boxed"
    sandboxed = [sys.executable, "-m", "harness.sandbox", "--cwd", str(REPO), "--write", str(boxed), "--read", source,
                 "--", *train_command(small, source, boxed), "--num-iterations", "4", "--eval-every", "2",
                 "--tokenizer", str(workdir / "run" / "tokenizer")]
    run_training("sandbox", sandboxed, boxed, env)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--cpu", action="store_true", help="every check at tiny sizes on the CPU")
    parser.add_argument("--data", default=None, help="a corpus for the training checks (default: see the docstring)")
    parser.add_argument("--skip-train", action="store_true", help="leave out the training and sandbox checks")
    args = parser.parse_args(argv)
    small = args.cpu or not torch.cuda.is_available()
    device = torch.device("cpu" if small else "cuda")
    if small and not args.cpu:
        print("no CUDA device: running the CPU fallbacks (--cpu)", flush=True)
    device_check(device)
    attention_check(device, small)
    compile_check(device, small)
    bf16_tok_s = speed_check(device, small)
    fp8_check(device, small, bf16_tok_s)
    if not args.skip_train:
        with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
            train_checks(small, args.data, Path(tmp))
    print(f"gpu_check: {len(FAILED)} failed" + (f" ({', '.join(FAILED)})" if FAILED else ""), flush=True)
    return len(FAILED)


if __name__ == "__main__":
    sys.exit(main())
