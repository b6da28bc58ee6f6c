#!/bin/sh
# The wheel lane: build the wheel, install it into a fresh venv outside the source tree, and from
# another folder run what a new user runs first (a shipped plan by name, search --space fast,
# lm-eval's passkey task, ruler on one task, report), each with a tiny budget. It fails on any error:
# a plan, space or task file that the wheel does not carry shows here, not on a user's machine.
# pip's cache serves the dependencies after the first run; torch is pinned to its CPU build.
set -eu
SOURCE=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-python3}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/ropesearch-wheel-lane.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
PIP="$WORK/venv/bin/pip --quiet --disable-pip-version-check"

$PYTHON -m venv "$WORK/venv"
$PIP wheel --no-deps -w "$WORK/wheel" "$SOURCE"
$PIP install -c "$SOURCE/constraints-cpu.txt" torch==2.13.0
$PIP install -c "$SOURCE/constraints-cpu.txt" "$(ls "$WORK"/wheel/ropesearch-*.whl)[lm-eval]"

mkdir "$WORK/user" && cd "$WORK/user"  # no checkout around: only the wheel can serve shipped files
rs="$WORK/venv/bin/ropesearch"
# the shipped plan by name (loaded and checked: its full search takes minutes), then run with its
# search cut to a few evaluations and its shipped space by name
cat > tiny.yaml <<'PLAN'
name: tiny
model: pocket
data: builtin
stages:
  - search: {target: 512, space: fast, samples: 1, max_evals: 4}
  - report: {}
PLAN
"$WORK/venv/bin/python" -c "from ropesearch.pipeline.plan import load_plan; print(load_plan('pocket-quickstart'))"
$rs run tiny.yaml --out runs/tiny
$rs search --model pocket --target-length 2k --space fast --max-evals 4 --samples 1 --out runs/search
$rs lm-eval --model pocket --tasks ropesearch_passkey --limit 1 --device cpu
$rs ruler --model pocket --tasks niah_single_1 --lengths 512 --samples 1 --device cpu
$rs report runs/search
echo "wheel lane: passed"
