#!/usr/bin/env bash
# Every GPU figure of the open benchmark issues in ONE device call (docs/gpu.md):
#
#   run(command="bash benchmarks/gpu_session.sh", carry=[".whl", ".gpu-data"], timeout_s=560)
#
# after `bash benchmarks/gpu_prepare.sh` here. Stages, against one clock that ends everything by
# $DEADLINE seconds (default 520) after the start:
#
#   0  set-up: the carried wheels into /tmp/site, ebru from src/, data from .gpu-data/, caches in /tmp
#   1  training throughput, alone on the GPU (issue 3): ebru vs diffusers U-Net, TF32 and bf16, the
#      default 6.9M pair and the 38.3M DDPM-CIFAR-10-sized pair, batch 128                 ~ 1.5 min
#   2  at the same time:                                                                     ~ 6.5 min
#      - quality at a 5-minute budget, ebru vs diffusers' tutorial, both trainings at once (issue 4)
#      - text diffusion vs AR: 3 models trained at once (steps, capped at 3.5 min), then samples; the
#        tokens/s are timed once the quality run's GPU work is done (issue 5)
#      - in the background: torch.compile of the throughput models, to fill the inductor cache
#   3  what time is left: the throughput with torch.compile (from the cache), the CIFAR-sized pair in
#      TF32                                                                                   ~ 1 min
#
# Every command has its own `timeout`, so one failure or overrun costs only its own figures. The results
# go to $OUT as they are made: results.tar.gz (the JSON and PNG files, named after the GPU, e.g.
# train_throughput_h100_bf16.json), logs.tar.gz (each command's log and the training logs) and
# session.log (this script's output); `python benchmarks/gpu_collect.py FILES_AT` unpacks them into
# benchmarks/results/. Nothing is written into the working tree.
#
#   bash benchmarks/gpu_session.sh --smoke       # a CPU rehearsal with tiny budgets (a few minutes on 2 cores)
#   bash benchmarks/gpu_session.sh --only 3      # only some stages (e.g. a second call on the same warm machine)
set -u
set -o pipefail

SMOKE=0
ONLY="0 1 2 3"
while [ $# -gt 0 ]; do
    case "$1" in
        --smoke) SMOKE=1 ;;
        --only) ONLY="0 $2"; shift ;;
        *) echo "usage: $0 [--smoke] [--only 'STAGES']" >&2; exit 2 ;;
    esac
    shift
done
want() { case " $ONLY " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
START=$(date +%s)
DEADLINE=${DEADLINE:-520}                       # seconds after START by which every command has ended
[ "$SMOKE" = 1 ] && DEADLINE=${SMOKE_DEADLINE:-1800}
OUT=${OUT:-$(mktemp -d /tmp/ebru-gpu-out.XXXXXX)}
WORK=${EBRU_GPU_WORK:-$(mktemp -d /tmp/ebru-gpu-work.XXXXXX)}
mkdir -p "$OUT" "$WORK/results" "$WORK/logs" "$WORK/warm-results"
exec > >(tee -a "$OUT/session.log") 2>&1
TEE_PID=$!

now() { echo $(($(date +%s) - START)); }
left() { echo $((DEADLINE - $(now))); }
say() { echo "[$(printf '%4d' "$(now)") s] $*"; }

# pack what exists now into $OUT (at most 8 files come back: these three)
# (jobs running side by side each pack when they end: each into its own temporary name, then an atomic rename)
pack() {
    local tmp=".tmp.$BASHPID"
    tar -C "$WORK/results" -czf "$OUT/results.tar.gz$tmp" . && mv "$OUT/results.tar.gz$tmp" "$OUT/results.tar.gz"
    local d dirs=()
    for d in logs text quality; do [ -d "$WORK/$d" ] && dirs+=("$d"); done
    (cd "$WORK" && find "${dirs[@]}" -maxdepth 4 \( -name '*.log' -o -name 'log.csv' -o -name '*.txt' \
        -o -name 'train.json' -o -name 'config.json' \) -size -4M | sort |
        tar -czf "$OUT/logs.tar.gz$tmp" -T - && mv "$OUT/logs.tar.gz$tmp" "$OUT/logs.tar.gz")
}

# step NAME CAP_SECONDS CMD...: run CMD with a timeout of min(CAP, time left - RESERVE), log to logs/NAME.log
RESERVE=${RESERVE:-5}
CAPX=1
[ "$SMOKE" = 1 ] && CAPX=${SMOKE_CAPX:-6}   # a CPU is far slower than the GPU the caps are sized for
step() {
    local name=$1 cap=$(($2 * CAPX))
    shift 2
    local t=$(($(left) - RESERVE))
    [ "$t" -gt "$cap" ] && t=$cap
    if [ "$t" -lt 10 ]; then
        say "SKIP $name: $(left) s left"
        echo "$name: skipped, no time left" >>"$WORK/results/SKIPPED.txt"
        return 124
    fi
    say "start $name (timeout ${t} s)"
    local t0=$(now)
    timeout --kill-after=5 "$t" "$@" >"$WORK/logs/$name.log" 2>&1
    local rc=$?
    say "end   $name: exit $rc after $(($(now) - t0)) s"
    if [ "$rc" != 0 ]; then
        echo "$name: exit $rc" >>"$WORK/results/FAILED.txt"
        echo "----- last lines of $name.log -----"
        tail -n 25 "$WORK/logs/$name.log" | cut -c1-300
        echo "-----"
    else
        grep -v -E '[0-9]+(\.[0-9]+)?(it|s)/(s|it)\]|^\s*$' "$WORK/logs/$name.log" | tail -n 6 | cut -c1-300
    fi
    pack
    return $rc
}

# ---------------------------------------------------------------------------------------------- 0 set-up
PY=${PYTHON:-python3}
say "ebru GPU session: smoke=$SMOKE stages='$ONLY' deadline=${DEADLINE}s out=$OUT work=$WORK"
if ! "$PY" -c "import diffusers, cryptography, rdata" >/dev/null 2>&1; then
    if ls .whl/*.whl >/dev/null 2>&1; then
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
            .whl/*.whl || say "WARNING: wheel install failed"
        export PYTHONPATH=/tmp/site
    else
        say "WARNING: no .whl/ (run benchmarks/gpu_prepare.sh and carry .whl)"
    fi
fi
export PYTHONPATH=$ROOT/src${PYTHONPATH:+:$PYTHONPATH}
export EBRU_FASHION_MNIST=${EBRU_FASHION_MNIST_OVERRIDE:-$ROOT/.gpu-data/fashion-mnist}
export EBRU_TEXT_DATA=${EBRU_TEXT_DATA_OVERRIDE:-$ROOT/.gpu-data/text}
export EBRU_RESULTS_DIR=$WORK/results
[ -f .gpu-data/REVISION ] && export EBRU_REVISION=${EBRU_REVISION:-$(cat .gpu-data/REVISION)}
export EBRU_CACHE=${EBRU_CACHE_DIR:-$WORK/cache} XDG_CACHE_HOME=$WORK/xdg/cache XDG_CONFIG_HOME=$WORK/xdg/config
export XDG_STATE_HOME=$WORK/xdg/state MPLCONFIGDIR=$WORK/xdg/mpl
# fixed paths, so that a second call on the same warm machine (--only 3) finds what the first one compiled
export TORCHINDUCTOR_CACHE_DIR=/tmp/ebru-inductor-cache TRITON_CACHE_DIR=/tmp/ebru-triton-cache
export HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 DIFFUSERS_VERBOSITY=error TOKENIZERS_PARALLELISM=false
export MPLBACKEND=Agg PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm \
    --format=csv,noheader 2>&1 | head -2
"$PY" - <<'EOF' 2>&1 | tee "$WORK/logs/environment.log"
import os, sys, torch
print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda,
      "gpu", torch.cuda.get_device_name(0) if torch.cuda.is_available() else None, "cpus", os.cpu_count())
for mod in ("diffusers", "cryptography", "rdata", "tokenizers", "safetensors", "numpy", "ebru"):
    try:
        m = __import__(mod)
        print(f"  {mod} {getattr(m, '__version__', '?')} from {os.path.dirname(m.__file__)}")
    except Exception as e:
        print(f"  {mod}: IMPORT FAILED: {type(e).__name__}: {e}")
from ebru.data.fashion_mnist import FashionMNIST
from ebru.text import load_corpus
print("  Fashion-MNIST train:", len(FashionMNIST("train").tensors()[0]), "images;",
      "Austen:", len(load_corpus("austen").train_text), "training characters")
EOF

DEVICE=$("$PY" -c "import torch; print('cuda' if torch.cuda.is_available() else 'cpu')")
GPU=$("$PY" -c "
import re, torch
n = torch.cuda.get_device_name(0) if torch.cuda.is_available() else ''
m = re.search(r'\b([A-Z]\d{2,4}[A-Za-z]?)\b', n)
print(m.group(1).lower() if m else 'gpu')")
if [ "$SMOKE" = 1 ]; then
    GPU=smoke
elif [ "$DEVICE" != cuda ]; then
    say "no CUDA device: this script is for a GPU (use --smoke for the CPU rehearsal)"
    exit 1
fi
say "device $DEVICE, result names *_${GPU}*"
echo "$GPU" >"$WORK/results/DEVICE.txt"
pack

TT="benchmarks/train_throughput.py --device $DEVICE"
if [ "$SMOKE" = 1 ]; then
    TT_SMALL="--batch 2 --channels 32 --rounds 1 --steps 1 --warmup 1"
    TT_CIFAR="--batch 2 --channels 32 --channel-mult 1,2,2,2 --attention-res 16 --rounds 1 --steps 1 --warmup 1"
    QAB_ARGS="--budget-minutes 0.1 --n-samples 300 --ebru-steps 4"
    TXT_ARGS="--quick --time-cap 1"
else
    TT_SMALL="--batch 128 --rounds 8 --steps 10 --warmup 3"
    TT_CIFAR="--batch 128 --channels 128 --channel-mult 1,2,2,2 --attention-res 16 --rounds 6 --steps 5 --warmup 3"
    QAB_ARGS="--budget-minutes 5 --n-samples 2000"
    TXT_ARGS="--steps 6000 --time-cap 3.5"
fi

# ---------------------------------------------------------------------------------------------- 1 throughput
if want 1; then
    S1_END=${S1_END:-125}   # stage 2 needs ~6.5 min after this
    [ "$SMOKE" = 1 ] && S1_END=$DEADLINE
    s1() { local t=$((S1_END - $(now))); [ "$t" -gt "$1" ] && t=$1; echo "$t"; }
    step "throughput_tf32" "$(s1 50)" $PY $TT $TT_SMALL --name "train_throughput_${GPU}_tf32"
    step "throughput_bf16" "$(s1 45)" $PY $TT $TT_SMALL --bf16 --name "train_throughput_${GPU}_bf16"
    step "throughput_cifar_bf16" "$(s1 60)" $PY $TT $TT_CIFAR --bf16 --name "train_throughput_${GPU}_cifar_bf16"
fi

# ---------------------------------------------------------------------------------------------- 2 quality + text
if want 2; then
    say "stage 2: quality (5 min each) and text at the same time; compile warm-up in the background"
    GPU_DONE=$WORK/quality.gpu-done
    rm -f "$GPU_DONE"
    # the text run writes its results by TXT_DEADLINE (seconds after its start) and starts timing by TXT_WAIT at
    # the latest, even if the quality run is still on the GPU then
    TXT_DEADLINE=$(($(left) - RESERVE - 15))
    TXT_WAIT=$((TXT_DEADLINE - 70))
    [ "$TXT_WAIT" -lt 0 ] && TXT_WAIT=0
    (
        # its FID features on the CPU leave half the cores to the text timings (8 of 16 on the device)
        OMP_NUM_THREADS=$(($(nproc) / 2))
        [ "$OMP_NUM_THREADS" -lt 1 ] && OMP_NUM_THREADS=1
        export OMP_NUM_THREADS
        step "quality" 600 $PY benchmarks/quality_at_budget.py --device "$DEVICE" $QAB_ARGS \
            --out-dir "$WORK/quality" --name "quality_at_budget_${GPU}" --gpu-done-file "$GPU_DONE"
        touch "$GPU_DONE"
    ) &
    QPID=$!
    (
        step "text" 900 $PY benchmarks/text_diffusion_vs_ar.py --device "$DEVICE" $TXT_ARGS --parallel-train \
            --work "$WORK/text" --name "text_diffusion_vs_ar_${GPU}" --wait-for "$GPU_DONE" --wait-max "$TXT_WAIT" \
            --deadline "$TXT_DEADLINE"
    ) &
    TPID=$!
    if [ "$SMOKE" = 0 ] || [ "${SMOKE_COMPILE:-0}" = 1 ]; then
        (
            # The same shapes as stage 3, one step each: fills $TORCHINDUCTOR_CACHE_DIR (results thrown away).
            # 6 compile threads: the five training processes keep their cores.
            export EBRU_RESULTS_DIR=$WORK/warm-results TORCHINDUCTOR_COMPILE_THREADS=6
            W="--rounds 1 --steps 1 --warmup 1"
            step "compile_warm_bf16" 200 nice -n 5 $PY $TT $TT_SMALL $W --quick --compile --bf16 --name warm_bf16
            step "compile_warm_tf32" 150 nice -n 5 $PY $TT $TT_SMALL $W --quick --compile --name warm_tf32
        ) &
        WPID=$!
    else
        WPID=
    fi
    wait $QPID $TPID $WPID
    pack
fi

# ---------------------------------------------------------------------------------------------- 3 what is left
if want 3; then
    if [ "$SMOKE" = 0 ] || [ "${SMOKE_COMPILE:-0}" = 1 ]; then
        step "throughput_bf16_compile" 90 $PY $TT $TT_SMALL --quick --compile --bf16 \
            --name "train_throughput_${GPU}_bf16_compile"
        step "throughput_tf32_compile" 80 $PY $TT $TT_SMALL --quick --compile \
            --name "train_throughput_${GPU}_tf32_compile"
    fi
    step "throughput_cifar_tf32" 60 $PY $TT $TT_CIFAR --quick --name "train_throughput_${GPU}_cifar_tf32"
fi

# ---------------------------------------------------------------------------------------------- summary
pack
say "done; results in $OUT:"
ls -l "$OUT"
"$PY" - "$WORK/results" <<'EOF'
import json, sys
from pathlib import Path
for p in sorted(Path(sys.argv[1]).glob("*.json")):
    s = json.loads(p.read_text(encoding="utf-8")).get("summary", {})
    keep = {k: v for k, v in s.items() if not isinstance(v, dict | list) or k == "errors"}
    print(f"{p.stem}: {json.dumps(keep, default=str)[:900]}")
for f in ("FAILED.txt", "SKIPPED.txt"):
    if (Path(sys.argv[1]) / f).exists():
        print(f, (Path(sys.argv[1]) / f).read_text(encoding="utf-8").strip().replace("\n", "; "))
EOF
say "end"
exec >&- 2>&-   # let tee write the last lines (to stdout and session.log) before the call returns
wait "$TEE_PID" 2>/dev/null
exit 0
