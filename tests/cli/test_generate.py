"""Generation: the KV cache against recomputation (before and after the window slides), the sampler as a
distribution, streamed decoding, the run's backend and dtype, and the CLI's output and bad input."""

from __future__ import annotations

import json
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lmfast import functional, generate
from lmfast.checkpoint import save_checkpoint
from lmfast.generate import EOT, generate_ids, generate_samples, sample_next
from lmfast.model import TransformerLM, ops
from lmfast.model.text_stream import TextStream
from lmfast.tokenizer import Tokenizer
from lmfast.train import trainer as trainer_module
from lmfast.train.config import TrainConfig
from lmfast.train.run_setup import ByteTokenizer

SHAPE = dict(vocab_size=97, context_length=16, d_model=32, num_layers=2, num_heads=2, d_ff=64, rope_theta=10000.0)


# These models are tiny: one intra-op thread runs them faster than two that fight over shared cores.
pytestmark = pytest.mark.usefixtures("one_thread")


def _lm(**overrides) -> TransformerLM:
    torch.manual_seed(0)
    return TransformerLM(**{**SHAPE, **overrides}, backend="reference").eval()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A byte-level (vocab 256) checkpoint with context 128 as the trainer writes it, untrained."""
    cfg = TrainConfig(vocab_size=256, context_length=128, d_model=32, num_layers=2, num_heads=2, d_ff=64)
    torch.manual_seed(0)
    model = TransformerLM(cfg.vocab_size, cfg.context_length, cfg.d_model, cfg.num_layers, cfg.num_heads, cfg.d_ff,
                          cfg.rope_theta, backend="reference")
    path = tmp_path_factory.mktemp("run") / "final_model.pt"
    save_checkpoint(model, None, 0, path, config=cfg.to_dict(), meta={"tokenizer": "bytes"})
    return str(path)


def _cli(capsys, *args) -> tuple[int, str, str]:
    code = generate.main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


# -- the KV cache and the sliding window -------------------------------------------------------------------


def _greedy_without_cache(model, prompt, n, keep):
    """The window rule written out without a cache: the full forward of the window's tokens at every step."""
    ctx, ids, out = model.context_length, list(prompt), []
    start = max(0, len(ids) - ctx)
    for _ in range(n):
        if len(ids) - start > ctx:
            start = len(ids) - keep
        with torch.no_grad():
            out.append(int(model(torch.tensor([ids[start:]]))[0, -1].argmax()))
        ids.append(out[-1])
    return out


@pytest.mark.parametrize("prompt_len, keep", [(5, None), (5, 10), (5, 1), (40, None), (40, 7)])
def test_greedy_cached_generation_equals_uncached_before_and_after_the_window_slides(prompt_len, keep):
    model = _lm()
    prompt = torch.randint(0, 97, (prompt_len,)).tolist()
    cached = generate_ids(model, prompt, 40, temperature=0, window_keep=keep)
    assert len(set(cached)) > 8  # a model whose output ignores its context could not tell a bad window
    assert cached == _greedy_without_cache(model, prompt, 40, keep or model.context_length)


def test_the_readme_example_gives_all_200_tokens_from_a_context_128_checkpoint(checkpoint, capsys):
    code, out, _ = _cli(capsys, "--checkpoint", checkpoint, "--prompt", "ROMEO:", "--max-new-tokens", "200",
                        "--json", "--seed", "3")
    assert code == 0
    (sample,) = json.loads(out)["samples"]
    assert sample["new_tokens"] == 200 and sample["finish_reason"] == "length"


def test_a_1000_character_prompt_on_a_context_64_model_generates_every_token():
    model = _lm(vocab_size=256, context_length=64)
    prompt = ("All the world's a stage, and all the men and women merely players. " * 15)[:1000]
    (sample,) = generate_samples(model, ByteTokenizer(), prompt, 100, seed=0)
    assert sample.new_tokens == 100 and sample.finish_reason == "length"


def test_single_token_decode_uses_sdpa_without_a_mask_and_prefill_takes_the_ops_attention(monkeypatch):
    model = _lm()
    prefills = []

    def spy_attention(q, k, v, scale=None):
        prefills.append(q.shape[-2])
        return functional.causal_attention(q, k, v, scale)

    for layer in model.layers:
        layer.attn.ops = ops.Ops("spy", functional.rmsnorm, functional.rope, spy_attention)
    decode_calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def spy_sdpa(q, k, v, *args, **kwargs):
        decode_calls.append((q.shape[-2], args, kwargs))
        return sdpa(q, k, v, *args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy_sdpa)
    generate_ids(model, [1, 2, 3], 4, temperature=0)
    assert prefills == [3, 3]  # one prefill of the prompt per layer
    # functional.causal_attention calls SDPA too: the decode calls are those with one query
    decodes = [c for c in decode_calls if c[0] == 1]
    assert len(decodes) == 3 * 2 and all(args == () and kwargs == {} for _, args, kwargs in decodes)


# -- sampling as a distribution -------------------------------------------------------------------------------

LOGITS = [2.0, 1.2, 0.7, 0.1, -0.4, -1.5, -3.0]
DRAWS = 40_000


def _intended(temperature, top_k=0, top_p=1.0):
    """The truncated, renormalised distribution, written out in float64 without torch."""
    w = [math.exp(x / temperature) for x in LOGITS]
    p = [x / sum(w) for x in w]
    order = sorted(range(len(p)), key=lambda i: -p[i])
    kept = order[:top_k] if top_k else order
    mass = sum(p[i] for i in kept)
    p = [p[i] / mass if i in kept else 0.0 for i in range(len(p))]
    nucleus, total = [], 0.0
    for i in kept:
        if total >= top_p:
            break
        nucleus.append(i)
        total += p[i]
    mass = sum(p[i] for i in nucleus)
    return [p[i] / mass if i in nucleus else 0.0 for i in range(len(p))]


@pytest.mark.parametrize("temperature, top_k, top_p", [
    (1.0, 0, 1.0), (0.5, 0, 1.0), (2.0, 0, 1.0),  # temperature alone
    (1.0, 3, 1.0), (1.0, 1, 1.0), (0.7, 5, 1.0),  # top-k
    (1.0, 0, 0.8), (1.0, 0, 0.3), (1.5, 0, 0.9),  # top-p (0.3 < the top token's mass: the top token alone)
    (1.0, 4, 0.9),  # both: top-k first, then top-p on the renormalised k tokens
])
def test_sample_next_draws_match_the_truncated_renormalised_distribution(temperature, top_k, top_p):
    expected = torch.tensor(_intended(temperature, top_k, top_p), dtype=torch.float64)
    logits = torch.tensor(LOGITS).expand(DRAWS, -1)  # one batch of DRAWS rows: one multinomial call
    draws = sample_next(logits, temperature, top_p, torch.Generator().manual_seed(0), top_k)
    freq = torch.bincount(draws, minlength=len(LOGITS)).double() / DRAWS
    assert torch.all(freq[expected == 0] == 0), f"tokens outside the top-k / nucleus drawn: {freq}"
    # 5 binomial standard errors per token, plus one draw's worth for tokens of tiny probability
    tolerance = 5 * (expected * (1 - expected) / DRAWS).sqrt() + 1 / DRAWS
    assert torch.all((freq - expected).abs() <= tolerance), f"frequencies {freq} vs intended {expected}"


def test_temperature_zero_is_greedy_for_every_row():
    logits = torch.randn(64, 50, generator=torch.Generator().manual_seed(0))
    assert torch.equal(sample_next(logits, 0.0, 0.5, top_k=3), logits.argmax(dim=-1))


def test_a_tiny_temperature_gives_the_argmax_not_nan():
    logits = torch.tensor([[1.0, 3.0, 2.0]] * 8)
    assert sample_next(logits, 1e-30, 1.0, torch.Generator().manual_seed(0)).tolist() == [1] * 8


@pytest.mark.parametrize("bad", [math.nan, math.inf])
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_nan_or_inf_logits_raise_a_clear_error_instead_of_reaching_multinomial(bad, temperature):
    logits = torch.tensor([[0.5, 1.0, -1.0], [0.0, bad, 1.0]])
    with pytest.raises(ValueError, match="non-finite logits .* for 1 of 2 rows"):
        sample_next(logits, temperature, 0.9)


def test_minus_inf_logits_are_masked_tokens_never_drawn():
    logits = torch.tensor([[0.0, -math.inf, 1.0, -math.inf]]).expand(1000, -1)
    draws = sample_next(logits, 1.0, 1.0, torch.Generator().manual_seed(0))
    assert set(draws.tolist()) == {0, 2}


@pytest.mark.parametrize("temperature, top_p, top_k, message", [
    (math.nan, 0.9, 0, "temperature"), (-1.0, 0.9, 0, "temperature"), (math.inf, 0.9, 0, "temperature"),
    (1.0, 0.0, 0, "top_p"), (1.0, math.nan, 0, "top_p"), (1.0, 1.5, 0, "top_p"), (1.0, 0.9, -1, "top_k"),
])
def test_sample_next_refuses_bad_settings(temperature, top_p, top_k, message):
    with pytest.raises(ValueError, match=message):
        sample_next(torch.zeros(1, 4), temperature, top_p, top_k=top_k)


# -- streamed text ---------------------------------------------------------------------------------------------


def _stream(ids, stops=(), tokenizer=None):
    stream = TextStream(tokenizer or ByteTokenizer(), stops)
    pieces = [stream.push(i) for i in ids] + [stream.finish()]
    return pieces, stream


def test_a_character_split_across_tokens_is_printed_once_whole():
    text = "héllo → 世界 🙂"
    pieces, stream = _stream(list(text.encode()))
    assert "".join(pieces) == stream.text == text
    assert "\ufffd" not in "".join(pieces)
    assert pieces[1] == "" and pieces[2] == "é"  # b"\xc3" waits for b"\xa9"


def test_a_stop_string_split_across_tokens_is_never_printed():
    pieces, stream = _stream(list(b"ab<|end") + list(b"oftext|>cd"), [EOT])
    assert "".join(pieces) == stream.text == "ab" and stream.stop == EOT
    assert pieces[:3] == ["a", "b", ""]  # "<" is held back: it may start the stop string


def test_text_that_only_looks_like_a_stop_string_start_is_released():
    pieces, stream = _stream(list(b"x<|end!"), [EOT])
    assert "".join(pieces) == stream.text == "x<|end!" and not stream.stopped


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=40), stops=st.lists(st.sampled_from(["ab", "\u00e9", "a\n", "zz"]), max_size=2))
def test_streamed_pieces_join_to_the_bulk_decode_cut_at_the_first_stop(data, stops):
    pieces, stream = _stream(list(data), stops)
    text = data.decode("utf-8", errors="replace")
    cuts = [i for s in stops if (i := text.find(s)) >= 0]
    assert "".join(pieces) == stream.text == text[:min(cuts, default=len(text))]
    assert stream.stopped == bool(cuts)


def _eot_first_tokenizer() -> Tokenizer:
    """Bytes at ids 1..256 and <|endoftext|> at id 0, which a model with a zero LM head always picks."""
    vocab = {0: EOT.encode(), **{i + 1: bytes([i]) for i in range(256)}}
    return Tokenizer(vocab, [], [EOT])


def test_generation_stops_at_endoftext_by_default_and_runs_on_without_stops():
    model = _lm(vocab_size=257)
    torch.nn.init.zeros_(model.lm_head.weight)  # every logit 0: greedy takes id 0, <|endoftext|>
    tok = _eot_first_tokenizer()
    (sample,) = generate_samples(model, tok, "hi", 10, temperature=0)
    assert (sample.text, sample.new_tokens, sample.finish_reason, sample.stop) == ("", 1, "stop", EOT)
    (sample,) = generate_samples(model, tok, "hi", 3, temperature=0, stop=[])
    assert (sample.text, sample.finish_reason) == (EOT * 3, "length")


def test_ids_the_tokenizer_cannot_decode_are_never_sampled():
    model = _lm(vocab_size=300)  # e.g. vocab_size rounded up past the tokenizer's 256
    with torch.no_grad():
        model.lm_head.weight[256:] = 50.0 * model.lm_head.weight[256:].sign()  # huge logits on ids >= 256
    (sample,) = generate_samples(model, ByteTokenizer(), "hello", 30, temperature=1.0, top_p=1.0, seed=0)
    assert sample.new_tokens == 30


# -- backend and dtype (issue 7: generation on the run's fused ops and autocast dtype) ---------------------


def test_load_model_takes_the_fused_ops_where_backend_auto_picks_them(checkpoint, monkeypatch):
    # As on a CUDA machine whose generation's table rows all take their kernel.
    fake_fused = ops.Ops("fused", lambda *a: functional.rmsnorm(*a), functional.rope, functional.causal_attention)
    monkeypatch.setattr(ops, "fused_unavailable_reason", lambda device: None)
    monkeypatch.setattr(ops, "_fused_ops", lambda: fake_fused)
    rows = {op: {"use_fused": True, "measured": None, "why": "test"} for op in ops.FUSED_OPS}
    monkeypatch.setattr(ops, "fused_table", lambda: {"default": rows})
    model, _, _ = generate.load_model(checkpoint)
    assert model.ops.name == "auto" and model.ops.rmsnorm is fake_fused.rmsnorm
    assert model.layers[0].attn.ops is model.ops


def test_generation_runs_in_the_runs_autocast_dtype_on_cuda_and_fp32_elsewhere(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert generate.generation_dtype("auto", "cuda") is torch.bfloat16
    assert generate.generation_dtype("float16", "cuda:0") is torch.float16
    assert generate.generation_dtype("float32", "cuda") is None
    assert generate.generation_dtype("bfloat16", "cpu") is None
    assert generate.generation_dtype("auto", "mps") is None


def test_generate_samples_runs_the_model_and_its_kv_cache_under_the_autocast_dtype(monkeypatch):
    model = _lm(vocab_size=256)
    seen = []
    forward = TransformerLM.forward

    def spy(self, ids, token_positions=None, caches=None, **kwargs):
        seen.append((torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu"), caches[0].k.dtype))
        return forward(self, ids, token_positions, caches, **kwargs)

    monkeypatch.setattr(TransformerLM, "forward", spy)
    (sample,) = generate_samples(model, ByteTokenizer(), "hi", 5, seed=0, autocast_dtype=torch.bfloat16)
    assert sample.new_tokens == 5
    assert seen == [(torch.bfloat16, torch.bfloat16)] * 5


def test_the_cli_generates_in_the_dtype_generation_dtype_gives(checkpoint, capsys, monkeypatch):
    monkeypatch.setattr(generate, "generation_dtype", lambda run_dtype, device: torch.bfloat16)  # as on CUDA
    code, out, _ = _cli(capsys, "--checkpoint", checkpoint, "--max-new-tokens", "3", "--json")
    assert code == 0 and json.loads(out)["dtype"] == "bfloat16"


def test_the_end_of_training_sample_runs_under_the_runs_autocast_dtype(tmp_path, monkeypatch):
    (tmp_path / "train.txt").write_text("to be or not to be, that is the question\n" * 40)
    cfg = dict(vocab_size=256, context_length=16, d_model=32, num_layers=1, num_heads=2, d_ff=64, batch_size=2,
               max_steps=2, warmup_iters=1, cosine_cycle_iters=2, val_data_path=None, compile="false",
               progress=False, dtype="bfloat16", sample_prompt="to be", sample_tokens=4, log_file=None,
               train_data_path=str(tmp_path / "train.txt"), checkpoint_dir=str(tmp_path / "ck"),
               cache_dir=str(tmp_path / "cache"))
    (tmp_path / "c.yaml").write_text(json.dumps(cfg))  # JSON is YAML
    seen = []
    forward = TransformerLM.forward

    def spy(self, ids, token_positions=None, caches=None, **kwargs):
        if caches is not None:  # only generation passes KV caches
            seen.append(torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu"))
        return forward(self, ids, token_positions, caches, **kwargs)

    monkeypatch.setattr(TransformerLM, "forward", spy)
    assert trainer_module.main(["--config", str(tmp_path / "c.yaml")]) == 0
    assert seen == [torch.bfloat16] * 4


@pytest.mark.gpu
def test_on_cuda_generation_takes_the_fused_ops_in_bf16_past_the_window():
    torch.manual_seed(0)
    model = TransformerLM(**{**SHAPE, "vocab_size": 256, "d_model": 128}, device="cuda").eval()  # head dim 64
    caches = []
    new_kv_caches = model.new_kv_caches
    model.new_kv_caches = lambda *a, **k: caches.extend(new_kv_caches(*a, **k)) or caches
    (sample,) = generate_samples(model, ByteTokenizer(), "to be", 50, seed=0, autocast_dtype=torch.bfloat16)
    assert model.ops.name == "fused" and caches[0].k.dtype == torch.bfloat16
    assert sample.new_tokens == 50  # three times the context of 16


# -- the command line ---------------------------------------------------------------------------------------------


def test_streamed_output_equals_the_json_text_for_the_same_seed(checkpoint, capsys):
    args = ["--checkpoint", checkpoint, "--prompt", "to be", "--max-new-tokens", "40", "--seed", "5"]
    code, streamed, err = _cli(capsys, *args)
    assert code == 0 and "40 new tokens" in err and "seed 5" in err
    code, out, _ = _cli(capsys, *args, "--json")
    result = json.loads(out)
    assert code == 0 and streamed == "to be" + result["samples"][0]["text"] + "\n"
    assert (result["device"], result["backend"], result["dtype"]) == ("cpu", "reference", "float32")


@pytest.mark.parametrize("keep", [16, 5])
def test_several_rows_prefill_the_prompt_once_and_decode_as_one_row_does(monkeypatch, keep):
    from lmfast.model.generation import _steps

    model = _lm()
    prompt = list(range(1, 13))
    batches = []

    def spy_attention(q, k, v, scale=None):
        batches.append(q.shape[0])
        return functional.causal_attention(q, k, v, scale)

    for layer in model.layers:
        layer.attn.ops = ops.Ops("spy", functional.rmsnorm, functional.rope, spy_attention)
    with torch.no_grad():
        rows = _steps(model, prompt, 3, 0.0, 1.0, 0, None, keep, None)
        three = torch.stack([next(rows) for _ in range(12)], dim=1)  # slides past the context of 16
        row = _steps(model, prompt, 1, 0.0, 1.0, 0, None, keep, None)
        one = torch.stack([next(row) for _ in range(12)], dim=1)
    assert batches[:2] == [1, 1]  # the first prefill, in each layer, runs the prompt once for all three rows
    assert 3 in batches  # a prefill after the window slid runs every row (they differ by then)
    assert torch.equal(three[0], three[1]) and torch.equal(three[0], three[2])
    assert torch.equal(three[:1], one)


def test_num_samples_are_independent_and_equal_when_greedy(checkpoint, capsys):
    base = ["--checkpoint", checkpoint, "--max-new-tokens", "12", "--num-samples", "3", "--json", "--seed", "1"]
    code, out, _ = _cli(capsys, *base)
    texts = [s["text"] for s in json.loads(out)["samples"]]
    assert code == 0 and len(set(texts)) == 3
    code, out, _ = _cli(capsys, *base, "--temperature", "0")
    texts = [s["text"] for s in json.loads(out)["samples"]]
    assert code == 0 and len(texts) == 3 and len(set(texts)) == 1


def test_a_stop_string_ends_the_sample_before_it(checkpoint, capsys):
    base = ["--checkpoint", checkpoint, "--max-new-tokens", "30", "--temperature", "0", "--json"]
    _, out, _ = _cli(capsys, *base)
    full = json.loads(out)["samples"][0]["text"]
    stop = full[10:12]
    code, out, err = _cli(capsys, *base, "--stop", stop)
    (sample,) = json.loads(out)["samples"]
    assert code == 0 and sample["text"] == full[:full.index(stop)]
    assert (sample["finish_reason"], sample["stop"]) == ("stop", stop) and f"ended at {stop!r}" in err


@pytest.mark.parametrize("args, message", [
    (["--temperature", "nan"], "temperature must be a finite number >= 0"),
    (["--temperature", "-1"], "temperature must be a finite number >= 0"),
    (["--top-p", "0"], "top_p must be in (0, 1]"),
    (["--top-k", "-1"], "top_k must be an int >= 0"),
    (["--num-samples", "0"], "--num-samples must be >= 1"),
    (["--max-new-tokens", "0"], "--max-new-tokens must be >= 1"),
    (["--window-keep", "0"], "--window-keep must be >= 1"),
    (["--window-keep", "129"], "at most the model's context_length=128"),
    (["--seed", str(2**64)], "--seed must be in [0, 2**64)"),
    (["--seed", "-1"], "--seed must be in [0, 2**64)"),
    (["--prompt", ""], "--prompt is empty"),
    (["--prompt", "ab\udcffc"], "the byte 0xff at character 2"),
    (["--prompt", "a\ud800"], "a lone surrogate U+D800 at character 1"),
    (["--stop", ""], "--stop '' is empty"),
    (["--stop", "x", "--no-stop"], "contradict"),
    (["--device", "cuda"], "CUDA is not available"),
    (["--device", "cuda:abc"], "cuda:abc"),
    (["--backend", "fused"], "backend 'fused' cannot run here"),
    ("directory", "is a directory, not a checkpoint; pass a .pt file or .dcp directory in it (e.g. --checkpoint"),
    ("missing", "does not exist ("),
])
def test_bad_input_gets_one_clear_line_and_exit_code_2(checkpoint, capsys, monkeypatch, args, message):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the same on a GPU machine
    if args == "directory":
        args, checkpoint = [], str(__import__("pathlib").Path(checkpoint).parent)
    elif args == "missing":
        args, checkpoint = [], checkpoint + ".nope"
    code, out, err = _cli(capsys, "--checkpoint", checkpoint, "--max-new-tokens", "2", *args)
    last = err.strip().splitlines()[-1]  # earlier lines can only be log records, when a test set up logging
    assert code == 2 and out == "" and "Traceback" not in err
    assert last.startswith("error: ") and message in last, err
    assert "--resume" not in last  # generate has no --resume: a hint must name what works here


def test_a_num_samples_that_cannot_fit_is_refused_up_front_with_the_numbers(checkpoint, capsys):
    code, out, err = _cli(capsys, "--checkpoint", checkpoint, "--num-samples", "100000000", "--max-new-tokens", "2")
    line = err.strip().splitlines()[-1]
    assert code == 2 and out == "" and "--num-samples 100000000 needs about" in line and "fit)" in line, line


def test_ctrl_c_during_generation_is_one_line_and_exit_130(checkpoint, capsys, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(generate, "generate_samples", interrupted)
    code, _, err = _cli(capsys, "--checkpoint", checkpoint, "--max-new-tokens", "2")
    assert code == 130 and "Traceback" not in err and err.strip().splitlines()[-1] == "stopped by Ctrl-C"


def test_a_missing_checkpoint_names_the_checkpoints_its_folder_holds(checkpoint, capsys):
    code, _, err = _cli(capsys, "--checkpoint", checkpoint.replace("final_model.pt", "checkpoint_step_9.pt"))
    assert code == 2 and "holds final_model.pt" in err.strip().splitlines()[-1]


def test_a_reader_that_closes_the_pipe_early_stops_generation_quietly_with_exit_0(checkpoint):
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "lmfast.generate", "--checkpoint", checkpoint, "--device", "cpu", "--seed", "1",
           "--max-new-tokens", "1000000"]  # would run for many minutes if the closed pipe did not stop it
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert len(proc.stdout.read(64)) == 64  # `| head -c 64`: the reader takes what it wants and goes away
    proc.stdout.close()
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err.decode()
    assert b"Traceback" not in err and b"BrokenPipe" not in err
