"""fp8 training (model/fp8.py) in torchao's emulation on the CPU: which Linears convert, forward and backward against
the same model in full precision, evaluation back in plain matmuls, checkpoints unchanged, and model.train falling
back to bf16/fp32 where fp8 cannot run."""

import copy
import json

import pytest
import torch

from model import fp8
from model.config import ModelConfig
from model.gpt import GPT

pytest.importorskip("torchao")


def model_and_batch(seed: int = 0):
    config = ModelConfig.from_depth(2, vocab_size=512, sequence_len=64, head_dim=64)  # model_dim 128
    torch.manual_seed(seed)
    model = GPT(config)
    with torch.no_grad():  # trained-looking weights: zero-initialised projections would hide the fp8 rounding
        for p in model.parameters():
            if p.ndim == 2:
                p.normal_(0, p.shape[-1] ** -0.5)
    x = torch.randint(0, 512, (4, 64), generator=torch.Generator().manual_seed(seed))
    return model, x


def test_the_block_and_head_linears_convert_and_the_gates_do_not():
    model, _ = model_and_batch()
    weights = {name: p for name, p in model.named_parameters()}
    converted = fp8.convert(model, emulate=True)
    kinds = {name: type(m).__name__ for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    fp8_names = sorted(n for n, k in kinds.items() if k == "Float8Linear")
    # 2 blocks x (q, k, v, attention proj, MLP in, MLP out) at >= 128 features, and lm_head (128 -> 512).
    assert converted == len(fp8_names) == 13 and "lm_head" in fp8_names
    assert all(kinds[n] != "Float8Linear" for n in kinds if "ve_gate" in n or "smear_gate" in n) and \
        any("ve_gate" in n for n in kinds) and any("smear_gate" in n for n in kinds)
    # The same Parameters: an optimizer built before the conversion still updates the weights that train.
    assert all(p is weights[name] for name, p in model.named_parameters())
    assert fp8.eligible(torch.nn.Linear(128, 256)) and not fp8.eligible(torch.nn.Linear(12, 256)) \
        and not fp8.eligible(torch.nn.Linear(136, 100))


def test_fp8_forward_and_backward_agree_with_full_precision_within_fp8_rounding():
    model, x = model_and_batch()
    reference = copy.deepcopy(model)
    fp8.convert(model, emulate=True)
    loss, ref_loss = model(x, x), reference(x, x)
    loss.backward()
    ref_loss.backward()
    # e4m3 keeps 3 mantissa bits (~6% per element); summed over a matmul the loss moves by much less.
    assert loss.item() == pytest.approx(ref_loss.item(), rel=0.02) and loss.item() != ref_loss.item()
    for (name, p), q in zip(model.named_parameters(), reference.parameters(), strict=True):
        if p.grad is not None and p.ndim == 2 and p.grad.norm() > 0:
            cosine = torch.nn.functional.cosine_similarity(p.grad.flatten(), q.grad.flatten(), dim=0)
            assert cosine > 0.98, (name, cosine.item())


def test_evaluation_runs_in_plain_matmuls_and_checkpoints_are_unchanged():
    model, x = model_and_batch()
    reference = copy.deepcopy(model)
    fp8.convert(model, emulate=True)
    with torch.no_grad():
        with fp8.bf16_linears(model):
            assert fp8.count(model) == 0
            evaluated = model(x, x).item()
        assert fp8.count(model) == 13  # restored afterwards
        assert evaluated == pytest.approx(reference(x, x).item(), abs=1e-6)
    plain = GPT(model.config)
    plain.load_state_dict(model.state_dict())  # same keys and tensors as a bf16 run's checkpoint


def test_model_train_falls_back_where_fp8_cannot_run(tmp_path, shared_data, tiny_tokenizer, capsys):
    import model.train as train
    tokenizer = tmp_path / "tok"
    tiny_tokenizer.save(tokenizer)
    out = tmp_path / "run"
    argv = ["--depth", "1", "--set", "vocab_size=1024", "--set", "sequence_len=64", "--set", "device_batch_size=4",
            "--set", "total_batch_size=256", "--set", "eval_tokens=2048", "--set", "fp8=true", "--data",
            str(shared_data), "--tokenizer", str(tokenizer), "--out", str(out), "--num-iterations", "2"]
    assert train.main(argv) == 0
    assert "fp8 requested but fp8 needs a CUDA GPU (this run is on cpu): training in bf16" in capsys.readouterr().err
    config = json.loads((out / "config.json").read_text())
    assert config["train"]["fp8"] is True and config["fp8_linears"] == 0
