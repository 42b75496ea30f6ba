"""Bits per byte against a hand computation from the definition, with special tokens and ignored targets
that must not count, and the same number on every rank under torch.distributed."""

import math
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from model.evaluate import evaluate_bpb

# Every position predicts the same distribution: p(0)=1/2, p(1)=1/4, p(2)=1/8, p(3)=1/8. So the loss of
# target t is t+1 bits for t in 0..2 and 3 bits for t=3. Token 3 is a special token (0 bytes).
LOG_PROBS = torch.log(torch.tensor([0.5, 0.25, 0.125, 0.125]))
TOKEN_BYTES = torch.tensor([2, 1, 4, 0], dtype=torch.int32)


class FixedDistribution(torch.nn.Module):
    def __init__(self, flat_loss: bool = False):
        super().__init__()
        self.flat_loss = flat_loss  # nanochat's GPT returns reduction="none" losses flattened to (B*T,)

    def forward(self, idx, targets=None, loss_reduction="mean"):
        logits = LOG_PROBS.expand(*idx.shape, 4)
        loss = F.cross_entropy(logits.reshape(-1, 4), targets.reshape(-1), ignore_index=-1, reduction=loss_reduction)
        return loss if self.flat_loss else loss.view(targets.shape)


def batch(targets):
    y = torch.tensor(targets, dtype=torch.long)
    return torch.zeros_like(y), y


@pytest.mark.parametrize("flat_loss", [False, True])
def test_bpb_by_hand(flat_loss):
    batches = [
        batch([[0, 1, -1], [2, 3, 0]]),  # counted: 0 (1 bit, 2 bytes), 1 (2 bits, 1 byte), 2 (3 bits, 4 bytes), 0
        batch([[1, 1, 3, -1]]),          # counted: 1, 1; the special token 3 and the -1 are not
    ]
    bits = 1 + 2 + 3 + 1 + 2 + 2
    nbytes = 2 + 1 + 4 + 2 + 1 + 1
    assert evaluate_bpb(FixedDistribution(flat_loss), batches, TOKEN_BYTES) == pytest.approx(bits / nbytes)
    # a ratio of totals, not a mean of per-batch ratios
    per_batch = (7 / 9 + 4 / 2) / 2
    assert not math.isclose(bits / nbytes, per_batch)


def test_bpb_of_only_ignored_or_special_targets_is_an_error():
    with pytest.raises(ValueError, match="no target tokens"):
        evaluate_bpb(FixedDistribution(), [batch([[3, -1, 3]])], TOKEN_BYTES)
    with pytest.raises(ValueError, match="no batches"):
        evaluate_bpb(FixedDistribution(), [], TOKEN_BYTES)


def _rank_main(rank, world, port, out_path):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        mine = [batch([[0, 1, 2]])] if rank == 0 else [batch([[2, 2, -1]]), batch([[3, 0, 1]])]
        bpb = evaluate_bpb(FixedDistribution(), mine, TOKEN_BYTES)
        with open(f"{out_path}.{rank}", "w") as f:
            f.write(repr(bpb))
    finally:
        dist.destroy_process_group()


def test_bpb_all_reduces_across_ranks(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = str(tmp_path / "bpb")
    # fork: the children inherit the imported torch instead of re-importing it (seconds on 2 cores)
    mp.start_processes(_rank_main, args=(2, port, out), nprocs=2, join=True, start_method="fork")
    results = [float(open(f"{out}.{r}").read()) for r in range(2)]
    # rank 0: targets 0,1,2 -> 6 bits / 7 bytes; rank 1: 2,2 then 0,1 (3 is special) -> 9 bits / 11 bytes
    assert results == [pytest.approx(15 / 18)] * 2
