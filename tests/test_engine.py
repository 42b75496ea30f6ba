"""The generation engine: cached decoding equals full recompute under every tweak, sampling, stopping, the tool."""

import types

import pytest
import torch

import model.engine as engine_module
from model.config import ModelConfig
from model.engine import Engine
from model.gpt import GPT

VOCAB = 1024  # the conftest tiny tokenizer's vocabulary


def random_model(seed=0, **overrides) -> GPT:
    """A tiny GPT with random weights everywhere (at init, smear and the output projections are exact no-ops)."""
    config = ModelConfig.from_depth(3, vocab_size=VOCAB, sequence_len=32, head_dim=16, aspect_ratio=32,
                                    short_window_multiple=1, dtype="float32", **overrides)
    torch.manual_seed(seed)
    model = GPT(config)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.5 if p.ndim < 2 else p.shape[-1] ** -0.5))
    return model.eval()


class Spy:
    """Wraps a model, recording the last-position logits of every call (what the engine samples from)."""

    def __init__(self, model):
        self.model, self.logits = model, []

    def __getattr__(self, name):
        return getattr(self.model, name)

    def __call__(self, idx, kv_cache=None):
        out = self.model(idx, kv_cache=kv_cache)
        self.logits.append(out[:, -1].clone())
        return out


def prompt_ids(n=12, seed=0):
    return torch.randint(9, VOCAB, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


# Short windows are 8 tokens (a quarter of 32); prompt + generation (12 + 40) runs far past them and past
# sequence_len, so the windows, the GQA head sharing and smear's carried state are all exercised by the cache.
TWEAKS = [
    {},  # SSSL windows, smear, value embeddings, full MHA
    {"window_pattern": "SSL", "n_kv_head": 1},
    {"window_pattern": "L", "smear": False},
    {"window_pattern": "SSL", "value_embeds": False, "smear": True, "n_kv_head": 2},
    {"window_pattern": "L", "smear": False, "value_embeds": False, "n_kv_head": 1},
]


@pytest.mark.parametrize("tweaks", TWEAKS, ids=lambda t: ",".join(f"{k}={v}" for k, v in t.items()) or "defaults")
def test_cached_greedy_generation_equals_full_recompute(tiny_tokenizer, tweaks):
    model = random_model(**tweaks)
    runs = {}
    for use_cache in (True, False):
        spy = Spy(model)
        tokens, _ = Engine(spy, tiny_tokenizer).generate_batch(prompt_ids(), max_tokens=40, temperature=0.0,
                                                                stop_tokens=(), use_cache=use_cache)
        runs[use_cache] = (tokens[0], torch.cat(spy.logits))
    (cached, cached_logits), (full, full_logits) = runs[True], runs[False]
    assert len(cached) == 40 and cached == full
    assert cached_logits.shape == full_logits.shape == (40, VOCAB)
    torch.testing.assert_close(cached_logits, full_logits, atol=1e-4, rtol=1e-4)


def test_sliding_windows_change_what_is_generated(tiny_tokenizer):
    """The equality above would be vacuous if windows never mattered at these lengths."""
    windowed = random_model(window_pattern="SSL")
    full = random_model(window_pattern="L")
    full.load_state_dict(windowed.state_dict())
    spies = [Spy(windowed), Spy(full)]
    for spy in spies:
        Engine(spy, tiny_tokenizer).generate_batch(prompt_ids(), max_tokens=20, temperature=0.0, stop_tokens=())
    assert not torch.allclose(torch.cat(spies[0].logits), torch.cat(spies[1].logits), atol=1e-3)


def test_samples_from_one_prefill_are_independent_and_seeded(tiny_tokenizer):
    model = random_model(window_pattern="SSL", n_kv_head=1)
    spy = Spy(model)
    engine = Engine(spy, tiny_tokenizer)
    prompt = prompt_ids()
    a, _ = engine.generate_batch(prompt, num_samples=4, max_tokens=16, temperature=1.0, seed=1, stop_tokens=())
    step_logits = torch.stack(spy.logits[1:], dim=1)  # (4, 15, V): after the batch-1 prefill, one row per sample
    b, _ = engine.generate_batch(prompt, num_samples=4, max_tokens=16, temperature=1.0, seed=1, stop_tokens=())
    c, _ = engine.generate_batch(prompt, num_samples=4, max_tokens=16, temperature=1.0, seed=2, stop_tokens=())
    assert a == b  # same seed, same samples
    assert a != c  # another seed, other samples
    assert len({tuple(s) for s in a}) == 4  # the samples of one call differ from each other
    # Each sample's cached row computes what the model computes on that sample's own sequence alone:
    # the expanded cache rows do not leak into each other.
    with torch.no_grad():
        for i, sample in enumerate(a):
            alone = model(torch.tensor([prompt + sample]))[0, len(prompt):-1]
            torch.testing.assert_close(step_logits[i], alone, atol=1e-4, rtol=1e-4)


def test_temperature_zero_is_deterministic_and_top_k_restricts(tiny_tokenizer):
    model = random_model()
    engine = Engine(model, tiny_tokenizer)
    greedy = [engine.generate_batch(prompt_ids(), max_tokens=12, temperature=0.0, seed=s, stop_tokens=())[0]
              for s in (1, 2)]
    assert greedy[0] == greedy[1]
    top1, _ = engine.generate_batch(prompt_ids(), max_tokens=12, temperature=1.5, top_k=1, seed=3, stop_tokens=())
    assert top1 == greedy[0]
    spy = Spy(model)
    sampled, _ = Engine(spy, tiny_tokenizer).generate_batch(prompt_ids(), num_samples=3, max_tokens=12,
                                                            temperature=2.0, top_k=5, seed=4, stop_tokens=())
    for step, logits in enumerate(spy.logits):
        allowed = logits.topk(5, dim=-1).indices
        for row in range(3):
            assert sampled[row][step] in allowed[row if logits.size(0) > 1 else 0].tolist()


# --- a scripted model: the GPT interface, with logits that spell out a fixed continuation per sample ---------------

class Scripted:
    """Predicts, at absolute position p, script[row][p + 1 - prompt_len] (an end token past the script's end).
    Works with and without the KV cache; records every input token it is fed."""

    def __init__(self, scripts, prompt_len, end_token, vocab=VOCAB):
        self.scripts, self.prompt_len, self.end, self.vocab = scripts, prompt_len, end_token, vocab
        self.config = types.SimpleNamespace(depth=1, n_kv_head=1, head_dim=2, vocab_size=vocab)
        self.device = torch.device("cpu")
        self.rotary_len = 10_000
        self.fed: list[list[int]] = []

    def compute_dtype(self):
        return torch.float32

    def __call__(self, idx, kv_cache=None):
        B, T = idx.shape
        start = 0 if kv_cache is None else kv_cache.pos
        self.fed.append(idx[:, -1].tolist())
        logits = torch.zeros(B, T, self.vocab)
        for b in range(B):
            script = self.scripts[b]
            for t in range(T):
                k = start + t + 1 - self.prompt_len
                logits[b, t, script[k] if 0 <= k < len(script) else self.end] = 10.0
        if kv_cache is not None:
            kv_cache.advance(T)
        return logits


def test_stop_tokens_end_each_sample_and_finished_samples_are_not_advanced(tiny_tokenizer):
    end = tiny_tokenizer.special_id("<|assistant_end|>")
    bos = tiny_tokenizer.bos_id
    scripts = [[100, 101, end, 102, 103], [100, 201, 202, 203, bos, 204], [100, 301, 302, 303, 304, 305, 306]]
    fake = Scripted(scripts, prompt_len=3, end_token=end)
    engine = Engine(fake, tiny_tokenizer)
    stream = [column for column, _ in engine.generate([10, 11, 12], num_samples=3, max_tokens=6, temperature=0.0)]
    assert [column[0] for column in stream] == [100, 101, end, None, None, None]
    assert [column[1] for column in stream] == [100, 201, 202, 203, bos, None]
    assert [column[2] for column in stream] == [100, 301, 302, 303, 304, 305]  # cut by max_tokens
    tokens, masks = engine.generate_batch([10, 11, 12], num_samples=3, max_tokens=6, temperature=0.0)
    assert tokens == [[100, 101], [100, 201, 202, 203], [100, 301, 302, 303, 304, 305]]
    assert masks == [[1] * 2, [1] * 4, [1] * 6]
    # When every sample has stopped, generation ends without further model calls.
    fake = Scripted([[7, end]] * 2, prompt_len=3, end_token=end)
    Engine(fake, tiny_tokenizer).generate_batch([10, 11, 12], num_samples=2, max_tokens=50, temperature=0.0)
    assert len(fake.fed) == 2  # the prefill, then one decode step


def tool_script(tok, expression: str, filler_len: int):
    """<|python_start|> expression <|python_end|>, then filler (what the model would say if nothing were forced),
    then ' ok' and <|assistant_end|>."""
    filler = tok.encode(" x")[0]
    body = [tok.special_id("<|python_start|>"), *tok.encode(expression), tok.special_id("<|python_end|>")]
    tail = [*tok.encode(" ok"), tok.special_id("<|assistant_end|>")]
    return body, [filler] * filler_len, tail


def test_calculator_output_is_forced_into_the_stream_and_fed_to_the_model(tiny_tokenizer, monkeypatch):
    tok = tiny_tokenizer
    calls = []
    real = engine_module.run_calculator
    monkeypatch.setattr(engine_module, "run_calculator", lambda e: calls.append(e) or real(e))
    forced = [tok.special_id("<|output_start|>"), *tok.encode("84"), tok.special_id("<|output_end|>")]
    body, filler, tail = tool_script(tok, "12*7", len(forced))
    for use_cache in (True, False):
        calls.clear()
        fake = Scripted([body + filler + tail], prompt_len=2, end_token=tok.special_id("<|assistant_end|>"))
        tokens, masks = Engine(fake, tok).generate_batch([1, 3], max_tokens=40, temperature=0.0, use_cache=use_cache)
        assert calls == ["12*7"]
        assert tokens[0] == body + forced + tail[:-1]
        assert masks[0] == [1] * len(body) + [0] * len(forced) + [1] * (len(tail) - 1)
        assert tok.decode(tokens[0]).startswith("<|python_start|>12*7<|python_end|><|output_start|>84<|output_end|>")
        # The forced tokens went through the model as inputs, in order.
        fed = [column[0] for column in fake.fed[1:]]
        assert fed[len(body):len(body) + len(forced)] == forced


@pytest.mark.parametrize("expression", ["__import__('os').system('touch {marker}')", "open('{marker}', 'w')",
                                        "(lambda: open('{marker}', 'w'))()", "10**10**10**10", "1/0"])
def test_hostile_or_failing_expressions_force_nothing_and_execute_nothing(tiny_tokenizer, tmp_path, expression):
    tok = tiny_tokenizer
    marker = tmp_path / "pwned"
    body, filler, tail = tool_script(tok, expression.format(marker=marker), 3)
    fake = Scripted([body + filler + tail], prompt_len=2, end_token=tok.special_id("<|assistant_end|>"))
    tokens, masks = Engine(fake, tok).generate_batch([1, 3], max_tokens=400, temperature=0.0)
    assert tokens[0] == body + filler + tail[:-1]  # the model's own tokens continue: no output block
    assert all(m == 1 for m in masks[0])
    assert not marker.exists()


def test_bad_requests_are_rejected_with_the_value(tiny_tokenizer):
    engine = Engine(random_model(), tiny_tokenizer)
    with pytest.raises(ValueError, match="temperature=-1"):
        next(engine.generate([1, 2], temperature=-1))
    with pytest.raises(ValueError, match="exceeds the model's 320 positions"):
        next(engine.generate([1, 2], max_tokens=400))
    with pytest.raises(ValueError, match="prompt token 5000"):
        next(engine.generate([1, 5000]))
    with pytest.raises(ValueError, match="top_k=0"):
        next(engine.generate([1, 2], top_k=0))


class SpecialHeavy(Spy):
    """A random model that samples the special tokens (the stops excepted) far more often than a trained one would,
    out of place included: <|python_end|> with no call open, <|output_start|> from the model itself, <|user_start|>."""

    def __init__(self, model, boosted):
        super().__init__(model)
        self.boosted = boosted

    def __call__(self, idx, kv_cache=None):
        out = self.model(idx, kv_cache=kv_cache).clone()
        out[..., self.boosted] += 4.0
        return out


def test_special_tokens_never_reach_a_reply(tiny_tokenizer):
    from model.engine import DEFAULT_STOP_TOKENS, ReplyStream
    from model.tokenizer import SPECIAL_TOKENS
    tok = tiny_tokenizer
    boosted = [tok.special_id(t) for t in SPECIAL_TOKENS if t not in DEFAULT_STOP_TOKENS]
    engine = Engine(SpecialHeavy(random_model(), boosted), tok)
    streams = [ReplyStream(tok) for _ in range(4)]
    sampled = 0
    for column, masks in engine.generate(prompt_ids(), num_samples=4, max_tokens=120, temperature=1.0, seed=0,
                                         stop_tokens=()):
        for stream, token, mask in zip(streams, column, masks):
            if token is not None:
                sampled += token in boosted
                stream.feed(token, mask)
    assert sampled > 50, sampled  # the specials were there to leak (measured: 129 of the 480 tokens)
    for stream in streams:
        stream.finish()
        shown = [stream.text, *(p["text"] for p in stream.parts)]
        assert not any(t in s for t in SPECIAL_TOKENS for s in shown), shown
