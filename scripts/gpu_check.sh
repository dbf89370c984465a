#!/usr/bin/env bash
# The GPU check of issue 15, in one go, on a machine with a CUDA GPU (from a clean clone: `bash scripts/gpu_check.sh`):
#   1. the cuda-marked tests (tests/test_cuda.py: Triton primitives at ResNet-18 shapes, layers triton vs torch)
#   2. scripts/bench_norms.py --device cuda   (Triton vs cuDNN BatchNorm2d vs torch ops vs torch.compile)
#   3. scripts/bench_train.py --device cuda   (training steps per norm)
# each under its own timeout (under 8 minutes in all), then writes docs/gpu.md atomically: the GPU, driver, torch,
# triton, CUDA, the commit, the measured copy bandwidth, each step's status and its tables. Exit codes: 0 all
# steps passed; 1 a step failed or timed out (docs/gpu.md says which); 2 no GPU (or no environment): nothing written.
# NORMREPRO_GPU_DOC=path writes elsewhere; edit STEPS below to change what runs.
set -uo pipefail
cd "$(dirname "$0")/.."
DOC=${NORMREPRO_GPU_DOC:-docs/gpu.md}
PY=.venv/bin/python

die() {
    echo "gpu_check: error: $*" >&2
    exit 2
}

# --- 1. a GPU, before anything is installed
if ! command -v nvidia-smi >/dev/null 2>&1 && ! compgen -G "/dev/nvidia[0-9]*" >/dev/null; then
    die "no CUDA GPU on this machine (no nvidia-smi, no /dev/nvidia*); run it where a GPU is present"
fi
if [ ! -x "$PY" ]; then
    echo "gpu_check: no .venv yet: make install"
    make install || die "make install failed"
fi
if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    die "no CUDA GPU visible to torch ($("$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)' 2>&1 | tail -1))"
fi
unset TRITON_INTERPRET  # the kernels must run compiled, not in Triton's interpreter
export TORCHINDUCTOR_CACHE_DIR="$PWD/.cache/torchinductor" MPLBACKEND=Agg

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

# --- 2. the steps: name | timeout (s) | command (edit here)
STEPS=(
    "cuda tests|140|$PY -m pytest -m cuda -q -p no:cacheprovider tests/test_cuda.py"
    "bench_norms|190|$PY scripts/bench_norms.py --device cuda --markdown $WORK/bench_norms.md"
    "bench_train|140|$PY scripts/bench_train.py --device cuda --out $WORK/bench_train.md"
)

status=0
: >"$WORK/steps.md"
for step in "${STEPS[@]}"; do
    IFS='|' read -r name limit cmd <<<"$step"
    echo "gpu_check: $name (timeout ${limit}s): $cmd"
    t0=$(date +%s)
    timeout --kill-after=10 "$limit" bash -c "$cmd" >"$WORK/$name.log" 2>&1
    rc=$?
    dt=$(($(date +%s) - t0))
    case $rc in
        0) result="passed" ;;
        124 | 137) result="**timed out** after ${limit} s"; status=1 ;;
        *) result="**failed** (exit $rc)"; status=1 ;;
    esac
    echo "gpu_check: $name: $result (${dt} s)"
    tail -n 3 "$WORK/$name.log" | sed 's/^/    /'
    shown=${cmd//$WORK\//}
    echo "| $name | $result | $dt | \`${shown//|/\\|}\` |" >>"$WORK/steps.md"
done

# --- 3. docs/gpu.md: machine, steps, tables (written to a temp file beside it, then renamed)
info=$("$PY" - <<'EOF'
import subprocess, torch
try:
    import triton
    tv = triton.__version__
except Exception as e:  # reported, not fatal
    tv = f"unavailable ({e})"
p = torch.cuda.get_device_properties(0)
smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True,
                     text=True).stdout.strip().splitlines()
x = torch.empty(256 * 2**20, device="cuda")  # 1 GiB: device-to-device copy bandwidth (read + write)
y = torch.empty_like(x)
for _ in range(3):
    y.copy_(x)
start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
start.record()
for _ in range(10):
    y.copy_(x)
end.record()
torch.cuda.synchronize()
gbs = 10 * 2 * x.numel() * 4 / (start.elapsed_time(end) / 1e3) / 1e9
print(f"| GPU | {p.name} ({p.total_memory / 2**30:.0f} GiB, {p.multi_processor_count} SMs, sm_{p.major}{p.minor}) |")
print(f"| driver | {smi[0] if smi else 'unknown'} |")
print(f"| torch / CUDA / triton | {torch.__version__} / {torch.version.cuda} / {tv} |")
print(f"| measured copy bandwidth | {gbs:.0f} GB/s (read + write, 1 GiB device-to-device) |")
EOF
) || info="| machine info | failed |"
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
git diff --quiet HEAD 2>/dev/null || commit="$commit (uncommitted changes)"

tmp=$(mktemp "$(dirname "$DOC")/.gpu.md.XXXXXX")
{
    echo "# GPU check (issue 15)"
    echo
    echo "Written by \`scripts/gpu_check.sh\` on $(date -u +%Y-%m-%d) at commit $commit; rerun it to refresh."
    echo
    echo "| | |"
    echo "|---|---|"
    echo "$info"
    echo
    echo "## Steps"
    echo
    echo "| step | result | seconds | command |"
    echo "|---|---|---|---|"
    cat "$WORK/steps.md"
    echo
    echo "## CUDA tests"
    echo
    echo '```'
    tail -n 15 "$WORK/cuda tests.log"
    echo '```'
    for name in bench_norms bench_train; do
        echo
        echo "## $name"
        echo
        if [ -s "$WORK/$name.md" ]; then
            cat "$WORK/$name.md"
        else
            echo "No tables (the step did not finish); the end of its output:"
            echo
            echo '```'
            tail -n 25 "$WORK/$name.log"
            echo '```'
        fi
    done
} >"$tmp"
chmod 644 "$tmp"
mv -f "$tmp" "$DOC"
echo "gpu_check: wrote $DOC"
exit $status
