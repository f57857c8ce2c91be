#!/usr/bin/env bash
# One-shot GPU check of the `lm` backend, run from the repository root: `bash benchmarks/device_check.sh`.
#
# Prints the GPU and library versions, runs the GPU tests, then the throughput benchmark eager and
# with --compile, each step under `timeout` (about 8 minutes at most in all). Installs nothing and
# needs no network: torch, transformers, peft (and pytest, for the tests) must already be there.
# Logs and the benchmarks' JSON go to $OUT when it is set (else to a temporary folder); a summary of
# every step is printed last. Without CUDA it runs the benchmarks' --tiny configuration instead.
set -u

PY=${PYTHON:-python3}
LOGS=${OUT:-$(mktemp -d)}
mkdir -p "$LOGS"
export OUT=$LOGS PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
T0=$SECONDS
declare -a STEPS=()

step() {  # step NAME SECONDS COMMAND...: run under timeout, log to $LOGS/NAME.log, remember the status
    local name=$1 limit=$2 rc
    shift 2
    echo "=== $name (limit ${limit}s, started at +$((SECONDS - T0))s): $*"
    timeout -k 15 "$limit" "$@" 2>&1 | tee "$LOGS/$name.log"
    rc=${PIPESTATUS[0]}
    [ "$rc" = 124 ] && echo "=== $name: TIMED OUT after ${limit}s"
    STEPS+=("$name: exit $rc after +$((SECONDS - T0))s")
}

echo "=== environment"
{
    nvidia-smi || echo "nvidia-smi not available"
    "$PY" - <<'EOF'
import torch
print(f"torch {torch.__version__} (CUDA {torch.version.cuda}), cuda available: {torch.cuda.is_available()}")
for name in ("transformers", "peft", "tokenizers", "numpy", "pytest"):
    try:
        print(f"{name} {__import__(name).__version__}")
    except Exception as e:  # noqa: BLE001
        print(f"{name}: MISSING ({type(e).__name__}: {e})")
try:
    import w2slab.models.lm  # noqa: F401
    print("w2slab.models.lm imports")
except Exception as e:  # noqa: BLE001
    print(f"w2slab.models.lm does NOT import: {type(e).__name__}: {e}")
if torch.cuda.is_available():
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    print(f"{torch.cuda.get_device_name()} sm_{''.join(map(str, torch.cuda.get_device_capability()))}, "
          f"{torch.cuda.get_device_properties(0).total_memory / 2**30:.1f} GiB")
    q = torch.randn(2, 32, 512, 128, device="cuda", dtype=torch.bfloat16)
    kv = torch.randn(2, 8, 512, 128, device="cuda", dtype=torch.bfloat16)
    try:
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            F.scaled_dot_product_attention(q, kv, kv, is_causal=True, enable_gqa=True)
        print("SDPA flash kernel (causal, GQA, bf16, head_dim 128): ok")
    except Exception as e:  # noqa: BLE001
        print(f"SDPA flash kernel NOT available: {type(e).__name__}: {str(e)[:300]}")
EOF
} 2>&1 | tee "$LOGS/environment.log"

CUDA=$("$PY" -c "import torch; print(int(torch.cuda.is_available()))" 2>/dev/null || echo 0)

if "$PY" -c "import pytest" 2>/dev/null; then
    TIMEOUT_OPT=()
    "$PY" -c "import pytest_timeout" 2>/dev/null && TIMEOUT_OPT=(--timeout 100)
    step pytest 120 "$PY" -m pytest -q -p no:cacheprovider ${TIMEOUT_OPT[@]+"${TIMEOUT_OPT[@]}"} -m gpu tests/test_lm_gpu.py tests/test_lm_backend.py
else
    echo "=== pytest is not installed: SKIPPING the GPU tests (the benchmarks still run)"
    STEPS+=("pytest: skipped (pytest not installed)")
fi

if [ "$CUDA" = 1 ]; then
    step bench_eager 130 "$PY" benchmarks/lm_throughput.py --time-budget 90
    step bench_compile 200 "$PY" benchmarks/lm_throughput.py --compile --time-budget 140
else
    echo "=== no CUDA: running the benchmarks' --tiny configuration only"
    step bench_eager 120 "$PY" benchmarks/lm_throughput.py --tiny
    step bench_compile 300 "$PY" benchmarks/lm_throughput.py --tiny --compile --batch-sizes 4 --ckpt-batch-sizes ''
fi

echo
echo "=============================== device check summary ==============================="
for s in ${STEPS[@]+"${STEPS[@]}"}; do echo "  $s"; done
echo "--- tests"
[ -f "$LOGS/pytest.log" ] && grep -E "passed|failed|skipped|deselected|error|FAILED|ERROR" "$LOGS/pytest.log" | tail -n 12
for name in bench_eager bench_compile; do
    echo "--- $name"
    [ -f "$LOGS/$name.log" ] && sed -n '/== lm_throughput summary ==/,$p' "$LOGS/$name.log"
done
echo "logs and JSON in $LOGS; total $((SECONDS - T0))s"
