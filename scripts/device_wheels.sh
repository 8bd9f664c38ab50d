#!/usr/bin/env bash
# Wheels that a GPU machine with PyTorch but no internet needs to run scripts/device_check.sh: mtbench's import-time
# dependencies missing from a stock PyTorch image (fvcore and pydantic, with theirs), for CPython 3.12 on x86-64
# Linux, saved to .whl/ (git-ignored). fvcore and iopath publish no wheels: they are built here (pure Python).
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
platforms=(--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${platforms[@]}" -d .whl \
  "pydantic==$(python -c 'import pydantic; print(pydantic.VERSION)')" \
  "pydantic-core==$(python -c 'import pydantic_core; print(pydantic_core.__version__)')" \
  annotated-types typing-inspection yacs termcolor
pip wheel -q --no-deps -w .whl fvcore==0.1.5.post20221221 iopath==0.1.10
ls .whl
