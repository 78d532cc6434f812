#!/usr/bin/env bash
# Preflight on a real GPU node (run through the device tool; see docs/benchmarks.md).
# Writes plans under $OUT, runs `dsa-runtime preflight` for each case, prints JSON lines.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT" /tmp/pkg
ln -sfn "$PWD/runtime" /tmp/pkg/dsa_runtime
export PYTHONPATH=/tmp/site:/tmp/pkg PYTHONUNBUFFERED=1 DSA_ROLE=prefill DSA_GROUP=0 DSA_RANK=0
export DSA_TERMINATION_LOG=$OUT/termination-log
nvidia-smi --query-gpu=name,compute_cap,driver_version,clocks.sm,clocks.max.sm --format=csv
python3 -c 'import torch, flash_mla; print("torch", torch.__version__, "flash_mla", flash_mla.__version__, "legacy", flash_mla.has_legacy())'
plan() {  # $1 file, $2 gpusPerNode, $3 prefill kernel, $4 decode kernel
  cat > "$1" <<JSON
{"name": "m", "namespace": "ns", "sglangVersion": "0.5.23", "dialect": "dsa", "family": "deepseek-v3.2",
 "hardware": {"accelerator": "h200", "arch": "sm90", "vendor": "nvidia", "gpusPerNode": $2},
 "model": {"source": "deepseek-ai/DeepSeek-V3.2", "localPath": null, "mountPath": "/models", "download": true},
 "shmSizeBytes": 1048576,
 "roles": [{"role": "prefill", "replicas": 1, "nodesPerGroup": 1,
            "kernels": {"prefill": "$3", "decode": "$4", "kvCacheDtype": "bf16"}, "groups": []}],
 "pods": [{"role": "prefill", "group": 0, "rank": 0, "argv": ["python3", "-c", "pass"], "env": {}}],
 "warnings": []}
JSON
}
plan "$OUT/ok.json" 1 flashmla_sparse flashmla_kv
plan "$OUT/trtllm.json" 1 flashmla_sparse trtllm
plan "$OUT/eight.json" 8 flashmla_sparse flashmla_kv
plan "$OUT/fa3.json" 1 flashmla_sparse fa3
run() { echo "### $*"; python3 -m dsa_runtime preflight "$@"; echo "exit=$?"; }
{
run --plan "$OUT/ok.json" --shape small
run --plan "$OUT/ok.json" --shape deepseek-v3.2 --iters 50
run --plan "$OUT/ok.json" --shape deepseek-v3.2 --iters 50
run --plan "$OUT/trtllm.json"
run --plan "$OUT/eight.json"
run --plan "$OUT/fa3.json"
} 2>&1 | tee "$OUT/preflight.log"
# The check must fail a corrupted real-kernel output (GPU) and pass the real one.
python3 - <<'PY' 2>&1 | tee "$OUT/corrupt.log"
import math, torch
from dsa_runtime import sparse_check as S
real = S.flash_mla_kernel(use_legacy=True)
def noisy(*a):
    out = real(*a); return out + 0.05 * out.float().abs().mean() * torch.randn_like(out)
def nan(*a):
    out = real(*a).clone(); out[7, 3, 11] = math.nan; return out
for name, k in [("real", real), ("noisy", noisy), ("one-nan", nan)]:
    r = S.check(k, S.SHAPES["small"], "cuda", iters=0)
    print(name, r["ok"], r["relErr"], r["reason"])
PY
python3 -m pytest -q -p no:cacheprovider tests/runtime/test_sparse_check.py 2>&1 | tail -3
