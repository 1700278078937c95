#!/usr/bin/env bash
# Build an offline install kit for a GPU host whose image already holds Python 3.12, CUDA torch and
# most of the scientific stack, but not Ray, verl and the rest (and cannot reach a package index).
#
#     bash scripts/gpu_kit.sh OUT_DIR
#
# OUT_DIR receives
#   wheels.tar.xz   the Python 3.12 manylinux x86_64 wheels below, stripped (scripts/gpu_kit_strip.py)
#                   and stored uncompressed inside, so xz packs them all together
#   psft-src.tar.gz this repository at KIT_REF (git archive; scripts, benchmarks, configs)
#   install.sh      installs the wheels offline with pip --no-deps: torch and CUDA are never touched
#   MANIFEST.txt    every wheel, its size, and what was stripped
# and stays under 60 MiB (the GPU machine takes at most 64 MiB of files per run).
#
# Environment: PYTHON (the interpreter whose pip downloads; default the repo's .venv, else python3),
# KIT_REF (git ref of the project to pack; default HEAD), KIT_MAX_MIB (size limit; default 60),
# KIT_XZ_LEVEL (default 9; measured here on the whole kit: -9 gives 33.1 MiB in 6.3 CPU minutes,
# -3 gives 45.7 MiB in 5.7 CPU minutes, so the lower level buys little time).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${1:?usage: bash scripts/gpu_kit.sh OUT_DIR}"
KIT_REF="${KIT_REF:-HEAD}"
KIT_MAX_MIB="${KIT_MAX_MIB:-60}"
KIT_XZ_LEVEL="${KIT_XZ_LEVEL:-9}"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
[[ -x "$PYTHON" ]] || PYTHON=python3

# What the GPU run imports and the GPU image (device README, KINDS.md package list) lacks, or holds at
# a version the pinned stack cannot use, resolved by hand from each package's Requires-Dist and pinned
# to the versions the CPU path is tested with. Everything else verl 0.9.1 imports (numpy, pandas,
# pyarrow, accelerate, safetensors, huggingface-hub, aiohttp, grpcio, protobuf, psutil, requests, ...)
# comes from the image. Left out on purpose: torch, CUDA libraries, vllm, flash-attn (the GPU check
# runs sdpa attention); Ray's dashboard extras (Ray runs without its dashboard); packages verl
# declares but the training path never imports, or imports only when present (wandb, torchcodec,
# nvtx, pylatexenc, mathruler, qwen-vl-utils, pytest plugins).
WHEELS=(
    verl==0.9.1
    # verl 0.9.1 needs transformers <5.11 (the image has 5.17.0), which needs tokenizers <=0.23.0
    # (the image has 0.23.2); peft matched to that transformers.
    transformers==5.10.4
    tokenizers==0.22.2
    peft==0.21.2
    # Ray core and its one dependency missing from the image.
    ray==2.60.0
    jsonschema==4.26.0
    jsonschema-specifications==2025.9.1
    referencing==0.37.0
    rpds-py==2026.9.1
    # verl's data containers and loader.
    tensordict==0.10.0
    orjson==3.13.0
    pyvers==0.1.0
    torchdata==0.11.0
    # Config.
    hydra-core==1.3.8
    omegaconf==2.3.1
    # verl imports these at module level on the trainer's path.
    codetiming==1.4.0
    datasets==5.2.0
    dill==0.4.1
    multiprocess==0.70.19
    fastapi==0.136.3
    starlette==1.10.0
    pydantic==2.14.4
    pydantic-core==2.50.5
    annotated-types==0.8.0
    typing-inspection==0.4.5
    typing-extensions==4.16.0
    uvicorn==0.54.0
    # verl's TransferQueue path, imported when installed (as on the CPU path the tests run).
    transferqueue==0.1.11
    pyzmq==27.3.0
    msgspec==0.23.0
)
# Published as a source distribution only (pure Python): built into a wheel here.
SDIST_ONLY=(antlr4-python3-runtime==4.9.3)

PLATFORMS=()
for tag in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 \
    manylinux2014_x86_64 manylinux1_x86_64 linux_x86_64; do
    PLATFORMS+=(--platform "$tag")
done

die() { echo "[gpu_kit] error: $*" >&2; exit 1; }
git -C "$ROOT" rev-parse --verify -q "$KIT_REF^{commit}" >/dev/null || die "KIT_REF=$KIT_REF is not a commit of $ROOT"
"$PYTHON" -m pip --version >/dev/null 2>&1 || die "$PYTHON has no pip (set PYTHON=...)"

mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
rm -f "$OUT/wheels.tar.xz" "$OUT/psft-src.tar.gz" "$OUT/install.sh" "$OUT/MANIFEST.txt"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK/wheels"
PIP=("$PYTHON" -m pip --disable-pip-version-check)

echo "[gpu_kit] downloading ${#WHEELS[@]} wheels for CPython 3.12 manylinux x86_64"
"${PIP[@]}" download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp --abi cp312 \
    --abi abi3 --abi none "${PLATFORMS[@]}" --platform any -d "$WORK/wheels" "${WHEELS[@]}" ||
    die "pip download failed (is the package index reachable?)"
echo "[gpu_kit] building wheels of source-only packages: ${SDIST_ONLY[*]}"
"${PIP[@]}" wheel -q --no-deps --no-binary=:all: -w "$WORK/wheels" "${SDIST_ONLY[@]}" ||
    die "pip wheel ${SDIST_ONLY[*]} failed"

echo "[gpu_kit] project: wheel and source archive of $KIT_REF"
mkdir -p "$WORK/src"
git -C "$ROOT" archive --format=tar "$KIT_REF" | tar -x -C "$WORK/src"
"${PIP[@]}" wheel -q --no-deps --no-build-isolation -w "$WORK/wheels" "$WORK/src" >"$WORK/project.log" 2>&1 ||
    die "building the project wheel failed: $(tail -20 "$WORK/project.log")"
git -C "$ROOT" archive --format=tar.gz -o "$OUT/psft-src.tar.gz" "$KIT_REF"

count="$(find "$WORK/wheels" -name '*.whl' | wc -l)"
expected=$((${#WHEELS[@]} + ${#SDIST_ONLY[@]} + 1))
[[ "$count" == "$expected" ]] || die "expected $expected wheels, found $count: $(ls "$WORK/wheels")"
raw_bytes="$(du -cb "$WORK"/wheels/*.whl | tail -1 | cut -f1)"

echo "[gpu_kit] stripping"
strip_log="$("$PYTHON" "$ROOT/scripts/gpu_kit_strip.py" "$WORK/wheels")"
echo "$strip_log"

echo "[gpu_kit] compressing (xz -$KIT_XZ_LEVEL)"
tar -C "$WORK/wheels" -cf - . | xz "-$KIT_XZ_LEVEL" -T0 >"$OUT/wheels.tar.xz"

{
    echo "# PSFT GPU kit: $(git -C "$ROOT" rev-parse "$KIT_REF") ($KIT_REF), built $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "# wheels as downloaded: $((raw_bytes / 1048576)) MiB"
    while IFS= read -r line; do echo "# ${line#"${line%%[! ]*}"}"; done <<<"$strip_log"
    echo "# wheel (stored, after stripping)  bytes"
    (cd "$WORK/wheels" && for f in *.whl; do printf '%s %s\n' "$f" "$(stat -c %s "$f")"; done)
} >"$OUT/MANIFEST.txt"

cat >"$OUT/install.sh" <<'INSTALL'
#!/usr/bin/env bash
# Install this kit offline into the environment of $PYTHON (default python3), or with --target DIR
# into DIR (then put DIR first on PYTHONPATH). pip runs with --no-index --no-deps: it installs exactly
# these wheels and never touches torch or the CUDA libraries. --no-project leaves out the psft-verl
# wheel (run the recipe from a source checkout instead).
set -euo pipefail
KIT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PYTHON="${PYTHON:-python3}"
TARGET=()
PROJECT=1
while [[ $# -gt 0 ]]; do
    case "$1" in
    --target) TARGET=(--target "$2"); shift 2 ;;
    --no-project) PROJECT=0; shift ;;
    *) echo "usage: install.sh [--target DIR] [--no-project]" >&2; exit 2 ;;
    esac
done
die() { echo "[kit] error: $*" >&2; exit 1; }
version="$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')" || die "no interpreter $PYTHON"
[[ "$version" == 3.12 ]] || die "these wheels are for CPython 3.12; $PYTHON is $version"
torch_before="$("$PYTHON" -c 'import torch; print(torch.__version__)' 2>/dev/null || echo none)"
[[ "$torch_before" != none ]] || echo "[kit] warning: $PYTHON has no torch; the kit does not carry it" >&2
WHEELDIR="$(mktemp -d)"
trap 'rm -rf "$WHEELDIR"' EXIT
tar -xJf "$KIT/wheels.tar.xz" -C "$WHEELDIR"
[[ "$PROJECT" == 1 ]] || rm -f "$WHEELDIR"/psft_verl-*.whl
"$PYTHON" -m pip install -q --disable-pip-version-check --no-index --no-deps --no-compile --upgrade \
    --find-links "$WHEELDIR" "${TARGET[@]}" "$WHEELDIR"/*.whl
torch_after="$("$PYTHON" -c 'import torch; print(torch.__version__)' 2>/dev/null || echo none)"
[[ "$torch_after" == "$torch_before" ]] || die "torch changed from $torch_before to $torch_after"
echo "[kit] installed $(find "$WHEELDIR" -name '*.whl' | wc -l) wheels into ${TARGET[1]:-the environment of $PYTHON} (torch $torch_after untouched)"
INSTALL
chmod +x "$OUT/install.sh"

size_bytes="$(du -cb "$OUT"/* | tail -1 | cut -f1)"
size_mib="$(awk -v b="$size_bytes" 'BEGIN { printf "%.1f", b / 1048576 }')"
echo "[gpu_kit] contents of $OUT:"
ls -l "$OUT"
echo "[gpu_kit] wheels: $(grep -c '\.whl ' "$OUT/MANIFEST.txt") (see MANIFEST.txt); downloaded $((raw_bytes / 1048576)) MiB"
echo "[gpu_kit] kit size: $size_mib MiB ($size_bytes bytes; limit $KIT_MAX_MIB MiB)"
((size_bytes < KIT_MAX_MIB * 1048576)) || die "the kit is $size_mib MiB, over the $KIT_MAX_MIB MiB limit"
