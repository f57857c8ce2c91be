"""LoRA training throughput of the ``lm`` backend on a Qwen3-4B-shaped model (random weights).

Runs the backend's own training step (``LMBackend._setup_training`` + ``_train_step``: label-token
logits from the last hidden state, soft cross-entropy, AdamW, linear schedule) on synthetic
full-length rows and prints tokens/s, model TFLOP/s and MFU. Nothing is downloaded.

    python benchmarks/lm_throughput.py            # Qwen3-4B shape, needs a GPU (~1-2 min)
    python benchmarks/lm_throughput.py --tiny     # a small config, runs on CPU in seconds

FLOPs are counted as 6 * N * tokens (N = all base parameters, embeddings included, tied ones
once), the convention behind the reference's "7.7k tokens/s = 24% of 767 TFLOP/s". The attention
term and an estimate of the FLOPs actually executed (LoRA: no weight gradients for the frozen
base) are printed too.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from w2slab.models.base import BackendConfig, resolve_device  # noqa: E402
from w2slab.models.lm import LMBackend, lm_param_counts  # noqa: E402

H100_BF16 = 989.0  # TFLOP/s, dense bf16, H100 SXM
REFERENCE_PEAK = 767.0  # TFLOP/s, the basis of the reference's quoted MFU

QWEN3_4B = dict(
    vocab_size=151936, hidden_size=2560, intermediate_size=9728, num_hidden_layers=36,
    num_attention_heads=32, num_key_value_heads=8, head_dim=128, max_position_embeddings=40960,
    rope_theta=1_000_000, rms_norm_eps=1e-6, tie_word_embeddings=True,
)
TINY = dict(
    vocab_size=1024, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
    num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=1024,
    tie_word_embeddings=True,
)


def build_model(shape: dict, device: str, dtype: torch.dtype):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    config = Qwen3Config(**shape, use_cache=False)
    torch.manual_seed(0)
    with torch.device(device):  # initialise directly on the device: seconds, not minutes
        model = Qwen3ForCausalLM._from_config(config, dtype=dtype, attn_implementation="sdpa")
    return model.eval()


def run(backend: LMBackend, seq: int, steps: int, warmup: int, vocab: int) -> tuple[float, list[float]]:
    """Train ``warmup + steps`` steps on random full-length rows; seconds for the timed steps."""
    cfg, dev = backend.config, backend.device
    b = cfg.batch_size
    backend._setup_training(total_steps=warmup + steps, seed=0)
    gen = torch.Generator(device="cpu").manual_seed(0)
    batches = [torch.randint(0, vocab, (b, seq), generator=gen).to(dev) for _ in range(4)]
    last = torch.full((b,), seq - 1, dtype=torch.long, device=dev)
    label_ids = torch.tensor([32, 33], device=dev)
    targets = torch.nn.functional.one_hot(torch.randint(0, 2, (b,), generator=gen), 2).float().to(dev)
    weights = torch.ones(b, device=dev)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    losses, start = [], 0.0
    for step in range(warmup + steps):
        if step == warmup:
            sync()
            start = time.perf_counter()
        losses.append(backend._train_step(batches[step % 4], last, label_ids, targets, weights, step / (warmup + steps)))
    sync()
    return time.perf_counter() - start, [float(x) for x in losses]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="small config (CPU, seconds) to check the script")
    ap.add_argument("--batch-size", type=int, default=None, help="rows per step (default 8; tiny 4)")
    ap.add_argument("--seq-len", type=int, default=None, help="tokens per row (default 512; tiny 64)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps (default 20; tiny 3)")
    ap.add_argument("--warmup-steps", type=int, default=None, help="untimed warm-up steps (default 5; tiny 1)")
    ap.add_argument("--lora-r", type=int, default=32)
    ap.add_argument(
        "--grad-checkpointing", action=argparse.BooleanOptionalAction, default=None,
        help="default: off, switched on (then the batch halved) only if the batch runs out of memory",
    )
    ap.add_argument("--checkpoint-every", type=int, default=1, help="with checkpointing: every n-th layer only")
    ap.add_argument("--compile", action="store_true", help="torch.compile the decoder (adds compile time to warm-up)")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()

    tiny = args.tiny
    shape = TINY if tiny else QWEN3_4B
    batch = args.batch_size or (4 if tiny else 8)
    seq = args.seq_len or (64 if tiny else 512)
    steps = args.steps or (3 if tiny else 20)
    warmup = args.warmup_steps if args.warmup_steps is not None else (1 if tiny else 5)
    if args.compile and args.warmup_steps is None:
        warmup = max(warmup, 3)  # compiled forward and backward settle over the first steps
    device = resolve_device(args.device)
    if device == "cpu" and not tiny:
        print("warning: no GPU; the full Qwen3-4B shape on CPU is very slow (use --tiny to check the script)")
    if device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    torch.set_num_threads(min(2, os.cpu_count() or 1) if device == "cpu" else torch.get_num_threads())
    dtype = torch.bfloat16 if device == "cuda" else torch.float32

    t0 = time.perf_counter()
    model = build_model(shape, device, dtype)
    counts = lm_param_counts(model)
    n, n_nonemb = counts["total"], counts["total"] - counts["embedding"]
    ckpt = bool(args.grad_checkpointing)
    cfg = BackendConfig(
        kind="lm", model="qwen3-4b-shape" if not tiny else "tiny", lora_r=args.lora_r, lora_alpha=args.lora_r,
        lr=1e-4, warmup=0.1, weight_decay=0.0, batch_size=batch, max_length=seq,
        grad_checkpointing=ckpt, device=device,
    )
    backend = LMBackend(cfg, model=model, compile=args.compile, checkpoint_every=args.checkpoint_every)
    print(f"built {'tiny' if tiny else 'Qwen3-4B-shaped'} model in {time.perf_counter() - t0:.1f} s")

    while True:
        oom = False
        try:
            if device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            seconds, losses = run(backend, seq, steps, warmup, shape["vocab_size"])
        except torch.OutOfMemoryError:
            oom = True
        if not oom:
            break
        backend._opt = backend._sched = None
        gc.collect()
        torch.cuda.empty_cache()
        b, c = backend.config.batch_size, backend.config.grad_checkpointing
        if not c and args.grad_checkpointing is None:
            new = replace(backend.config, grad_checkpointing=True)
        elif b > 1:
            new = replace(backend.config, batch_size=b // 2)
        else:
            raise SystemExit("out of memory even at batch size 1")
        print(f"out of memory at batch {b}, checkpointing {'on' if c else 'off'}; "
              f"retrying with batch {new.batch_size}, checkpointing {'on' if new.grad_checkpointing else 'off'}")
        backend.config = new

    cfg = backend.config
    counts["trainable"] = lm_param_counts(backend.model)["trainable"]  # the LoRA parameters
    tokens = cfg.batch_size * seq * steps
    tps = tokens / seconds
    layers, d_attn = shape["num_hidden_layers"], shape["num_attention_heads"] * shape["head_dim"]
    model_flops = 6 * n * tps
    attn_flops = 12 * layers * d_attn * seq * tps  # PaLM appendix B: per token, fwd+bwd, full (non-causal) QK^T and AV
    # Executed work: frozen base -> forward 2N + input-gradient 2N (+2N recompute); causal attention is half of the
    # PaLM term (x4/3 with recompute); LoRA adds 6 * trainable params.
    executed = (4 + (2 if cfg.grad_checkpointing else 0)) * n_nonemb + 6 * counts["trainable"]
    executed_attn = attn_flops / 2 * (4 / 3 if cfg.grad_checkpointing else 1)
    executed_flops = executed * tps + executed_attn
    gpu = torch.cuda.get_device_name() if device == "cuda" else "CPU"

    print(f"device: {gpu} | torch {torch.__version__} | dtype {'bf16 autocast' if dtype == torch.bfloat16 else 'fp32'}, SDPA")
    print(f"params: N = {n / 1e9:.4g}B (non-embedding {n_nonemb / 1e9:.4g}B); LoRA r={cfg.lora_r} on q,k,v,o,gate,up,down: "
          f"{counts['trainable'] / 1e6:.4g}M trainable")
    print(f"batch {cfg.batch_size} x {seq} tokens (no padding), grad checkpointing "
          f"{'on' if cfg.grad_checkpointing else 'off'}, compile {'on' if args.compile else 'off'}")
    print(f"steps: {warmup} warm-up (excluded) + {steps} timed in {seconds:.2f} s; loss {losses[0]:.3f} -> {losses[-1]:.3f}")
    print(f"tokens/s: {tps:,.0f}")
    print(f"model TFLOP/s (6 * N * tokens/s, N incl. embeddings): {model_flops / 1e12:.4g}")
    print(f"MFU vs {H100_BF16:.0f} TFLOP/s (H100 SXM dense bf16): {100 * model_flops / 1e12 / H100_BF16:.3g}%")
    print(f"MFU vs {REFERENCE_PEAK:.0f} TFLOP/s (reference basis; it quoted 7.7k tokens/s = 24%): "
          f"{100 * model_flops / 1e12 / REFERENCE_PEAK:.3g}%")
    print(f"attention term (12 * layers * d_attn * seq per token, not in 6N): {attn_flops / 1e12:.3g} TFLOP/s "
          f"-> MFU incl. attention {100 * (model_flops + attn_flops) / 1e12 / H100_BF16:.3g}% of {H100_BF16:.0f}")
    print(f"executed FLOPs estimate (frozen base: fwd 2N' + input-grad 2N'{' + recompute 2N' if cfg.grad_checkpointing else ''}"
          f", N' non-embedding; causal attention; LoRA 6x): {executed_flops / 1e12:.4g} TFLOP/s = "
          f"{100 * executed_flops / 1e12 / H100_BF16:.3g}% of {H100_BF16:.0f}")
    if device == "cuda":
        print(f"peak GPU memory: {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")


if __name__ == "__main__":
    main()
