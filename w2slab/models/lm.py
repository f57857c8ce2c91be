"""``lm`` backend: a Hugging Face causal LM + LoRA that classifies by label token (GPU).

A row becomes a prompt ending in ``Label:``; the class logits are the LM's next-token logits
for the two label tokens (``" A"``/``" B"`` or ``" False"``/``" True"``, in ``LABELS`` order).
They are computed cheaply: the base transformer gives the final hidden state at the last real
token only, which is multiplied by the two label rows of the output embedding — no
full-vocabulary logits are ever formed.

Throughput choices: batches are length-grouped and right-padded only to their own longest row
(rounded up to a multiple of 8), and no attention mask is passed — with right padding and causal
attention the real tokens never see the pads, so results are exact and SDPA takes its
``is_causal`` (flash) path. On CUDA the frozen base runs in bf16 under autocast with fp32 LoRA
weights and fused AdamW (peft's fp32 input casting is switched off so LoRA matmuls run in bf16 too);
host-to-device copies are pinned and asynchronous, and a training step never waits for the GPU
(the losses are read once, after the last step); on CPU everything is fp32.

Memory: activation checkpointing follows ``grad_checkpointing``. If a training step runs out of CUDA
memory anyway, it is retried with checkpointing switched on, then with the batch split into
micro-batches of half the size (and half again), so a fit never changes its batches, optimiser
steps or results because of memory. ``compile=True`` compiles each decoder layer separately
(regional compilation: the identical layers share one compiled graph).
"""

from __future__ import annotations

import contextlib
import gc
import warnings
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from w2slab.models.base import (
    BackendConfig,
    LossFn,
    as_soft_targets,
    resolve_device,
    soft_xent,
)
from w2slab.testbeds.format import Split

TEMPLATES = {
    "pairwise": "Question: {prompt}\nAnswer A: {first}\nAnswer B: {second}\nLabel:",
    "correctness": "Question: {question}\nAnswer: {choice}\nLabel:",
}
QUESTION_FIELD = {"pairwise": "prompt", "correctness": "question"}
LABEL_TOKENS = {"pairwise": (" A", " B"), "correctness": (" False", " True")}  # LABELS order
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
PAD_MULTIPLE = 8  # pad each batch's length up to this (tensor-core friendly shapes)
MEGABATCH = 16  # length grouping: sort within windows of MEGABATCH * batch_size shuffled rows


def label_token_id(tokenizer: Any, text: str) -> int:
    """The id of ``text`` as one token; ValueError if it is several tokens or unknown."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    unk = getattr(tokenizer, "unk_token_id", None)
    if len(ids) != 1 or (unk is not None and ids[0] == unk):
        pieces = tokenizer.convert_ids_to_tokens(ids)
        raise ValueError(
            f"label token {text!r} must be a single known token of this tokenizer, "
            f"but it encodes to {len(ids)} token(s) {pieces}"
        )
    return int(ids[0])


def row_text(kind: str, row: dict[str, Any]) -> tuple[str, int, int]:
    """The prompt for one row and the character span of its question text."""
    q = QUESTION_FIELD[kind]
    text = TEMPLATES[kind].format(**row)
    start = len("Question: ")
    return text, start, start + len(row[q])


def truncate_ids(ids: list[int], offsets: list[tuple[int, int]], q_start: int, q_end: int, budget: int) -> list[int]:
    """Drop tokens from the left of the question text until ``len(ids) <= budget``.

    The template head (``Question:``) and everything after the question (answers, ``Label:``)
    survive; if dropping the whole question is not enough, keep the last ``budget`` tokens.
    """
    excess = len(ids) - budget
    if excess <= 0:
        return ids
    in_question = [i for i, (s, e) in enumerate(offsets) if s < q_end and e > q_start]
    drop = set(in_question[:excess])
    kept = [t for i, t in enumerate(ids) if i not in drop]
    return kept[-budget:] if budget > 0 else []


def length_grouped_batches(lengths: list[int], batch_size: int, generator: torch.Generator) -> list[list[int]]:
    """Seeded batches of similar-length rows: shuffle, sort within megabatch windows, shuffle batches."""
    n = len(lengths)
    perm = torch.randperm(n, generator=generator).tolist()
    window = batch_size * MEGABATCH
    batches: list[list[int]] = []
    for s in range(0, n, window):
        chunk = sorted(perm[s : s + window], key=lambda i: -lengths[i])
        batches += [chunk[j : j + batch_size] for j in range(0, len(chunk), batch_size)]
    order = torch.randperm(len(batches), generator=generator).tolist()
    return [batches[i] for i in order]


def sorted_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Deterministic inference batches: longest rows first, consecutive in sorted order."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[j : j + batch_size] for j in range(0, len(order), batch_size)]


def set_checkpointing(model: Any, on: bool, every_n_layers: int = 1) -> None:
    """Non-reentrant activation checkpointing on (every ``every_n_layers``-th layer) or off."""
    kwargs = {"use_reentrant": False}
    new_api = hasattr(model, "activation_checkpointing_enable")  # later transformers 5 releases
    if not on:
        (model.activation_checkpointing_disable if new_api else model.gradient_checkpointing_disable)()
    elif new_api:
        model.activation_checkpointing_enable(kwargs, every_n_layers=every_n_layers)
    elif every_n_layers == 1:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    else:
        try:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs, every_n_layers=every_n_layers)
        except TypeError:  # this transformers checkpoints all layers or none
            warnings.warn("this transformers version cannot checkpoint every n-th layer: checkpointing all", stacklevel=2)
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def compile_layers(decoder: Any) -> None:
    """Regional ``torch.compile``: decoder layers in place, so the identical layers share one graph.

    Compiling 36 layers as one graph takes minutes; one layer takes seconds and its code is reused
    by the others. Mask creation stays outside the compiled code, so SDPA keeps its causal kernels.
    The first layer stays eager: in training its input needs no gradient while the others' do, so
    compiling it would cost a second graph (and a second compilation per input shape).
    """
    import torch._dynamo.config as dynamo

    for name in ("recompile_limit", "cache_size_limit"):  # train/eval x static/dynamic shapes, peft swaps
        if hasattr(dynamo, name):
            setattr(dynamo, name, max(getattr(dynamo, name), 32))
            break
    layers = list(getattr(decoder, "layers", None) or [decoder])
    for module in layers[1:] or layers:
        module.compile()


class LMBackend:
    """Causal LM + LoRA binary classifier. ``model``/``tokenizer`` may be injected (benchmarks)."""

    def __init__(
        self,
        config: BackendConfig,
        *,
        model: Any = None,
        tokenizer: Any = None,
        compile: bool = False,
        checkpoint_every: int = 1,
    ):
        self.config = config
        self.checkpoint_every = checkpoint_every  # with grad_checkpointing: checkpoint every n-th layer
        self.device = torch.device(resolve_device(config.device))
        self.dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        self.compile = compile
        self.model = model  # the (possibly peft-wrapped) causal LM
        self.tokenizer = tokenizer
        self.history: list[float] = []  # per-step training loss of the last fit
        self.micro_batch: int | None = None  # rows per forward/backward; None: the whole batch (set on OOM)
        self._oom_checkpointing = False  # checkpointing switched on after running out of memory
        self._base = None  # the un-wrapped causal LM
        self._forward = None  # decoder callable (maybe compiled)
        self._opt = None
        self._sched = None
        if model is not None:
            self._base = model
            self._bind()

    # ---- loading -------------------------------------------------------------------------
    def _load(self) -> None:
        """Tokenizer and base model from ``config.model`` (hub name or local path), once."""
        self._ensure_tokenizer()
        if self._base is None:
            from transformers import AutoModelForCausalLM

            model = AutoModelForCausalLM.from_pretrained(self.config.model, dtype=self.dtype, attn_implementation="sdpa")
            self._base = self.model = model.to(self.device)
            self._bind()

    def _ensure_tokenizer(self) -> Any:
        if self.tokenizer is None:
            from transformers import AutoTokenizer

            tok = AutoTokenizer.from_pretrained(self.config.model)
            if tok.pad_token is None:
                tok.pad_token = tok.eos_token
            self.tokenizer = tok
        return self.tokenizer

    def _bind(self) -> None:
        """(Re)bind the decoder / output-embedding handles of the current model."""
        lm = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        lm.config.use_cache = False
        self._lm = lm
        self._forward = lm.get_decoder()
        if self.compile:
            compile_layers(self._forward)

    # ---- tokenisation ----------------------------------------------------------------------
    def label_ids(self, kind: str) -> torch.Tensor:
        tok = self._ensure_tokenizer()
        return torch.tensor([label_token_id(tok, t) for t in LABEL_TOKENS[kind]], device=self.device)

    def encode(self, data: Split) -> list[list[int]]:
        """Token ids of each row's prompt, left-truncated inside the question to ``max_length``."""
        tok = self._ensure_tokenizer()
        texts, spans = [], []
        for row in data.rows:
            text, s, e = row_text(data.kind, row)
            texts.append(text)
            spans.append((s, e))
        prefix = self._special_prefix(tok)
        budget = self.config.max_length - len(prefix)
        if getattr(tok, "is_fast", False):
            enc = tok(texts, add_special_tokens=False, return_offsets_mapping=True)
            offsets = [[tuple(o) for o in offs] for offs in enc["offset_mapping"]]
        else:  # slow tokenizers have no offsets: plain left truncation (the suffix still survives)
            enc = tok(texts, add_special_tokens=False)
            offsets = [[(-1, -1)] * len(ids) for ids in enc["input_ids"]]
        return [
            prefix + truncate_ids(list(ids), offs, s, e, budget)
            for ids, offs, (s, e) in zip(enc["input_ids"], offsets, spans)
        ]

    @staticmethod
    def _special_prefix(tok: Any) -> list[int]:
        """Leading special tokens (e.g. BOS) the tokenizer adds by default; trailing ones are dropped."""
        bare = tok("Label:", add_special_tokens=False)["input_ids"]
        full = tok("Label:")["input_ids"]
        for i in range(len(full) - len(bare) + 1):
            if full[i : i + len(bare)] == bare:
                return list(full[:i])
        return []

    def _pad(self, seqs: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-pad to the batch's own max length (multiple of PAD_MULTIPLE); last real positions."""
        tok = self.tokenizer
        pad = 0 if tok is None or tok.pad_token_id is None else tok.pad_token_id  # never attended
        lengths = [len(s) for s in seqs]
        width = -(-max(lengths) // PAD_MULTIPLE) * PAD_MULTIPLE
        ids = torch.full((len(seqs), width), pad, dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        last = torch.tensor(lengths, dtype=torch.long) - 1
        return self._to_device(ids), self._to_device(last)

    def _to_device(self, t: torch.Tensor) -> torch.Tensor:
        """A host tensor on the device; on CUDA pinned and asynchronous (no host-device sync)."""
        if self.device.type == "cuda":
            return t.pin_memory().to(self.device, non_blocking=True)
        return t.to(self.device)

    # ---- forward ---------------------------------------------------------------------------
    def _autocast(self):
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _last_hidden(self, input_ids: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
        # No attention mask: pads are only on the right, so causal attention never lets a real
        # token see them, and SDPA can use its is_causal kernels.
        hidden = self._forward(input_ids=input_ids, use_cache=False).last_hidden_state
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]

    def _label_logits(self, input_ids: torch.Tensor, last: torch.Tensor, label_ids: torch.Tensor) -> torch.Tensor:
        """``[B, 2]`` float32 next-token logits of the two label tokens at each row's last token."""
        h = self._last_hidden(input_ids, last)
        head = self._lm.get_output_embeddings()
        bias = None if getattr(head, "bias", None) is None else head.bias[label_ids]
        logits = F.linear(h, head.weight[label_ids].to(h.dtype), bias).float()
        cfg = self._lm.config
        if getattr(cfg, "logit_scale", None):
            logits = logits * cfg.logit_scale
        cap = getattr(cfg, "final_logit_softcapping", None)
        if cap:
            logits = torch.tanh(logits / cap) * cap
        return logits

    def _run(self, data: Split, fn) -> np.ndarray:
        self._load()
        ids = self.encode(data)
        label_ids = self.label_ids(data.kind)
        self.model.eval()
        if not ids:
            return np.zeros((0, 2), np.float32)
        batches = sorted_batches([len(s) for s in ids], self.config.batch_size)
        parts = []
        with torch.inference_mode(), self._autocast():
            for batch in batches:
                x, last = self._pad([ids[i] for i in batch])
                parts.append(fn(x, last, label_ids).float())
        vals = torch.cat(parts).cpu().numpy()  # one device-to-host copy, after the last batch
        out = np.empty_like(vals)
        out[[i for batch in batches for i in batch]] = vals
        return out

    def logits(self, data: Split) -> np.ndarray:
        """``(N, 2)`` label-token logits (zero-shot before ``fit``)."""
        return self._run(data, self._label_logits)

    def predict_proba(self, data: Split) -> np.ndarray:
        return torch.softmax(torch.from_numpy(self.logits(data)), -1).numpy()

    def features(self, data: Split) -> np.ndarray:
        """Final hidden state at the last prompt token, ``(N, hidden)`` float32."""
        return self._run(data, lambda x, last, _: self._last_hidden(x, last))

    # ---- training --------------------------------------------------------------------------
    def _setup_training(self, total_steps: int, seed: int) -> None:
        """Fresh LoRA adapters on the base model, AdamW and a linear warm-up/decay schedule."""
        from peft import LoraConfig, get_peft_model
        from peft.tuners.tuners_utils import BaseTunerLayer

        cfg = self.config
        if self.model is not self._base:  # drop the previous fit's adapters
            self._base = self.model.unload()
        base = self._base
        present = {name.rsplit(".", 1)[-1] for name, _ in base.named_modules()}
        targets = [t for t in LORA_TARGETS if t in present]
        if not targets:
            raise ValueError(f"model has none of the LoRA target modules {LORA_TARGETS}")
        set_checkpointing(base, cfg.grad_checkpointing or self._oom_checkpointing, self.checkpoint_every)
        torch.manual_seed(seed)
        lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=0.0, target_modules=targets, bias="none")
        with warnings.catch_warnings():  # peft reads transformers' deprecated is_gradient_checkpointing
            warnings.simplefilter("ignore", FutureWarning)
            self.model = get_peft_model(base, lora)
        if self.device.type == "cuda":  # keep LoRA inputs bf16 under autocast (no fp32 copies)
            for m in self.model.modules():
                if isinstance(m, BaseTunerLayer):
                    m.cast_input_dtype_enabled = False
        self._bind()
        params = [p for p in self.model.parameters() if p.requires_grad]
        for p in params:  # fp32 master weights whatever peft's adapter dtype (autocast runs them in bf16)
            if p.dtype != torch.float32:
                p.data = p.data.float()
        fused = all(p.device.type == "cuda" for p in params)  # fused AdamW: CUDA floating-point parameters
        self._opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused)
        warm = max(1, round(cfg.warmup * total_steps)) if cfg.warmup > 0 else 0

        def schedule(step: int) -> float:
            if step < warm:
                return (step + 1) / warm
            return max(0.0, (total_steps - step) / max(1, total_steps - warm))

        self._sched = torch.optim.lr_scheduler.LambdaLR(self._opt, schedule)
        self.model.train()

    def _train_step(
        self,
        input_ids: torch.Tensor,
        last: torch.Tensor,
        label_ids: torch.Tensor,
        targets: torch.Tensor,
        weights: torch.Tensor,
        progress: float,
        loss: LossFn = soft_xent,
    ) -> torch.Tensor:
        """One optimiser step on a padded batch; returns the (detached) loss without syncing."""
        self._opt.zero_grad(set_to_none=True)
        mb = self.micro_batch
        if mb is None or mb >= len(input_ids):
            with self._autocast():
                logits = self._label_logits(input_ids, last, label_ids)
            value = loss(logits, targets, weights, progress)
            value.backward()
        else:
            value = self._micro_batched_backward(input_ids, last, label_ids, targets, weights, progress, loss, mb)
        self._opt.step()
        self._sched.step()
        return value.detach()

    def _micro_batched_backward(
        self,
        input_ids: torch.Tensor,
        last: torch.Tensor,
        label_ids: torch.Tensor,
        targets: torch.Tensor,
        weights: torch.Tensor,
        progress: float,
        loss: LossFn,
        mb: int,
    ) -> torch.Tensor:
        """The whole batch's loss and gradient, running the model ``mb`` rows at a time.

        A loss may couple the rows of a batch, so the logits are computed without a graph first, the
        loss's gradient with respect to them is taken once, and each micro-batch is then re-run with
        a graph and back-propagated with its slice of that gradient: the gradient of one big batch,
        for one extra forward pass.
        """
        parts = [slice(i, i + mb) for i in range(0, len(input_ids), mb)]
        with torch.no_grad(), self._autocast():
            logits = torch.cat([self._label_logits(input_ids[s], last[s], label_ids) for s in parts])
        logits.requires_grad_(True)
        value = loss(logits, targets, weights, progress)
        (grad,) = torch.autograd.grad(value, logits, allow_unused=True)
        if grad is None:  # the loss ignores the logits: nothing to back-propagate
            return value
        for s in parts:
            with self._autocast():
                part = self._label_logits(input_ids[s], last[s], label_ids)
            part.backward(grad[s])
        return value

    def _fit_step(self, input_ids: torch.Tensor, *args: Any) -> torch.Tensor:
        """``_train_step``, retried after CUDA out-of-memory: checkpointing on, then half the micro-batch."""
        while True:
            try:
                return self._train_step(input_ids, *args)
            except torch.cuda.OutOfMemoryError:
                rows = self.micro_batch or len(input_ids)
                if self._checkpointing_on() and rows <= 1:
                    raise
            # Outside the handler: its traceback no longer holds the failed step's activations.
            self._opt.zero_grad(set_to_none=True)
            gc.collect()
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            if not self._checkpointing_on():
                self._oom_checkpointing = True
                set_checkpointing(self._lm, True, self.checkpoint_every)
                change = "activation checkpointing on"
            else:
                self.micro_batch = rows // 2
                change = f"micro-batches of {self.micro_batch} rows"
            warnings.warn(f"lm backend: out of memory on a batch of {len(input_ids)} rows; retrying with {change}",
                          RuntimeWarning, stacklevel=2)

    def _checkpointing_on(self) -> bool:
        return bool(self.config.grad_checkpointing or self._oom_checkpointing)

    def fit(
        self,
        data: Split,
        targets: np.ndarray,
        weights: np.ndarray | None = None,
        loss: LossFn = soft_xent,
        seed: int = 0,
    ) -> LMBackend:
        cfg = self.config
        n = len(data) if cfg.n_train is None else min(cfg.n_train, len(data))
        y = torch.from_numpy(as_soft_targets(targets)[:n])
        w = torch.ones(n) if weights is None else torch.as_tensor(np.asarray(weights)[:n], dtype=torch.float32)
        if len(y) != n or len(w) != n:
            raise ValueError(f"{n} rows but {len(y)} targets and {len(w)} weights")
        self._load()
        data = data if n == len(data) else data.subset(np.arange(n))
        ids = self.encode(data)
        label_ids = self.label_ids(data.kind)
        lengths = [len(s) for s in ids]
        gen = torch.Generator().manual_seed(seed)
        steps_per_epoch = len(length_grouped_batches(lengths, cfg.batch_size, torch.Generator().manual_seed(seed)))
        total = max(1, cfg.epochs * steps_per_epoch)
        self._setup_training(total, seed)
        values, step = [], 0
        for _ in range(cfg.epochs):
            for batch in length_grouped_batches(lengths, cfg.batch_size, gen):
                x, last = self._pad([ids[i] for i in batch])
                rows = torch.tensor(batch)
                yb, wb = self._to_device(y[rows]), self._to_device(w[rows])
                values.append(self._fit_step(x, last, label_ids, yb, wb, step / total, loss))
                step += 1
        self.history = torch.stack(values).float().cpu().tolist() if values else []
        self.model.eval()
        return self


def lm_param_counts(model: Any) -> dict[str, int]:
    """Total / trainable / embedding parameter counts (embedding counted once if tied)."""
    seen, total, trainable = set(), 0, 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    emb = model.get_input_embeddings().weight.numel()
    return {"total": total, "trainable": trainable, "embedding": emb}


__all__ = ["LMBackend", "label_token_id", "length_grouped_batches", "lm_param_counts", "row_text", "truncate_ids"]
