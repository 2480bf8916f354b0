"""Attention backends and variants: every backend computes eager's function, masks included.

All in fp32 on a tiny random model, so differences are kernel rounding (~1e-7), not masking.
"""

from __future__ import annotations

import math

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForQuestionAnswering, AutoModelForSequenceClassification

from pipeline import attention
from pipeline.attention import attn_implementation_for, check_backend
from pipeline.config import ModelConfig, PretrainConfig
from pipeline.recipe import load_recipe
from pipeline.corpus import document_positions
from pipeline.errors import PipelineError
from pipeline.heads import load_body
from pipeline.model import build_causal_lm, llama_config, training_flops_per_token
from conftest import CPU_ONLY, TINY, run_cli

PAD, BOS, EOS, VOCAB, SEQ = 0, 1, 2, 101, 24
ATOL = 1e-5


class Vocab:
    """What llama_config reads from a tokenizer."""

    pad_token_id, bos_token_id, eos_token_id = PAD, BOS, EOS

    def __len__(self) -> int:
        return VOCAB


def tiny(attn: str = "eager", **model) -> torch.nn.Module:
    """A 2-layer model with 4 query and 2 KV heads; the same seed gives the same weights on any backend."""
    m = ModelConfig(**{"hidden_size": 32, "num_layers": 2, "num_heads": 4, "num_kv_heads": 2,
                       "intermediate_size": 64, **model})
    m.validate()
    return build_causal_lm(llama_config(m, Vocab(), SEQ, attn), seed=0).eval()


def tokens(*lengths: int, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(EOS + 1, VOCAB, (n,), generator=g) for n in lengths]


def packed(docs: list[torch.Tensor]) -> torch.Tensor:
    """Documents joined as the corpus joins them: each one ends with EOS."""
    return torch.cat([torch.cat([d, torch.tensor([EOS])]) for d in docs])


def batches() -> dict[str, tuple[dict, torch.Tensor]]:
    """name → (model inputs, mask of the positions whose logits are compared)."""
    causal = torch.stack(tokens(SEQ, SEQ))
    short, full = tokens(SEQ - 7, SEQ, seed=1)
    padded = torch.stack([torch.cat([short, torch.full((7,), PAD)]), full])  # right padding
    blocks = torch.stack([packed(tokens(9, 5, 7, seed=2)), packed(tokens(4, 12, 5, seed=3))])
    every = torch.ones_like(causal, dtype=torch.bool)
    return {
        "causal": ({"input_ids": causal}, every),
        "padded": ({"input_ids": padded, "attention_mask": (padded != PAD).long()}, padded != PAD),
        "packed": ({"input_ids": blocks, "position_ids": document_positions(blocks, EOS)}, every),
    }


BATCHES = batches()


def logits(model, **inputs) -> torch.Tensor:
    with torch.no_grad():  # flex_attention runs forward-only on CPU
        return model(**inputs, use_cache=False).logits


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Models this small gain nothing from threads, and on a busy machine each op would wait for them."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def short_query_chunks(monkeypatch):
    """blocksparse_sdpa only splits sequences longer than a chunk: make chunks shorter than these tests' sequences."""
    monkeypatch.setattr(attention, "QUERY_CHUNK", 8)


@pytest.fixture(scope="module")
def eager():
    return tiny("eager")


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("attn", ["sdpa", "flex_attention", "blocksparse_sdpa"])
def test_backend_logits_match_eager(eager, attn, batch):
    inputs, keep = BATCHES[batch]
    if attn == "flex_attention" and not attention.flex_attention_is_right_on_cpu():
        # flex's compiled CPU code is wrong on some machines and thread counts (NaN on an AVX2-only EPYC, logits
        # off by 0.13 on a Zen 4 with one thread, an index error under AVX2 kernels): there it is refused.
        with pytest.raises(PipelineError, match="computes wrong attention on this CPU"):
            check_backend(attn, torch.device("cpu"), training=False)
        return
    got, want = logits(tiny(attn), **inputs), logits(eager, **inputs)
    torch.testing.assert_close(got[keep], want[keep], rtol=0, atol=ATOL)


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("attn", ["sdpa", "blocksparse_sdpa"])
def test_gradients_match_eager(attn, batch):
    inputs, keep = BATCHES[batch]
    labels = inputs["input_ids"].masked_fill(~keep, -100)
    grads = {}
    for backend in ("eager", attn):
        model = tiny(backend).train()
        model(**inputs, labels=labels, use_cache=False).loss.backward()
        grads[backend] = {name: p.grad for name, p in model.named_parameters()}
    for name, grad in grads["eager"].items():
        torch.testing.assert_close(grads[attn][name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_blocksparse_sdpa_gives_each_query_chunk_only_the_keys_of_its_documents(monkeypatch):
    calls = []
    sdpa = attention.sdpa_attention_forward

    def spy(module, query, key, *args, **kwargs):
        calls.append((query.shape[2], key.shape[2]))
        return sdpa(module, query, key, *args, **kwargs)

    monkeypatch.setattr(attention, "sdpa_attention_forward", spy)
    inputs, _ = BATCHES["packed"]
    logits(tiny("blocksparse_sdpa"), **inputs)
    # Row 0 holds documents of 10, 6 and 8 tokens (EOS included), row 1 of 5, 13 and 6. Chunks of 8
    # queries: a chunk sees from the start of its first query's document to its own end.
    row0 = [(8, 8), (8, 16), (8, 8)]  # [0,8) → [0,8); [8,16) → [0,16); [16,24) → [16,24)
    row1 = [(8, 8), (8, 11), (8, 19)]  # [0,8) → [0,8); [8,16) → [5,16); [16,24) → [5,24)
    assert calls == (row0 + row1) * 2  # two layers
    calls.clear()
    logits(tiny("blocksparse_sdpa"), **BATCHES["causal"][0])  # no mask at all: one plain causal call per layer
    assert calls == [(SEQ, SEQ)] * 2


def test_flex_attention_has_no_cpu_backward_and_training_with_it_is_refused(tmp_path):
    inputs, _ = BATCHES["causal"]
    with pytest.raises(NotImplementedError, match="backward on CPU"):
        tiny("flex_attention").train()(**inputs, labels=inputs["input_ids"], use_cache=False)
    cpu = torch.device("cpu")
    with pytest.raises(PipelineError, match="no backward pass on CPU"):
        check_backend("flex_attention", cpu, training=True)
    if attention.flex_attention_is_right_on_cpu():
        check_backend("flex_attention", cpu, training=False)  # evaluation with it is fine
    with pytest.raises(PipelineError, match="needs a CUDA GPU"):
        check_backend("flash_attention_2", cpu, training=False)
    # The pretrain stage asks before reading any data or writing its folder (on the CPU, also where a GPU is).
    result = run_cli("pretrain", "--recipe", TINY, "--out", tmp_path / "run", "attn_implementation=flex_attention",
                     env=CPU_ONLY)
    assert result.returncode == 2 and "no backward pass on CPU" in result.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("attn,model", [("eager", {}), ("sdpa", {}), ("sdpa", {"attention_scale": 1.0}),
                                        ("sdpa", {"sliding_window": 4}), ("blocksparse_sdpa", {}),
                                        ("blocksparse_sdpa", {"sliding_window": 4})])
def test_document_masking_equals_documents_run_alone(attn, model):
    """Restarting position_ids and no attention_mask: transformers masks across documents itself.

    flex_attention is covered through eager: its packed-batch logits equal eager's (above), and
    each new sequence length would cost it another compilation here.
    """
    docs = [torch.cat([d, torch.tensor([EOS])]) for d in tokens(9, 5, 7, seed=4)]
    block = torch.cat(docs)[None]
    lm = tiny(attn, **model)
    together = logits(lm, input_ids=block, position_ids=document_positions(block, EOS))[0]
    alone = torch.cat([logits(lm, input_ids=d[None])[0] for d in docs])
    torch.testing.assert_close(together, alone, rtol=0, atol=ATOL)
    # Without the restarting positions the same block is one long document: the logits differ.
    assert not torch.allclose(logits(lm, input_ids=block)[0], alone, atol=1e-3)


@pytest.mark.parametrize("kv_heads", [4, 2, 1])  # MHA, GQA, MQA
def test_kv_projections_have_one_head_dim_per_kv_head(kv_heads):
    model = tiny(num_kv_heads=kv_heads)
    attn = model.model.layers[0].self_attn
    head_dim = 32 // 4
    assert attn.q_proj.out_features == 4 * head_dim
    assert attn.k_proj.out_features == attn.v_proj.out_features == kv_heads * head_dim
    inputs, _ = BATCHES["causal"]
    torch.testing.assert_close(logits(tiny("sdpa", num_kv_heads=kv_heads), **inputs), logits(model, **inputs),
                               rtol=0, atol=ATOL)


def perturbed(model, ids: torch.Tensor, at: int) -> torch.Tensor:
    """Per position: did changing the token at `at` change its logits?"""
    other = ids.clone()
    other[0, at] = EOS + 1 + (ids[0, at] - EOS) % (VOCAB - EOS - 1)  # a different ordinary token
    return (logits(model, input_ids=ids) - logits(model, input_ids=other)).abs().amax(-1)[0] > 1e-6


@pytest.mark.parametrize("attn", ["eager", "sdpa", "flex_attention", "blocksparse_sdpa"])
def test_sliding_window_limits_what_a_token_sees(attn):
    """Each layer looks back W-1 tokens, so after L layers a token depends on the L·(W-1) before it."""
    if attn == "flex_attention" and not attention.flex_attention_is_right_on_cpu():
        pytest.skip("flex attention is refused on this CPU (its self-check failed; test_backend_logits_match_eager "
                    "tests the refusal)")
    window, layers, at = 4, 2, 5
    model = tiny(attn, sliding_window=window)
    changed = perturbed(model, torch.stack(tokens(SEQ)), at)
    reach = at + layers * (window - 1)
    assert changed[at:reach + 1].all() and not changed[:at].any() and not changed[reach + 1:].any()
    # A window as long as the sequence is plain causal attention.
    assert perturbed(tiny(attn, sliding_window=SEQ), torch.stack(tokens(SEQ)), at)[at:].all()


def test_sliding_window_checkpoint_loads_as_causal_lm_and_under_task_heads(tmp_path):
    model = tiny("sdpa", sliding_window=4)
    assert model.config.model_type == "mistral"
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert loaded.config.sliding_window == 4
    ids = torch.stack(tokens(SEQ))
    torch.testing.assert_close(logits(loaded, input_ids=ids), logits(model, input_ids=ids), rtol=0, atol=ATOL)
    for head in (AutoModelForSequenceClassification, AutoModelForQuestionAnswering):
        load_body(head.from_config(loaded.config), tmp_path, loaded.config)  # raises unless every body weight loads
    # Attention FLOPs follow the window: 12·L·d per attended key, W − W²/2T keys per query.
    full, windowed = (training_flops_per_token(m, SEQ) for m in (tiny(), model))
    assert full - windowed == pytest.approx(12 * 2 * 32 * (SEQ / 2 - (4 - 16 / (2 * SEQ))))


def test_attention_scale_is_the_standard_scale_by_default_and_overrides_it():
    inputs, _ = BATCHES["padded"]
    standard = logits(tiny("sdpa"), **inputs)
    assert torch.equal(logits(tiny("sdpa", attention_scale=(32 // 4) ** -0.5), **inputs), standard)
    unscaled = tiny("sdpa", attention_scale=1.0)
    assert unscaled.config._attn_implementation == "scaled_sdpa"
    assert not torch.allclose(logits(unscaled, **inputs), standard, atol=1e-3)


def test_scaled_attention_stays_causal_and_keeps_the_padding_mask():
    model = tiny("sdpa", attention_scale=1.0)
    changed = perturbed(model, torch.stack(tokens(SEQ)), at=10)
    assert not changed[:10].any() and changed[10:].all()
    inputs, keep = BATCHES["padded"]
    short = inputs["input_ids"][0, keep[0]][None]
    torch.testing.assert_close(logits(model, **inputs)[0, keep[0]], logits(model, input_ids=short)[0],
                               rtol=0, atol=ATOL)


def test_attention_scale_is_saved_and_only_loads_onto_sdpa(tmp_path):
    tiny("sdpa", attention_scale=1.0).save_pretrained(tmp_path)
    config = AutoModelForCausalLM.from_pretrained(tmp_path).config
    assert config.attention_scale == 1.0
    assert attn_implementation_for(config, "sdpa") == "scaled_sdpa"
    with pytest.raises(PipelineError, match="implemented on sdpa only"):
        attn_implementation_for(config, "eager")
    with pytest.raises(PipelineError, match="implemented on sdpa only"):
        tiny("flex_attention", attention_scale=1.0)


@pytest.mark.parametrize("override,message", [
    ("model.sliding_window=0", "model.sliding_window"),
    ("model.attention_scale=0", "model.attention_scale"),
    ("model.attention_scale=.nan", "model.attention_scale"),
    ("model.num_kv_heads=3", "model.num_kv_heads"),
])
def test_bad_attention_settings_are_refused(override, message):
    with pytest.raises(PipelineError, match=message):
        load_recipe(PretrainConfig, None, [override])


def test_single_head_at_equal_width_is_one_wide_head():
    attn = tiny(num_heads=1, num_kv_heads=None).model.layers[0].self_attn
    assert attn.head_dim == 32 and attn.scaling == pytest.approx(1 / math.sqrt(32))
