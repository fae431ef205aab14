#!/usr/bin/env bash
# Fetch (here, with PyPI) the wheels the GPU machine lacks into .whl/ (ignored by git; ~3 MiB):
# transformer-lens and the packages `import transformer_lens` needs beyond that machine's image
# (Python 3.12, torch 2.11, transformers, huggingface-hub, einops, jaxtyping, ... already there).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
  transformer-lens==4.3.0 datasets==4.4.1 dill==0.4.0 multiprocess==0.70.18
du -sh .whl
