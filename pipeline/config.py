"""The recipe schemas: one dataclass per stage, with its defaults and its `validate()`.

Types are what OmegaConf checks when pipeline/recipe.py reads a YAML file onto a schema;
`validate()` checks the values that a type cannot express. Every problem becomes a
PipelineError, which the CLI prints as one line with exit code 2.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional

from pipeline.errors import PipelineError

ATTENTION_BACKENDS = ("eager", "sdpa", "flex_attention", "flash_attention_2", "blocksparse_sdpa")
MIXED_PRECISION = ("auto", "no", "bf16", "fp16")
OPTIMIZERS = ("adamw", "muon")
FINETUNE_METHODS = ("full", "lora")  # lora: pipeline/adapters.py
# The names transformers.get_scheduler accepts (SchedulerType) that this loop can drive with only
# warmup_steps and max_steps, plus "wsd" for warmup_stable_decay. Left out: reduce_lr_on_plateau and
# greedy (stepped with a metric), cosine_with_min_lr and cosine_warmup_with_min_lr (need a min_lr).
# tests/test_budget_muon.py checks each against transformers. Kept literal: no transformers import here.
SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
              "inverse_sqrt", "warmup_stable_decay", "wsd")


@dataclass
class TrainConfig:
    """Keys every training stage understands, with their Hugging Face meanings."""

    name: str = ""  # the recipe's name; defaults to the YAML file's stem
    max_steps: int = 100  # optimizer steps; -1 derives them from num_train_epochs
    num_train_epochs: float = 1.0
    learning_rate: float = 3e-4  # the body's (top layer's) peak rate
    head_learning_rate: Optional[float] = None  # a new head's peak rate; null: learning_rate (LoRA: lora_learning_rate)
    layer_lr_decay: float = 1.0  # each body layer trains at this times the rate of the one above it
    # Linear probing, then fine-tuning (LP-FT): for the first N steps only the head trains (the body's
    # rate is 0), then the body warms up over warmup_steps. 0 = everything trains from the start.
    freeze_body_steps: int = 0
    lr_scheduler_type: str = "cosine"  # any of SCHEDULERS; wsd = warmup, constant, then decay to 0
    warmup_steps: int = 0
    decay_fraction: float = 0.2  # wsd: the last share of the steps, decaying to 0 (1-sqrt shape)
    optimizer: str = "adamw"  # or muon: Muon for the layers' 2-D weight matrices, AdamW for the rest
    muon_learning_rate: float = 0.02  # Muon's peak rate (the AdamW groups keep learning_rate)
    muon_momentum: float = 0.95
    # Stop after this many minutes of optimizer steps (evaluation and saving not counted), with a finished
    # schedule: throughput is measured over the first steps and max_steps is fixed from it (pipeline/budget.py).
    # max_steps stays the upper bound. null = off.
    max_train_minutes: Optional[float] = None
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    max_grad_norm: float = 1.0
    global_batch_size: int = 32  # sequences per optimizer step, across all processes
    micro_batch_size: int = 8  # sequences per forward pass, per process
    seed: int = 1337
    logging_steps: int = 10
    eval_steps: int = 100
    save_steps: int = 100
    keep_checkpoints: int = 2  # newest K of checkpoints/step-N are kept
    max_train_samples: Optional[int] = None
    max_eval_samples: Optional[int] = None
    resume: bool = False  # continue from the newest checkpoint in the output folder
    overwrite: bool = False  # allow starting over in a folder that already holds a run
    mixed_precision: str = "auto"  # bf16 where this machine multiplies it natively, else fp32 (pipeline/precision.py)
    # Recipe keys (dotted, e.g. model.hidden_size) that replace the recipe's own when mixed_precision=auto resolves
    # to fp32 (a CPU without native bf16, ~8x slower): a shape that suits that pace. The command line still wins.
    fp32_overrides: dict[str, Any] = field(default_factory=dict)
    compile: bool = False
    attn_implementation: str = "sdpa"
    num_workers: int = 0  # DataLoader worker processes
    group_by_length: bool = False  # batch examples of similar length together (less padding)

    def validate(self) -> None:
        positive = ("learning_rate", "global_batch_size", "micro_batch_size", "logging_steps",
                    "eval_steps", "save_steps", "keep_checkpoints", "num_train_epochs")
        for key in positive:
            if getattr(self, key) <= 0:
                _bad(key, getattr(self, key), "must be > 0")
        if self.head_learning_rate is not None and not self.head_learning_rate > 0:
            _bad("head_learning_rate", self.head_learning_rate, "must be > 0, or null for learning_rate")
        if not 0 < self.layer_lr_decay <= 1:
            _bad("layer_lr_decay", self.layer_lr_decay, "must be in (0, 1]: 1 trains every layer at learning_rate")
        for key in ("warmup_steps", "weight_decay", "max_grad_norm", "num_workers", "freeze_body_steps"):
            if getattr(self, key) < 0:
                _bad(key, getattr(self, key), "must be >= 0")
        if self.max_steps == 0 or self.max_steps < -1:
            _bad("max_steps", self.max_steps, "must be > 0, or -1 to train for num_train_epochs")
        for key in ("max_train_samples", "max_eval_samples"):
            if getattr(self, key) is not None and getattr(self, key) <= 0:
                _bad(key, getattr(self, key), "must be > 0 or null (all)")
        _choice("mixed_precision", self.mixed_precision, MIXED_PRECISION)
        _choice("attn_implementation", self.attn_implementation, ATTENTION_BACKENDS)
        _choice("lr_scheduler_type", self.lr_scheduler_type, SCHEDULERS)
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        if not 0 < self.decay_fraction <= 1:
            _bad("decay_fraction", self.decay_fraction, "must be in (0, 1]: the share of the steps the wsd decay takes")
        if not (self.muon_learning_rate > 0 and math.isfinite(self.muon_learning_rate)):
            _bad("muon_learning_rate", self.muon_learning_rate, "must be > 0")
        if not 0 <= self.muon_momentum < 1:
            _bad("muon_momentum", self.muon_momentum, "must be in [0, 1)")
        minutes = self.max_train_minutes
        if minutes is not None and not (minutes > 0 and math.isfinite(minutes)):
            _bad("max_train_minutes", minutes, "must be > 0 (minutes of optimizer steps), or null for no time budget")
        if self.resume and self.overwrite:
            raise PipelineError("resume=true and overwrite=true contradict each other: pass only one")

    def gradient_accumulation_steps(self, num_processes: int) -> int:
        per_step = self.micro_batch_size * num_processes
        if self.global_batch_size % per_step:
            raise PipelineError(
                f"global_batch_size={self.global_batch_size} is not a multiple of micro_batch_size × processes "
                f"= {self.micro_batch_size} × {num_processes}: change global_batch_size or micro_batch_size"
            )
        return self.global_batch_size // per_step


@dataclass
class ModelConfig:
    """Llama-style decoder sizes (mapped onto transformers' LlamaConfig; MistralConfig with a sliding window)."""

    hidden_size: int = 256
    num_layers: int = 4
    num_heads: int = 4  # 1 = single-head attention over the full width
    num_kv_heads: Optional[int] = None  # grouped-query attention (1 = multi-query); null = num_heads
    sliding_window: Optional[int] = None  # each token attends to itself and the W-1 before it; null = all
    attention_scale: Optional[float] = None  # softmax(s·QKᵀ); null = 1/sqrt(head_dim); needs sdpa
    intermediate_size: Optional[int] = None  # null = SwiGLU's 8/3 × hidden, rounded up to 64
    tie_word_embeddings: bool = True
    rope_theta: float = 10000.0
    initializer_range: float = 0.02

    def validate(self) -> None:
        for key in ("hidden_size", "num_layers", "num_heads"):
            if getattr(self, key) <= 0:
                _bad(f"model.{key}", getattr(self, key), "must be > 0")
        if self.hidden_size % self.num_heads:
            _bad("model.hidden_size", self.hidden_size, f"must be a multiple of model.num_heads={self.num_heads}")
        kv = self.num_kv_heads
        if kv is not None and (kv <= 0 or self.num_heads % kv):
            _bad("model.num_kv_heads", kv, f"must divide model.num_heads={self.num_heads}")
        if self.sliding_window is not None and self.sliding_window <= 0:
            _bad("model.sliding_window", self.sliding_window, "must be > 0, or null for full causal attention")
        scale = self.attention_scale
        if scale is not None and not (scale > 0 and math.isfinite(scale)):
            _bad("model.attention_scale", scale, "must be > 0, or null for 1/sqrt(head_dim)")


@dataclass
class CorpusSource:
    """One corpus of a pretraining mixture."""

    dataset: str = ""  # hub id, e.g. local/enwiki_featured_good_2019
    dataset_config: Optional[str] = None
    split: str = "train"
    eval_split: Optional[str] = "validation"  # null: hold out documents from `split`
    text_column: str = "text"
    weight: float = 1.0  # share of the training tokens this corpus gives (normalised; pipeline/mixture.py)
    streaming: bool = False  # read as training goes, never tokenized ahead (pipeline/streaming.py); all sources or none


@dataclass
class PretrainConfig(TrainConfig):
    # A single corpus (these four keys) or a weighted `mixture` of several.
    dataset: str = "local/enwiki_featured_good_2019"
    dataset_config: Optional[str] = None
    text_column: str = "text"
    eval_split: Optional[str] = "validation"
    mixture: list[CorpusSource] = field(default_factory=list)
    max_documents: Optional[int] = None  # read at most this many documents per corpus split
    # Training tokens of the corpus, split among the sources by weight; a source with too few repeats (epochs).
    # null = the most at which no source repeats (a single corpus: all of it).
    max_tokens: Optional[int] = None
    holdout_documents: int = 50  # validation documents taken from train when a corpus has no eval split
    vocab_size: int = 8192
    tokenizer_documents: int = 2000  # documents the tokenizer is trained on
    # Processes that tokenize the corpus (pipeline/encoding.py); the tokens never depend on it.
    # null = the cores this process may run on.
    tokenize_workers: Optional[int] = None
    # Seeds the corpus mixture (which documents, in which order) and so the tokenizer and the validation
    # documents. Kept apart from `seed` (weights, batch order): runs at two seeds score the same documents.
    data_seed: int = 1337
    seq_len: int = 256
    doc_masking: bool = False  # attend only within each document of a packed block
    model: ModelConfig = field(default_factory=ModelConfig)
    num_samples: int = 2  # generated samples shown at each evaluation
    sample_tokens: int = 40

    def validate(self) -> None:
        super().validate()
        self.model.validate()
        if self.vocab_size < 300:
            _bad("vocab_size", self.vocab_size, "must be >= 300 (256 bytes + special tokens + merges)")
        if self.seq_len < 8:
            _bad("seq_len", self.seq_len, "must be >= 8")
        for key in ("max_documents", "holdout_documents", "tokenizer_documents"):
            value = getattr(self, key)
            if value is not None and value <= 0:
                _bad(key, value, "must be > 0")
        if self.tokenize_workers is not None and self.tokenize_workers <= 0:
            _bad("tokenize_workers", self.tokenize_workers, "must be > 0 (processes), or null for the cores available")
        if self.max_tokens is not None and self.max_tokens <= 0:
            _bad("max_tokens", self.max_tokens, "must be > 0 (training tokens), or null for the most without repeats")
        if len({src.streaming for src in self.sources()}) > 1:
            raise PipelineError("some mixture sources say streaming: true and some do not: "
                                "stream every source or none")
        if self.streaming():
            if self.max_steps <= 0:
                _bad("max_steps", self.max_steps, "must be > 0 with streaming sources: a stream has no epochs to count")
            for key, rule in (("max_tokens", "null: with streaming sources max_steps bounds the tokens read"),
                              ("max_train_samples", "null: a stream has no sample to cut"),
                              ("num_workers", "0: a stream's position lives in the training process")):
                if getattr(self, key):
                    _bad(key, getattr(self, key), f"must be {rule}")
        for i, src in enumerate(self.sources()):
            if not src.dataset:
                _bad(f"mixture[{i}].dataset", src.dataset, "must name a dataset hub id")
            if not (src.weight > 0 and math.isfinite(src.weight)):
                _bad(f"mixture[{i}].weight", src.weight, "must be > 0")

    def streaming(self) -> bool:
        """Whether the mixture's sources are streamed (pipeline/streaming.py)."""
        return any(src.streaming for src in self.sources())

    def sources(self) -> list[CorpusSource]:
        """The corpora to read: the mixture if given, else the single `dataset`."""
        if self.mixture:
            return list(self.mixture)
        return [CorpusSource(self.dataset, self.dataset_config, "train", self.eval_split, self.text_column)]


@dataclass
class FinetuneConfig(TrainConfig):
    max_steps: int = -1
    num_train_epochs: float = 1.0
    learning_rate: float = 1e-4
    warmup_steps: int = 20
    lr_scheduler_type: str = "linear"
    weight_decay: float = 0.01
    adam_beta2: float = 0.999
    max_length: int = 128  # tokens per example; longer ones are truncated (and counted)
    # Classification: which end of a long text is kept. "left" cuts the start and keeps the end, where a
    # review states its verdict (Sun et al. 2019 found IMDB's tail beats its head). The saved tokenizer
    # keeps the side and max_length, so `pipeline("text-classification")(text, truncation=True)` cuts alike.
    truncation_side: str = "right"
    doc_stride: int = 64  # QA: overlap between windows of a long context
    init: str = "pretrained"  # or "scratch": same architecture and tokenizer, random weights
    dataset: str = ""  # override the task's dataset: a hub id (rajpurkar/squad with hub access) or your own files
    train_split: str = ""  # override the task's train split
    eval_split: str = ""  # override the task's evaluation split
    text_column: str = ""  # the dataset's column that holds the task's text (QA: the context), if named otherwise
    label_column: str = ""  # classification: the dataset's column of labels, if named otherwise
    n_best: int = 20
    max_answer_length: int = 30
    group_by_length: bool = True
    pooling: str = "last"  # classification: the last token's state, or the mean over the text (pipeline/pooling.py)
    # Early stopping: a seeded share of the training sample becomes the dev split; it is evaluated every
    # eval_steps, training stops after `early_stopping_patience` evaluations without a better score, and
    # the best weights are kept. The eval split is only read once, at the end. 0 = off.
    dev_fraction: float = 0.0
    early_stopping_patience: int = 0
    # Task-adaptive LM training (ULMFiT stage 2): causal-LM steps on the task's training texts, labels
    # unused, before the head is trained. 0 = off; only with init=pretrained.
    adapt_steps: int = 0
    adapt_learning_rate: float = 5e-4
    adapt_seq_len: int = 256
    # LoRA through peft (pipeline/adapters.py): `lora` freezes the body and trains rank-`lora_r` updates
    # (scaled by lora_alpha / lora_r) of its blocks' linear layers and of the token embedding; the head (and the
    # pooling layer's attention) train in full.
    finetune_method: str = "full"
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    # [] = every linear layer of the transformer blocks (attention and MLP projections, as peft's all-linear,
    # never the head); else layer names matched at the end of a layer's path, e.g. [q_proj, v_proj] or [attn.c_proj]
    lora_target_modules: list[str] = field(default_factory=list)
    # also a rank-lora_r update of the input token embedding: +6.5 points on emotion for 1.2% more parameters
    # (docs/recipes.md, "Which method: the figures")
    lora_embedding: bool = True
    # with LoRA, the peak rate (AdamW) of what trains below the head (the factors, a pooling block's new weights),
    # in place of learning_rate, which the recipes tune for full weights: SST-2 74.0 at 1e-3, 72.1 at 3e-4
    lora_learning_rate: float = 1e-3

    def validate(self) -> None:
        super().validate()
        _choice("init", self.init, ("pretrained", "scratch"))
        _choice("pooling", self.pooling, ("last", "mean"))
        _choice("truncation_side", self.truncation_side, ("right", "left"))
        if not 0 <= self.dev_fraction < 1:
            _bad("dev_fraction", self.dev_fraction, "must be in [0, 1): the share of the training sample held out")
        if self.early_stopping_patience < 0:
            _bad("early_stopping_patience", self.early_stopping_patience, "must be >= 0 (0 = off)")
        if self.early_stopping_patience and not self.dev_fraction:
            _bad("early_stopping_patience", self.early_stopping_patience,
                 "needs a dev split to watch: set dev_fraction (e.g. 0.1), never the eval split")
        for key in ("adapt_steps",):
            if getattr(self, key) < 0:
                _bad(key, getattr(self, key), "must be >= 0 (0 = off)")
        if not self.adapt_learning_rate > 0:
            _bad("adapt_learning_rate", self.adapt_learning_rate, "must be > 0")
        if self.adapt_seq_len < 8:
            _bad("adapt_seq_len", self.adapt_seq_len, "must be >= 8")
        if self.max_length < 8:
            _bad("max_length", self.max_length, "must be >= 8")
        if self.doc_stride <= 0:  # QA also checks it against the room each question leaves
            _bad("doc_stride", self.doc_stride, "must be > 0")
        _choice("finetune_method", self.finetune_method, FINETUNE_METHODS)
        if not (self.lora_learning_rate > 0 and math.isfinite(self.lora_learning_rate)):
            _bad("lora_learning_rate", self.lora_learning_rate, "must be > 0")
        if self.lora_r <= 0:
            _bad("lora_r", self.lora_r, "must be > 0 (the rank of each update)")
        if self.lora_alpha <= 0:
            _bad("lora_alpha", self.lora_alpha, "must be > 0 (updates are scaled by lora_alpha / lora_r)")
        if not 0 <= self.lora_dropout < 1:
            _bad("lora_dropout", self.lora_dropout, "must be in [0, 1)")
        if any(not name.strip() for name in self.lora_target_modules):
            _bad("lora_target_modules", self.lora_target_modules,
                 "must name layers (e.g. [q_proj, v_proj]), or be [] for all")
        if self.finetune_method == "lora" and self.init == "scratch":
            raise PipelineError("finetune_method=lora with init=scratch would train adapters on a frozen random body: "
                                "use init=pretrained, or finetune_method=full for the scratch control")
        if self.finetune_method == "lora" and self.adapt_steps:
            raise PipelineError("adapt_steps trains the whole body, which finetune_method=lora is there to avoid: "
                                "set adapt_steps=0, or use finetune_method=full")


def _bad(key: str, value: Any, rule: str) -> None:
    raise PipelineError(f"recipe key '{key}' = {value!r} is invalid: it {rule}")


def _choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        _bad(key, value, f"must be one of {', '.join(choices)}")
