"""LoRA training throughput of the ``lm`` backend on a Qwen3-4B-shaped model (random weights).

Runs the backend's own training step (``LMBackend._setup_training`` + ``_train_step``: label-token
logits from the last hidden state, soft cross-entropy, fused AdamW, linear schedule) on synthetic
full-length rows, for a sweep of micro-batch sizes, and prints tokens/s, model TFLOP/s and MFU for
each, then a summary table. Nothing is downloaded. One configuration failing (out of memory, a
compile error) is reported and the sweep goes on; the sweep stops starting new configurations once
``--time-budget`` seconds are spent, and a SIGTERM (``timeout``) still prints the summary.

    python benchmarks/lm_throughput.py            # Qwen3-4B shape, needs a GPU (~2 min)
    python benchmarks/lm_throughput.py --compile  # + regional torch.compile of the decoder layers
    python benchmarks/lm_throughput.py --tiny     # a small config, runs on CPU in seconds

FLOPs are counted as 6 * N * tokens (N = all base parameters, embeddings included, tied ones
once), the convention behind the reference's "7.7k tokens/s = 24% of 767 TFLOP/s". An estimate of
the FLOPs actually executed (LoRA: no weight gradients for the frozen base) is recorded too. With
``$OUT`` set (or ``--json``), the results are also written there as JSON after every configuration.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import signal
import sys
import time
import traceback
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
# Before torch starts CUDA: fewer fragmentation OOMs, so larger micro-batches fit.
os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")

import torch

from w2slab.models.base import BackendConfig, resolve_device
from w2slab.models.lm import LMBackend, lm_param_counts

H100_BF16 = 989.0  # TFLOP/s, dense bf16, H100 SXM
REFERENCE_PEAK = 767.0  # TFLOP/s, the basis of the reference's quoted MFU

QWEN3_4B = {
    "vocab_size": 151936, "hidden_size": 2560, "intermediate_size": 9728, "num_hidden_layers": 36,
    "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128, "max_position_embeddings": 40960,
    "rope_theta": 1_000_000, "rms_norm_eps": 1e-6, "tie_word_embeddings": True,
}
TINY = {
    "vocab_size": 1024, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
    "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "max_position_embeddings": 1024,
    "tie_word_embeddings": True,
}


def build_model(shape: dict, device: str, dtype: torch.dtype) -> Any:
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


def metrics(seconds: float, batch: int, seq: int, steps: int, ckpt: bool, shape: dict, counts: dict) -> dict:
    """tokens/s, 6N model TFLOP/s, MFU vs both peaks and an executed-FLOPs estimate.

    ``counts``: the base model's ``total`` and ``embedding`` parameters and the ``trainable`` LoRA ones.
    """
    n, n_nonemb = counts["total"], counts["total"] - counts["embedding"]
    tps = batch * seq * steps / seconds
    model = 6 * n * tps / 1e12
    d_attn = shape["num_attention_heads"] * shape["head_dim"]
    attn = 12 * shape["num_hidden_layers"] * d_attn * seq * tps / 1e12  # PaLM: full QK^T and AV, fwd+bwd
    # Frozen base: forward 2N' + input-gradient 2N' (+2N' recompute); causal attention is half of the PaLM
    # term (x4/3 with recompute); the LoRA weights get the usual 6x.
    executed = ((4 + 2 * ckpt) * n_nonemb + 6 * counts["trainable"]) * tps / 1e12 + attn / 2 * (4 / 3 if ckpt else 1)
    return {
        "tokens_per_s": tps, "step_ms": 1000 * seconds / steps, "model_tflops": model,
        "mfu_989": 100 * model / H100_BF16, "mfu_767": 100 * model / REFERENCE_PEAK,
        "executed_tflops": executed, "executed_mfu_989": 100 * executed / H100_BF16,
    }


def free_memory(backend: LMBackend) -> None:
    backend._opt = backend._sched = None
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def compile_stats() -> str:
    try:
        from torch._dynamo.utils import counters

        breaks = sum(counters["graph_break"].values())
        return f"{counters['stats']['unique_graphs']} compiled graphs, {breaks} graph breaks"
    except Exception:  # noqa: BLE001 - diagnostics only
        return "compile stats unavailable"


def fmt_row(r: dict) -> str:
    head = f"{r['batch']:>5} {'on' if r['ckpt'] else 'off':>4} {'on' if r['compile'] else 'off':>7}"
    if r["status"] != "ok":
        return f"{head}  {r['status']}"
    return (f"{head} {r['tokens_per_s']:>9,.0f} {r['model_tflops']:>7.1f} {r['mfu_989']:>6.1f}% {r['mfu_767']:>6.1f}%"
            f" {r['peak_gib']:>7.1f} {r['step_ms']:>8.0f} {r['wall_s']:>6.0f}  ok (loss {r['loss_first']:.3f} -> "
            f"{r['loss_last']:.3f})")


def summary(rows: list[dict], info: dict) -> str:
    lines = [
        "== lm_throughput summary ==",
        (f"{info['model']} on {info['device']} | torch {info['torch']}, transformers {info['transformers']}, "
        f"peft {info['peft']} | {info['seq']} tokens/row, {info['steps']} timed steps after {info['warmup']} warm-up"),
        ("MFU = 6 * N * tokens/s over the peak (989: H100 SXM dense bf16; 767: the reference's basis, where plain "
        "HF+PEFT with checkpointing got 7.7k tokens/s = 24%; target >= 40%)"),
        (f"{'batch':>5} {'ckpt':>4} {'compile':>7} {'tokens/s':>9} {'TFLOP/s':>7} {'MFU989':>7} {'MFU767':>7}"
        f" {'peakGiB':>7} {'step_ms':>8} {'wall_s':>6}  status"),
    ]
    lines += [fmt_row(r) for r in rows]
    ok = [r for r in rows if r["status"] == "ok"]
    if ok:
        best = max(ok, key=lambda r: r["tokens_per_s"])
        lines.append(f"best: batch {best['batch']}, checkpointing {'on' if best['ckpt'] else 'off'}, compile "
                     f"{'on' if best['compile'] else 'off'}: {best['tokens_per_s']:,.0f} tokens/s = "
                     f"{best['mfu_989']:.1f}% of 989 / {best['mfu_767']:.1f}% of 767")
    else:
        lines.append("no configuration completed")
    return "\n".join(lines)


def int_list(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="small config (CPU, seconds) to check the script")
    ap.add_argument("--batch-sizes", type=int_list, default=None,
                    help="micro-batch sizes (rows) to sweep without checkpointing, smallest first "
                         "(default 8,16,24; with --compile 16,24; tiny 4,8)")
    ap.add_argument("--ckpt-batch-sizes", type=int_list, default=None,
                    help="micro-batch sizes to run with activation checkpointing, after the others "
                         "(default 32; with --compile none; tiny 8; '' for none)")
    ap.add_argument("--seq-len", type=int, default=None, help="tokens per row (default 512; tiny 64)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per configuration (default 10; tiny 3)")
    ap.add_argument("--warmup-steps", type=int, default=None, help="untimed warm-up steps (default 3; tiny 1)")
    ap.add_argument("--lora-r", type=int, default=32)
    ap.add_argument("--checkpoint-every", type=int, default=1, help="with checkpointing: every n-th layer only")
    ap.add_argument("--compile", action="store_true", help="regional torch.compile (compile time is in warm-up)")
    ap.add_argument("--time-budget", type=float, default=None,
                    help="start no new configuration past this many seconds (default 180; tiny none)")
    ap.add_argument("--json", default=None, help="write the results here (default: $OUT/lm_throughput*.json if $OUT)")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()

    tiny = args.tiny
    shape = TINY if tiny else QWEN3_4B
    sizes = args.batch_sizes if args.batch_sizes is not None else [4, 8] if tiny else [16, 24] if args.compile else [8, 16, 24]
    ckpt_sizes = args.ckpt_batch_sizes if args.ckpt_batch_sizes is not None else [8] if tiny else [] if args.compile else [32]
    seq = args.seq_len or (64 if tiny else 512)
    steps = args.steps or (3 if tiny else 10)
    warmup = args.warmup_steps if args.warmup_steps is not None else (1 if tiny else 3)
    budget = args.time_budget if args.time_budget is not None else (float("inf") if tiny else 180.0)
    device = resolve_device(args.device)
    if device == "cpu" and not tiny:
        print("warning: no GPU; the full Qwen3-4B shape on CPU is very slow (use --tiny to check the script)")
    torch.set_num_threads(min(2, os.cpu_count() or 1) if device == "cpu" else torch.get_num_threads())
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    name = "lm_throughput" + ("_compile" if args.compile else "") + ("_tiny" if tiny else "")
    out_json = args.json or (str(Path(os.environ["OUT"]) / f"{name}.json") if os.environ.get("OUT") else None)

    def on_term(signum: int, frame: Any) -> None:  # `timeout` sends SIGTERM: stop, but print what we have
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)

    import peft
    import transformers

    t_start = time.perf_counter()
    model = build_model(shape, device, dtype)
    counts = lm_param_counts(model)
    cfg = BackendConfig(
        kind="lm", model="tiny" if tiny else "qwen3-4b-shape", lora_r=args.lora_r, lora_alpha=args.lora_r,
        lr=1e-4, warmup=0.1, weight_decay=0.0, batch_size=sizes[0] if sizes else 1, max_length=seq,
        grad_checkpointing=False, device=device,
    )
    backend = LMBackend(cfg, model=model, compile=args.compile, checkpoint_every=args.checkpoint_every)
    info = {
        "model": "tiny Qwen3" if tiny else "Qwen3-4B-shaped (random weights)",
        "device": torch.cuda.get_device_name() if device == "cuda" else "CPU",
        "torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
        "seq": seq, "steps": steps, "warmup": warmup, "compile": args.compile, "lora_r": args.lora_r,
        "params": {k: counts[k] for k in ("total", "embedding")}, "dtype": "bf16 autocast" if dtype == torch.bfloat16 else "fp32", "attention": "sdpa",
        "alloc_conf": os.environ.get("PYTORCH_CUDA_ALLOC_CONF", ""),
    }
    print(f"built {info['model']} in {time.perf_counter() - t_start:.1f} s: N = {counts['total'] / 1e9:.4g}B "
          f"(non-embedding {(counts['total'] - counts['embedding']) / 1e9:.4g}B) | {info['device']} | "
          f"torch {info['torch']}, transformers {info['transformers']}, peft {info['peft']}", flush=True)

    rows: list[dict] = []

    def save() -> None:
        if out_json:
            Path(out_json).parent.mkdir(parents=True, exist_ok=True)
            Path(out_json).write_text(json.dumps({"info": info, "results": rows}, indent=1))

    plan = [(b, False) for b in sorted(sizes)] + [(b, True) for b in ckpt_sizes]
    longest, skip_reason = 0.0, {}
    for batch, ckpt in plan:
        row: dict[str, Any] = {"batch": batch, "ckpt": ckpt, "compile": args.compile, "seq": seq}
        rows.append(row)
        elapsed = time.perf_counter() - t_start
        reason = skip_reason.get(ckpt) or skip_reason.get("all")
        if reason is None and elapsed + longest > budget:
            reason = f"skipped: time budget ({elapsed:.0f} s spent, the last configuration took {longest:.0f} s)"
        if reason:
            row["status"] = reason
            print(f"batch {batch}, checkpointing {'on' if ckpt else 'off'}: {reason}", flush=True)
            save()
            continue
        backend.config = replace(backend.config, batch_size=batch, grad_checkpointing=ckpt)
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        t0, error, interrupted = time.perf_counter(), None, False
        try:
            seconds, losses = run(backend, seq, steps, warmup, shape["vocab_size"])
        except torch.cuda.OutOfMemoryError:
            error = "out of memory"
            skip_reason[ckpt] = f"skipped: batch {batch} ran out of memory"  # larger batches would too
        except KeyboardInterrupt as e:
            error, interrupted = f"interrupted ({e})", True
        except Exception as e:  # noqa: BLE001 - report and go on to the next configuration
            error = f"error: {type(e).__name__}: {str(e).strip().splitlines()[0][:200] if str(e).strip() else ''}"
            traceback.print_exc(limit=4)
            if args.compile:  # the next configurations would compile the same code
                skip_reason["all"] = "skipped: compile failed above"
        wall = time.perf_counter() - t0
        longest = max(longest, wall)
        row["wall_s"] = wall
        if error is None:
            counts["trainable"] = info["lora_params"] = lm_param_counts(backend.model)["trainable"]
            row.update(status="ok", **metrics(seconds, batch, seq, steps, ckpt, shape, counts),
                       loss_first=losses[0], loss_last=losses[-1],
                       peak_gib=torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else 0.0)
            if args.compile:
                row["compile_stats"] = compile_stats()
        else:
            row["status"] = error
        free_memory(backend)
        print(fmt_row(row) + (f" | {row['compile_stats']}" if "compile_stats" in row else ""), flush=True)
        save()
        if interrupted:
            break
    print(summary(rows, info), flush=True)
    if out_json:
        print(f"results written to {out_json}")
    sys.exit(0 if any(r["status"] == "ok" for r in rows) else 1)


if __name__ == "__main__":
    main()
