#!/usr/bin/env bash
# The GPU work of a session that is lent one, in steps that each fit one call of the device tool.
#
#   bash benchmarks/gpu_session.sh tests          # install, versions, precompile, the gpu-marked tests
#   bash benchmarks/gpu_session.sh suite          # the rest of the suite, kernels compiled for the GPU
#   bash benchmarks/gpu_session.sh quick          # python -m benchmarks all --quick
#   bash benchmarks/gpu_session.sh ops [NAME]     # the full op benchmarks (or only NAME)
#   bash benchmarks/gpu_session.sh train [NAME]   # training steps (default: StyleGAN2 paper256)
#   bash benchmarks/gpu_session.sh profile CASE   # torch.profiler of one case, fused and eager
#
# Why a script: the device tool allows 10 minutes a call and 30 a session, keeps a machine warm for only
# ~30 s between calls, and brings back at most 8 files from $OUT. So every step
#   - installs the package if this machine does not have it yet (a fresh machine starts bare),
#   - warms Triton's cache first: `benchmarks.hopper_compile` compiles every training-kernel specialization on
#     all CPU cores at once (a kernel launch would compile them one at a time, in the timed process); the
#     launches then find them in ~/.triton/cache, whose keys are the same compile requests,
#   - runs each command under its own time limit, so that the step returns with its results in time,
#   - packs everything it wrote into ONE archive, $OUT/<step>.tgz, and copies its log to $OUT/<step>.log.
# Call it as `FUSEGAN_COMMIT=<sha> bash benchmarks/gpu_session.sh STEP` (the device's copy of the tree may have
# no .git). Unpack the archives into benchmarks/results/<gpu>/ and commit them with the command, versions and
# date (versions.txt in every archive), then `python -m benchmarks.report DIR` and `python -m benchmarks.readme_table`.
set -uo pipefail
cd "$(dirname "$0")/.."

step=${1:?usage: gpu_session.sh tests|suite|quick|ops|train|profile [NAME]}
arg=${2:-}
OUT=${OUT:-$PWD/gpu-out}
budget=${BUDGET_S:-570}                       # seconds for the whole step: under the tool's 600 s per call
work=$(mktemp -d "/tmp/fusegan-$step.XXXX")
log=$work/$step.log
start=$SECONDS
mkdir -p "$OUT"

say() { echo "[gpu_session $step +$((SECONDS - start))s] $*" | tee -a "$log"; }

# Runs "$@" with what is left of the budget minus `reserve` seconds (for what must still run after it).
run_limited() {
    local reserve=$1; shift
    local left=$((budget - (SECONDS - start) - reserve))
    if [ "$left" -lt 10 ]; then say "skipped (no time left): $*"; return 124; fi
    say "run (limit ${left}s): $*"
    timeout --signal=INT --kill-after=20 "$left" "$@" >>"$log" 2>&1
    local rc=$?
    say "exit $rc: $*"
    return $rc
}

status=0
finish() {
    tar -czf "$OUT/$step.tgz" -C "$work" . && cp "$log" "$OUT/$step.log"
    say "wrote $OUT/$step.tgz ($(du -h "$OUT/$step.tgz" | cut -f1)); step exit status $status"
    exit "$status"
}
trap finish EXIT

if ! python3 -c "import fusegan.kernels" 2>/dev/null; then
    run_limited 0 python3 -m pip install -q --no-deps --no-build-isolation -e .
fi
{
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    # The device gets a copy of the working tree, maybe without .git: the caller can name the commit.
    echo "commit: ${FUSEGAN_COMMIT:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}"
    echo "command: bash benchmarks/gpu_session.sh $*"
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader 2>&1
    python3 -c "import sys, torch, triton; print('python', sys.version.split()[0]); print('torch', torch.__version__, 'cuda', torch.version.cuda); print('triton', triton.__version__)" 2>&1
} >"$work/versions.txt"
cat "$work/versions.txt" >>"$log"

arch=$(python3 -c "import torch; c = torch.cuda.get_device_capability(); print(c[0] * 10 + c[1])" 2>/dev/null)
[[ $arch =~ ^[0-9]+$ ]] || arch=90            # no GPU visible: Hopper, the lent kind
# Best effort: a failure here is reported in its JSON and log, and the launches compile what is missing.
precompile() { run_limited "$1" python3 -m benchmarks.hopper_compile --arch "$arch" --out "$work/compile-sm$arch.json"; }

case $step in
    tests)
        precompile 300
        run_limited 15 python3 -m pytest -m gpu -q -n 4 -p no:cacheprovider --junitxml="$work/gpu-tests.xml"
        status=$? ;;
    suite)  # every other test with the Triton path compiled on the GPU (the CPU runs them in the interpreter)
        run_limited 15 python3 -m pytest -m "not gpu" -q -n 8 -p no:cacheprovider --junitxml="$work/suite.xml"
        status=$? ;;
    quick)
        precompile 200
        run_limited 15 python3 -m benchmarks all --quick --out "$work/quick"
        status=$? ;;
    ops)
        precompile 200
        run_limited 15 python3 -m benchmarks ops ${arg:+--only "$arg"} --time-limit $((budget - 120)) --out "$work/ops"
        status=$? ;;
    train)
        precompile 200
        run_limited 15 python3 -m benchmarks train --only "${arg:-train.stylegan2.paper256}" --time-limit 60 \
            --out "$work/train"
        status=$? ;;
    profile)
        [ -n "$arg" ] || { say "profile needs a case name"; status=2; exit; }
        for variant in fusegan eager; do
            run_limited 15 python3 -m benchmarks.profile "$arg" --variant "$variant" --out "$work/profile-$variant" \
                || status=$?
        done ;;
    *)
        say "unknown step: $step"; status=2 ;;
esac
