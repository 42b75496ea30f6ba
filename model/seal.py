"""
The sealed re-score of a finished run: its final checkpoint scored by trusted code from the model's logits.

A run whose model code was changed by a patch reports a val_bpb that its own code helped compute: the training loop
asks the model for its loss (`model(x, y, loss_reduction="none")`), and a forward that scales that loss, or that
lets position t see token t+1, would report a better number than the model earns. This command scores the final
checkpoint again without trusting the model for anything but its logits:

- the settings come from the run's own command line, resolved by the trusted config (the tier, the --set values,
  the depth dial), never from the run dir, which the patched process wrote;
- the validation set is the one the run evaluated on (the trusted loader, the harness's tokenizer; every rank's
  share when the run trained on several devices);
- bits per byte is summed here: log-sum-exp of the logits minus the target's logit, in float64 sums, over the UTF-8
  bytes of the targets (the tokenizer's byte table);
- a causality probe must pass: changing the tokens after position t, and the other rows of the batch, must leave
  the logits at positions <= t unchanged (a few cuts on real validation rows);
- CORE, when the run recorded one, is evaluated again (CORE already scores from logits).

    python -m model.seal --depth 2 --tier cpu --out RUN_DIR --tokenizer DIR --data DIR [--set k=v ...] [--world N]

The arguments are the run's `model.train` arguments (extra ones such as --resume are accepted and ignored). The
harness runs it in the patch's worktree, in the sandbox, with the run dir read-only, and reads one JSON object from
the last line of stdout: {"val_bpb", "steps", "causal", "probe_max_diff", "probe_tolerance", "core"}. Exit 0 when
the run could be scored (a failed probe is a score, `causal: false`), 1 when it could not, 2 for bad arguments.
"""

from __future__ import annotations

import json
import math
import signal
import sys
from pathlib import Path

import torch

from model.checkpoint import latest_checkpoint
from model.config import ConfigError
from model.gpt import GPT
from model.run_dir import read_result
from model.train import BadInput, build_parser, resolve_setup, select_device

PROBE_CUTS = (0, 1, 0.5, 0.9)  # positions t (an index, or a fraction of the sequence) after which tokens change
# Logits at positions <= t may differ by float rounding at most (they are computed from the same inputs).
PROBE_RTOL = 1e-4


class SealError(RuntimeError):
    """The run cannot be scored: one line saying why."""


def _logits(model, x: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """The model's logits for x (B, T), checked for shape and finiteness, in float32."""
    logits = model(x)
    B, T = x.shape
    if not isinstance(logits, torch.Tensor) or tuple(logits.shape) != (B, T, vocab_size):
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise SealError(f"model(idx) returned {shape}: expected logits of shape {(B, T, vocab_size)}")
    return logits.float()


@torch.no_grad()
def bits_per_byte(model, batches, token_bytes: torch.Tensor, vocab_size: int) -> float:
    """Bits per byte from the logits alone: sum over targets of -log softmax(logits)[target] (nats), divided by
    ln 2 x the targets' UTF-8 bytes. Targets that are -1 or special tokens (0 bytes) count in neither sum."""
    total_nats = torch.zeros((), dtype=torch.float64)
    total_bytes = 0
    for x, y in batches:
        logits = _logits(model, x, vocab_size)
        if not torch.isfinite(logits).all():
            raise SealError("the model returned non-finite logits on the validation set")
        y = y.to(logits.device)
        target = y.clamp(min=0)
        nats = torch.logsumexp(logits, dim=-1) - logits.gather(-1, target.unsqueeze(-1)).squeeze(-1)
        nbytes = torch.where(y >= 0, token_bytes.to(y.device)[target], 0)
        total_nats += torch.where(nbytes > 0, nats.double(), 0.0).sum().cpu()
        total_bytes += int(nbytes.sum())
    if total_bytes == 0:
        raise SealError("no validation targets with a byte length > 0")
    return total_nats.item() / (math.log(2) * total_bytes)


@torch.no_grad()
def causality_probe(model, rows: torch.Tensor, vocab_size: int, seed: int = 0) -> tuple[float, float]:
    """(largest change of a logit at a position <= t, the tolerance) over PROBE_CUTS: for each cut t, row 0 keeps its
    first t+1 tokens and gets random ones after them, and row 1 is replaced by random tokens. A causal model whose
    rows are independent gives the same logits for row 0 up to t, to float rounding."""
    g = torch.Generator().manual_seed(seed)
    x = rows[:2].clone()
    if x.size(0) < 2:
        x = torch.cat([x, x])
    T = x.size(1)
    worst = scale = 0.0
    for cut in PROBE_CUTS:
        t = min(T - 2, cut if isinstance(cut, int) else int(cut * T))
        changed = x.clone()
        changed[0, t + 1:] = torch.randint(0, vocab_size, (T - t - 1,), generator=g).to(x.device)
        changed[1] = torch.randint(0, vocab_size, (T,), generator=g).to(x.device)
        before, after = _logits(model, x, vocab_size), _logits(model, changed, vocab_size)
        worst = max(worst, (before[0, :t + 1] - after[0, :t + 1]).abs().max().item())
        scale = max(scale, before[0, :t + 1].abs().max().item())
    return worst, PROBE_RTOL * max(1.0, scale)


def load_final_model(setup, run_dir: Path) -> tuple[GPT, int]:
    """The model the run's config describes, with the weights of its latest checkpoint; (model, its step)."""
    path = latest_checkpoint(run_dir)
    if path is None:
        raise SealError(f"{run_dir}: no checkpoint to score")
    try:  # tensors and plain containers only: nothing in a file the patched process wrote is executed
        state = torch.load(path, map_location=setup.device, weights_only=True)
        with torch.device(setup.device):
            model = GPT(setup.model_config)
        model.load_state_dict(state["model"])
    except Exception as e:  # any failure to rebuild the model is one line
        raise SealError(f"cannot load {path} into the model of this run's settings: {type(e).__name__}: "
                        f"{str(e).splitlines()[0] if str(e) else ''}") from None
    model.eval()
    return model, int(state.get("step", -1))


def score(argv: list[str]) -> dict:
    args, _ = build_parser().parse_known_args(argv)  # the run's own arguments; --world: the ranks it trained on
    if not args.tokenizer:
        raise BadInput("--tokenizer: the sealed score needs the tokenizer the run was given (not the run dir's copy)")
    args.world = args.world or 1
    if args.world < 1:
        raise BadInput(f"--world {args.world}: expected a positive number of ranks")
    from model.loader import validation_batches
    from model.sources import resolve_source
    from model.tokenizer import Tokenizer

    device = select_device(args, 0, 1)
    setup = resolve_setup(args, device)
    run_dir, train, vocab = setup.run_dir, setup.train, setup.model_config.vocab_size
    tokenizer = Tokenizer.load(args.tokenizer)
    source = resolve_source(args.data)
    model, step = load_final_model(setup, run_dir)
    batches = [b for rank in range(args.world)
               for b in validation_batches(tokenizer, source, train.device_batch_size, setup.model_config.sequence_len,
                                           train.eval_tokens, rank=rank, world_size=args.world, device=device,
                                           spread=train.eval_spread)]
    if not batches:
        raise SealError("the validation split gave no batches")
    worst, tolerance = causality_probe(model, batches[0][0], vocab)
    val_bpb = bits_per_byte(model, batches, tokenizer.token_bytes(), vocab)
    core = None
    reported = read_result(run_dir)
    if reported is not None and reported.core is not None:
        from model.evaluate import evaluate_core, resolve_eval_bundle
        core = evaluate_core(model, tokenizer, resolve_eval_bundle(args.eval_bundle),
                             max_per_task=train.core_max_per_task or None, device=device, progress=False)["core"]
    return {"val_bpb": val_bpb, "steps": step, "causal": worst <= tolerance, "probe_max_diff": worst,
            "probe_tolerance": tolerance, "core": core}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the sandbox's launcher ignores it; a job's stop must end this
    try:
        scored = score(argv)
    except (BadInput, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except SealError as e:
        print(f"seal: {e}", file=sys.stderr)
        return 1
    print(json.dumps(scored), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
