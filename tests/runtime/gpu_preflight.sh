#!/usr/bin/env bash
# Preflight on a real GPU node (run through the device tool; see docs/benchmarks.md).
# Expects the wheels installed into /tmp/site (sgl-flash-mla, pydantic and its deps). Writes
# per-case plans under /tmp/plans, runs `dsa-runtime preflight` for each case (JSON line, exit
# code, wall seconds), the negative cases through the same command with a corrupted kernel, the
# decode figures, and the kernel-check tests on the GPU. Logs go to $OUT.
set -u
OUT=${OUT:-/tmp/out}
PLANS=/tmp/plans
mkdir -p "$OUT" "$PLANS"
export PYTHONPATH=/tmp/site:$PWD/runtime:$PWD/operator:$PWD PYTHONUNBUFFERED=1 DSA_GROUP=0 DSA_RANK=0
export DSA_TERMINATION_LOG=/tmp/termination-log
nvidia-smi --query-gpu=name,compute_cap,driver_version,clocks.sm,clocks.max.sm,memory.total --format=csv
python3 -c 'import torch, flash_mla; print("torch", torch.__version__, "flash_mla", flash_mla.__version__, "legacy", flash_mla.has_legacy())'

# 1. The decode call as the wheel takes it (kv_format given and inferred; fp8 and uint8 cache).
python3 - <<'PY' 2>&1 | tee "$OUT/probe.log"
import math, traceback, torch
from dsa_runtime import sparse_decode_check as D
from flash_mla import flash_mla_with_kvcache, get_mla_metadata
s = D.DecodeShape(batch=2, context=4096)
t = D.random_inputs(s, "cuda", seed=0)
ref = D.reference(t.q, t.cache, t.indices, s.d_qk ** -0.5, s.d_v)
for fmt in ("V32", None):
    for dtype in (torch.float8_e4m3fn, torch.uint8):
        try:
            out, lse = flash_mla_with_kvcache(t.q, t.cache.view(dtype), None, None, 512, get_mla_metadata()[0],
                softmax_scale=s.d_qk ** -0.5, is_fp8_kvcache=True, indices=t.indices, use_legacy=True, kv_format=fmt)
            torch.cuda.synchronize()
            rel = float((out.float() - ref).norm() / ref.norm())
            print("kv_format", fmt, dtype, "ok", tuple(out.shape), out.dtype, "lse", tuple(lse.shape), "rel", rel)
        except Exception as e:
            print("kv_format", fmt, dtype, "raised", type(e).__name__, str(e).splitlines()[0][:300])
print("fp8 rounding error (DeepSeek shape, batch 8, context 8k):",
      D.fp8_rounding_error(D.DecodeShape(batch=8, context=8192), "cuda", seed=1))
PY

plan() {  # $1 file, $2 gpusPerNode, $3 prefill kernel, $4 decode kernel, $5 kv dtype, $6 role
  cat > "$1" <<JSON
{"name": "m", "namespace": "ns", "sglangVersion": "0.5.23", "dialect": "dsa", "family": "deepseek-v3.2",
 "hardware": {"accelerator": "h200", "arch": "sm90", "vendor": "nvidia", "gpusPerNode": $2},
 "model": {"source": "deepseek-ai/DeepSeek-V3.2", "localPath": null, "mountPath": "/models", "download": true},
 "shmSizeBytes": 1048576,
 "roles": [{"role": "$6", "replicas": 1, "nodesPerGroup": 1,
            "kernels": {"prefill": "$3", "decode": "$4", "kvCacheDtype": "$5"}, "groups": []}],
 "pods": [{"role": "$6", "group": 0, "rank": 0, "argv": ["python3", "-c", "pass"], "env": {}}],
 "warnings": []}
JSON
}
plan $PLANS/fp8.json 1 auto auto fp8_e4m3 serving             # Hopper's fp8 defaults: flashmla_kv
plan $PLANS/fp8-decode.json 1 auto auto fp8_e4m3 decode
plan $PLANS/auto-fp8.json 1 flashmla_auto flashmla_kv fp8_e4m3 serving
plan $PLANS/mixed.json 1 flashmla_sparse flashmla_kv bf16 serving
plan $PLANS/mixed-prefill.json 1 flashmla_sparse flashmla_kv bf16 prefill
plan $PLANS/mixed-decode.json 1 flashmla_sparse flashmla_kv bf16 decode
plan $PLANS/triton.json 1 flashmla_kv triton_sparse_mla fp8_e4m3 serving
plan $PLANS/trtllm.json 1 flashmla_sparse trtllm bf16 prefill
plan $PLANS/eight.json 8 flashmla_kv flashmla_kv fp8_e4m3 decode
plan $PLANS/fa3.json 1 flashmla_sparse fa3 bf16 prefill

run() {  # $1 role, then preflight's arguments
  local role=$1; shift
  echo "### DSA_ROLE=$role preflight $*"
  local t0; t0=$(date +%s%N)
  DSA_ROLE=$role python3 -m dsa_runtime preflight "$@"
  local rc=$?
  echo "exit=$rc wall_ms=$(( ($(date +%s%N) - t0) / 1000000 ))"
}
{
run serving --plan $PLANS/fp8.json --shape small
run serving --plan $PLANS/fp8.json --shape deepseek-v3.2 --iters 50
run serving --plan $PLANS/fp8.json --shape deepseek-v3.2 --iters 50
run decode --plan $PLANS/fp8-decode.json --shape deepseek-v3.2 --iters 50
run serving --plan $PLANS/auto-fp8.json
run serving --plan $PLANS/mixed.json --shape deepseek-v3.2 --iters 50
run prefill --plan $PLANS/mixed-prefill.json
run decode --plan $PLANS/mixed-decode.json
run serving --plan $PLANS/triton.json
run prefill --plan $PLANS/trtllm.json
run decode --plan $PLANS/eight.json
run prefill --plan $PLANS/fa3.json
} 2>&1 | tee "$OUT/preflight.log"

# 2. Negative cases through the command itself: the real kernel's output, corrupted.
cat > /tmp/corrupt.py <<'PY'
import math, os, sys, torch
from dsa_runtime import sparse_check as S, sparse_decode_check as D
how, which = os.environ["CORRUPT"], os.environ["CORRUPT_KERNEL"]
def wrap(factory):
    def make(*a, **k):
        real = factory(*a, **k)
        def run(*args):
            out = real(*args)
            if how == "noise":  # 5 % Gaussian noise
                return out + (0.05 * out.float().abs().mean() * torch.randn_like(out.float())).to(out.dtype)
            out = out.clone(); out.view(-1)[12345] = math.nan; return out
        return run
    return make
if which == "decode":
    D.flash_mla_decode_kernel = wrap(D.flash_mla_decode_kernel)
else:
    S.flash_mla_kernel = wrap(S.flash_mla_kernel)
from dsa_runtime.cli import main
sys.argv = ["dsa-runtime", *sys.argv[1:]]
main()
PY
{
for k in decode prefill; do
  for how in noise nan; do
    echo "### corrupted $k kernel: $how"
    if [ $k = decode ]; then p=$PLANS/fp8-decode.json role=decode; else p=$PLANS/mixed-prefill.json role=prefill; fi
    CORRUPT=$how CORRUPT_KERNEL=$k DSA_ROLE=$role python3 /tmp/corrupt.py preflight --plan $p
    echo "exit=$?"
  done
done
} 2>&1 | tee "$OUT/negative.log"

# 3. The decode figures (cold L2 per call, and warm), batch 1/32/128 x context 8k/32k/128k.
python3 -m dsa_runtime.sparse_decode_check --iters 50 --fp8-error 2>&1 | tee "$OUT/decode_sweep.log"

# 4. The kernel-check tests, on the GPU.
python3 -m pytest -q -p no:cacheprovider tests/runtime/test_sparse_check.py \
    tests/runtime/test_sparse_decode_check.py 2>&1 | tail -5 | tee "$OUT/pytest.log"
