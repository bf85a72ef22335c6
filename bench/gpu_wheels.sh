#!/bin/sh
# Fetch (here, where PyPI is reachable) the pinned wheels that bench/bench_gpu.py needs on the lent GPU
# machine, which has Python 3.12, torch 2.11 and transformers 5.17 but no open_clip, duckdb or network.
# They go to .whl/ in the repository root (git-ignored through .git/info/exclude), about 41 MB; the
# device tool carries them with carry [".whl"]. Versions: requirements.txt's pins (regex: any recent one,
# transformers 5.24 needs >= 2025.10.22). torch, torchvision, timm, numpy, pandas, pillow, tokenizers,
# safetensors and huggingface-hub are already on that machine and are not carried.
set -e
cd "$(dirname "$0")/.."
EXCLUDE=$(git rev-parse --git-path info/exclude)
grep -qx '/.whl/' "$EXCLUDE" 2>/dev/null || echo '/.whl/' >> "$EXCLUDE"
PY=${PYTHON:-python3}
$PY -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl \
    transformers==5.24.0 open_clip_torch==3.3.0 duckdb==2.0.1 ftfy==6.3.1 wcwidth==0.9.4 regex==2026.11.19
du -sh .whl
