"""LoRA fine-tuning through peft (finetune_method=lora, pipeline/adapters.py).

The body must stay frozen: final/ differs from the checkpoint only by the merged B·A·alpha/r of each
target layer, and the adapter saved beside it reproduces final/ on top of the checkpoint. Both task
families run from the project's tiny checkpoint and from tiny Qwen2 and GPT-2 (Conv1D) checkpoints.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest
import torch
import transformers
from accelerate import Accelerator
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForQuestionAnswering, AutoModelForSequenceClassification

from conftest import FINETUNE_TINY, ROOT, bad_input_line, save_byo
from pipeline import adapters
from pipeline.cli import main
from pipeline.config import FinetuneConfig
from pipeline.heads import load_head
from pipeline.optim import CombinedOptimizer, build_optimizer, parameter_depths, parameter_groups
from pipeline.pooling import add_mean_pooling_layer, lora_parts

HEADS = {"sst2": (AutoModelForSequenceClassification, {"num_labels": 2}), "squad": (AutoModelForQuestionAnswering, {})}
RUNS = {"sst2": ["max_train_samples=64", "max_eval_samples=16", "max_steps=6", "eval_steps=6", "save_steps=6"],
        "squad": ["max_length=128", "doc_stride=32", "max_train_samples=48", "max_eval_samples=8", "max_steps=6",
                  "eval_steps=6", "save_steps=6"]}


def _checkpoint(source, tiny_pretrain, byo_texts, tmp_path):
    if source == "tiny":
        return tiny_pretrain / "final"
    return save_byo(tmp_path / source, source, byo_texts, pad=source != "gpt2")


def _logits(model, input_ids):
    model.eval()
    with torch.no_grad():
        out = model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids))
    return out.logits if hasattr(out, "logits") else torch.cat([out.start_logits, out.end_logits], -1)


def _expected_deltas(adapter_dir, scale: float, prefix: str) -> dict[str, torch.Tensor]:
    """{body weight name: scale·B·A} from the saved adapter (keys base_model.model.<prefix>.<layer>.lora_A.weight;
    an embedding's are <layer>.lora_embedding_A, and its update is stored transposed: [vocab, width])."""
    saved = load_file(adapter_dir / "adapter_model.safetensors")
    deltas = {}
    for key, a in saved.items():
        for marker, transposed in ((".lora_A.", False), (".lora_embedding_A", True)):
            if marker in key:
                layer = key.removeprefix(f"base_model.model.{prefix}.").split(marker)[0]
                delta = scale * saved[key.replace(marker, marker.replace("_A", "_B"))].float() @ a.float()
                deltas[f"{layer}.weight"] = delta.T if transposed else delta
    return deltas


# The squad runs use the squad recipe's optimizer=muon: LoRA's matrices take AdamW (one printed line).
@pytest.mark.parametrize("task", HEADS)
@pytest.mark.parametrize("source", ["tiny", "mistral", "qwen2", "gpt2"])
def test_lora_fine_tunes_and_saves_merged_model_and_adapter(source, task, tiny_pretrain, byo_texts, tmp_path, capsys):
    ckpt = _checkpoint(source, tiny_pretrain, byo_texts, tmp_path)
    out = tmp_path / "run"
    # The classifiers from a foreign family also train a pooling block (its attention in full), and stop early on
    # a dev split.
    pooling = ["pooling=mean", "dev_fraction=0.25", "early_stopping_patience=2", "eval_steps=2"] \
        if task == "sst2" and source != "tiny" else []
    muon = ["optimizer=muon", "muon_learning_rate=0.005"] if task == "squad" else []
    main(["finetune", "--task", task, "--ckpt", str(ckpt), "--recipe", str(FINETUNE_TINY), "--out", str(out),
          "finetune_method=lora", "lora_r=4", "lora_alpha=8", *RUNS[task], *pooling, *muon])
    printed = capsys.readouterr()
    report = json.loads((out / "eval.json").read_text())
    counts = report["parameters"]
    assert counts["method"] == "lora" and 0 < counts["trainable"] < counts["total"]
    assert f"finetune_method=lora: {counts['trainable']:,} of {counts['total']:,} parameters train" in printed.out
    assert "parameters train" in printed.out and ", at lora_learning_rate=0.001" in printed.out  # the default rate
    if muon:
        assert "LoRA's matrices train with AdamW" in printed.out
    # The optimizer keeps state for what trains only: AdamW's two fp32 moments (and a step count) per parameter.
    memory = report["memory"]
    assert 8 * counts["trainable"] <= memory["optimizer_state_bytes"] < 9 * counts["trainable"]
    assert memory["kind"] == "cpu_peak_rss" and memory["bytes"] > 0
    if pooling:
        assert report["best_step"] and (out / "best" / "model.safetensors").is_file()

    final, adapter_dir = out / "final", out / "final" / "adapter"
    assert {p.name for p in adapter_dir.iterdir()} >= {"adapter_config.json", "adapter_model.safetensors"}
    # The adapter holds exactly what trained: LoRA's matrices, the head, the pooling block.
    assert sum(t.numel() for t in load_file(adapter_dir / "adapter_model.safetensors").values()) == counts["trainable"]
    head_class, head_config = HEADS[task]
    tuned, loading = head_class.from_pretrained(final, output_loading_info=True)
    assert not loading["missing_keys"] and not loading["unexpected_keys"]
    base, _ = load_head(ckpt, head_class, "pretrained", 0, "sdpa", **head_config)

    # Frozen body: every checkpoint weight is unchanged but for the merged LoRA update of the target layers.
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    deltas = _expected_deltas(adapter_dir, config["lora_alpha"] / config["r"], base.base_model_prefix)
    assert deltas
    after = tuned.base_model.state_dict()
    embedding_name = next(n for n, m in base.base_model.named_modules() if m is base.base_model.get_input_embeddings())
    assert f"{embedding_name}.weight" in deltas  # lora_embedding (the default) adapted the token embedding
    for name, before in base.base_model.state_dict().items():
        if name in deltas:
            embedding = name == f"{embedding_name}.weight"
            # GPT-2's Conv1D stores [in, out]; an embedding's delta is already in its own layout
            delta = deltas[name].T if config["fan_in_fan_out"] and not embedding else deltas[name]
            assert delta.abs().max() > 0, name
            torch.testing.assert_close(after[name] - before, delta, atol=1e-5, rtol=1e-4)
        else:
            assert torch.equal(after[name], before), name

    # The checkpoint + the adapter (peft's own loader) is the fine-tuned model.
    if pooling:
        add_mean_pooling_layer(base)  # the same shape; its weights come from the adapter
    restored = PeftModel.from_pretrained(base, adapter_dir)
    ids = torch.randint(3, tuned.config.vocab_size, (2, 24), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(_logits(restored, ids), _logits(tuned, ids), atol=1e-5, rtol=1e-4)

    # `make evaluate` re-measures final/ (the adapter/ folder beside the weights is ignored).
    main(["evaluate", "--ckpt", str(final)])
    evaluation = json.loads((out / "eval.json").read_text())["evaluation"]
    assert evaluation["fingerprint"] == report["evaluation"]["fingerprint"]
    if source == "tiny" and task == "sst2":
        classify = transformers.pipeline("text-classification", model=str(final))
        assert classify("a gripping, beautiful film")[0]["label"] in {"negative", "positive"}
    if source == "tiny" and task == "squad":
        context = "The book was written by John Smith in 1990."
        capsys.readouterr()
        main(["predict", "--task", "squad", "--ckpt", str(final), "--question", "Who wrote it?", "--context", context])
        answer, _, start, end = capsys.readouterr().out.strip().splitlines()[-1].split("\t")
        assert context[int(start):int(end)].strip() == answer


@pytest.mark.parametrize("family", ["qwen2", "gpt2"])
def test_only_lora_head_and_pooling_attention_train(family, byo_texts, tmp_path):
    folder = save_byo(tmp_path / family, family, byo_texts, pad=family != "gpt2")
    model, _ = load_head(folder, AutoModelForSequenceClassification, "pretrained", 0, "sdpa", num_labels=2)
    pooling = add_mean_pooling_layer(model)
    in_full, frozen = lora_parts(pooling)
    cfg = FinetuneConfig(finetune_method="lora", optimizer="muon", learning_rate=1e-4, lora_learning_rate=2e-3,
                         head_learning_rate=5e-3)
    adapters.wrap(model, cfg, train_in_full=in_full, keep_frozen=frozen)
    blocks = next(child for child in model.base_model.children() if isinstance(child, torch.nn.ModuleList))
    in_pooling = {id(p) for p in pooling.parameters()}
    mlp = {id(p) for p in pooling.mlp.parameters()}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    embedding = model.base_model.get_input_embeddings()
    for name, p in model.named_parameters():
        lora = any(f".{factor}" in name for factor in ("lora_A.", "lora_B.", "lora_embedding_A", "lora_embedding_B"))
        head = name.startswith("score.modules_to_save.")
        pooled = id(p) in in_pooling and ".modules_to_save." in name
        assert (name in trainable) == (lora or head or pooled), name
        assert not (id(p) in mlp and p.requires_grad), name  # the pooling MLP stays the no-op it starts as
        if lora:  # in the checkpoint's blocks and its embedding only: the pooling block has no adapter
            assert id(p) not in in_pooling, name
    assert any(p.requires_grad for p in embedding.lora_embedding_A.values())
    # Of the pooling block, the attention's values and output and the norms train (q and k stay zero; GPT-2's
    # share c_attn with v)
    expected = {"v_proj", "o_proj", "input_layernorm", "post_attention_layernorm"} if family == "qwen2" else \
        {"c_attn", "c_proj", "ln_1", "ln_2"}
    assert {n.split(".modules_to_save.")[0].split(".")[-1] for n in trainable
            if ".modules_to_save." in n and "score" not in n} == expected

    ids = torch.randint(3, model.config.vocab_size, (4, 16))
    model.train()
    model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=torch.tensor([0, 1, 0, 1])).loss.backward()
    assert {n for n, p in model.named_parameters() if p.grad is not None} == trainable

    # The optimizer sees the trainable parameters only; Muon takes the pooling block's matrices, never LoRA's.
    groups = parameter_groups(model, cfg)
    grouped = {id(p) for g in groups for p in g["params"]}
    assert grouped == {id(p) for p in model.parameters() if p.requires_grad}
    muon = {id(p) for g in groups if g["optimizer"] == "muon" for p in g["params"]}
    assert muon == {id(p) for p in pooling.parameters() if p.requires_grad and p.ndim == 2}
    assert not muon & adapters.lora_factors(model)
    # lora_learning_rate replaces learning_rate (tuned for full weights): LoRA's factors and the pooling block's
    # AdamW weights train at it, Muon's at muon_learning_rate, the head at its own rate.
    rates = {id(p): g["lr"] for g in groups for p in g["params"]}
    head = {id(p) for n, p in model.named_parameters() if p.requires_grad and "score" in n}
    assert {rates[i] for i in adapters.lora_factors(model)} == {2e-3}
    assert {rates[i] for i in head} == {5e-3} and {rates[i] for i in muon} == {cfg.muon_learning_rate}
    assert {rate for i, rate in rates.items() if i in in_pooling and i not in muon} == {2e-3}
    assert {g["name"] for g in groups if id(g["params"][0]) in adapters.lora_factors(model)} == \
        {f"lora-depth-{d}" for d in range(len(blocks))}  # the embedding (0) and each block of the checkpoint
    assert isinstance(build_optimizer(model, cfg), CombinedOptimizer)
    block_of = {id(p): i for i, block in enumerate(blocks) for p in block.parameters()}
    params = dict(model.named_parameters())
    in_embedding = {id(p) for p in embedding.parameters()}
    for name, depth in parameter_depths(model).items():  # the blocks are still found: block i is at depth i + 1
        expected = None if name.startswith("score.") else 0 if id(params[name]) in in_embedding \
            else block_of[id(params[name])] + 1
        assert depth == expected, name


@pytest.mark.parametrize("config", [
    transformers.LlamaConfig(vocab_size=8192, hidden_size=256, intermediate_size=704, num_hidden_layers=4,
                             num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True),
    transformers.GPT2Config(vocab_size=8192, n_embd=256, n_layer=4, n_head=4, n_positions=512),
], ids=["llama", "gpt2"])
@pytest.mark.parametrize("embedding", [True, False], ids=["lora_embedding", "no_lora_embedding"])
def test_trainable_share_of_a_realistic_shape(config, embedding):
    """The shape of recipes/pretrain/cpu.yaml (5M parameters): LoRA of rank 8 trains a few percent of it."""
    config.pad_token_id, config.num_labels = 0, 2
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(config)
    full = adapters.parameter_counts(model, "full")
    assert full["trainable"] == full["total"]
    adapters.wrap(model, FinetuneConfig(finetune_method="lora", lora_embedding=embedding))
    lora = adapters.parameter_counts(model, "lora")
    assert 0 < lora["trainable"] < 0.1 * full["total"]
    targets = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if hasattr(m, "lora_A")}
    expected = {"c_attn", "c_proj", "c_fc"} if config.model_type == "gpt2" else \
        {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    if embedding:  # rank r over the vocabulary: r · (vocab + width) more parameters
        expected |= {"wte" if config.model_type == "gpt2" else "embed_tokens"}
    assert targets == expected  # every projection of the blocks (and the token embedding), never the head
    assert "score" not in {n for n, m in model.named_modules() if hasattr(m, "lora_A")}


def test_save_final_reloads_as_the_merged_model(byo_texts, tmp_path):
    folder = save_byo(tmp_path / "qwen2", "qwen2", byo_texts)
    model, tokenizer = load_head(folder, AutoModelForQuestionAnswering, "pretrained", 0, "sdpa")
    lora = adapters.wrap(model, FinetuneConfig(finetune_method="lora", lora_target_modules=["q_proj", "mlp.down_proj"]))
    with torch.no_grad():  # as if trained: B is no longer zero
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    ids = torch.randint(3, model.config.vocab_size, (2, 20))
    before_merge = _logits(model, ids)
    adapters.save_final(Accelerator(cpu=True), lora, tokenizer, tmp_path / "final")
    merged = _logits(model, ids)  # the object itself is now the merged model
    assert not any(".lora_" in n for n, _ in model.named_parameters())
    torch.testing.assert_close(merged, before_merge, atol=1e-5, rtol=1e-4)
    reloaded, loading = AutoModelForQuestionAnswering.from_pretrained(tmp_path / "final", output_loading_info=True)
    assert not loading["missing_keys"] and not loading["unexpected_keys"]
    assert torch.equal(_logits(reloaded, ids), merged)
    targets = json.loads((tmp_path / "final" / "adapter" / "adapter_config.json").read_text())["target_modules"]
    # (Qwen2ForQuestionAnswering calls its body `transformer`)
    assert sorted(t.rsplit(".", 2)[-2] + "." + t.rsplit(".", 1)[-1] for t in targets) == \
        sorted(["mlp.down_proj"] * 2 + ["self_attn.q_proj"] * 2 + ["transformer.embed_tokens"])
    assert not list((tmp_path).glob(".tmp-*"))  # the staged adapter was moved inside final/


@pytest.mark.parametrize("overrides, message", [
    (["finetune_method=qlora"], "recipe key 'finetune_method' = 'qlora' is invalid: it must be one of full, lora"),
    (["lora_r=0"], "recipe key 'lora_r' = 0 is invalid"),
    (["lora_alpha=-1"], "recipe key 'lora_alpha' = -1 is invalid"),
    (["lora_dropout=1.0"], "recipe key 'lora_dropout' = 1.0 is invalid"),
    (["init=scratch"], "finetune_method=lora with init=scratch"),
    (["adapt_steps=5"], "adapt_steps trains the whole body"),
    (["lora_target_modules=[q_proj,qq_proj]"], "qq_proj names no linear layer of"),
    (["lora_embedding=maybe"], "recipe key 'lora_embedding' has the wrong type"),
    (["lora_learning_rate=0"], "recipe key 'lora_learning_rate' = 0.0 is invalid: it must be > 0"),
])
def test_bad_lora_keys_exit_2_with_one_line(tiny_pretrain, tmp_path, capsys, overrides, message):
    line = bad_input_line(["finetune", "--task", "sst2", "--ckpt", tiny_pretrain / "final", "--recipe", FINETUNE_TINY,
                           "--out", tmp_path / "out", "finetune_method=lora", *overrides], capsys)
    assert message in line, line
    if "qq_proj" in message:  # the line names the layers there are
        assert "self_attn.q_proj, self_attn.k_proj" in line and "mlp.down_proj" in line
    assert not (tmp_path / "out").exists()


def test_kill_9_then_resume_is_bit_identical(tiny_pretrain, tmp_path):
    """LoRA with dropout, an adapted embedding and a pooling block whose attention trains in full, killed after a
    checkpoint, resumed across an epoch boundary. Dropout draws from the global RNG, which the checkpoint
    restores; each DataLoader the loop starts has a seeded generator of its own, so starting one at the resume
    takes nothing from that stream."""
    args = [sys.executable, "-m", "pipeline", "finetune", "--task", "sst2", "--ckpt", str(tiny_pretrain / "final"),
            "--recipe", str(FINETUNE_TINY), "finetune_method=lora", "max_train_samples=64",
            "max_steps=10", "save_steps=3", "eval_steps=10", "max_eval_samples=16", "pooling=mean",
            "lora_dropout=0.1"]
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    subprocess.run([*args, "--out", str(reference)], cwd=ROOT, check=True, capture_output=True, timeout=600)
    proc = subprocess.Popen([*args, "--out", str(killed)], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.time() + 300
    while not (killed / "checkpoints" / "step-6" / "trainer_state.json").exists():
        assert proc.poll() is None, proc.stderr.read()[-2000:]
        assert time.time() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    # The checkpoint holds what trains (LoRA's matrices, the head, the pooling block), not the frozen body.
    saved = load_file(killed / "checkpoints" / "step-6" / "model.safetensors")
    assert saved and all("lora_" in name or "modules_to_save" in name for name in saved), sorted(saved)
    result = subprocess.run([*args, "--out", str(killed), "resume=true"], cwd=ROOT, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "resumed from" in result.stdout + result.stderr
    for weights in ("model.safetensors", "adapter/adapter_model.safetensors"):
        a, b = load_file(reference / "final" / weights), load_file(killed / "final" / weights)
        assert a.keys() == b.keys()
        for name in a:
            assert torch.equal(a[name], b[name]), (weights, name)
