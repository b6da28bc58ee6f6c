#!/bin/bash
# Stages a demo model (and the books and wheels the eval scripts need) onto a GPU machine that
# cannot reach the registry. A device call carries at most 64 MiB with the working tree, so the
# model travels in parts, one a call, made back to back while the machine stays warm:
#
#   here:    bash eval/stage_model.sh split qwen2.5-coder-0.5b [MiB]   # fetch, cut into .assets/NAME/partNN
#            bash eval/stage_model.sh extras                           # .books/ and .whl/ (eval/device-wheels.txt)
#   device:  bash eval/stage_model.sh put                  (carry .books and .whl once; then each call
#            carries one .assets/NAME/partNN and runs `put` again)
#            bash eval/stage_model.sh assemble NAME         # cat the parts, check sha256, into the cache
#
# `split` prints the part count and the MiB that fit beside today's working tree. A wrong
# checksum at `assemble` means the machine was given back between calls: stage again.
# Make the first call (books and wheels) alone: it starts the machine. Only once it has answered,
# send the part calls all at once; when no machine can be started, every call sent after the
# refusal still costs device time (15 s each).
set -euo pipefail
cd "$(dirname "$0")/.."
ASSETS=/root/assets
PY=${PYTHON:-python3}

tree_mib() {  # what every call sends: the tracked files
    git ls-files -z | xargs -0 stat -c %s | awk '{s += $1} END {printf "%d", s / 1048576 + 1}'
}

case "${1:-}" in
split)
    name=${2:?name a demo model}
    mib=${3:-$((62 - $(tree_mib)))}
    gguf=$($PY -m ropesearch.cli fetch-model "$name")
    rm -rf ".assets/$name" && mkdir -p ".assets/$name"
    split -b "${mib}M" -d -a 2 "$gguf" ".assets/$name/part"
    n=$(ls ".assets/$name" | wc -l)
    echo "$gguf -> $n parts of ${mib} MiB in .assets/$name (the tree is $(tree_mib) MiB)"
    for p in ".assets/$name"/part*; do echo "  carry [\"$p\"]: bash eval/stage_model.sh put"; done
    echo "  then: bash eval/stage_model.sh assemble $name && ..."
    ;;
extras)
    rm -rf .books && cp -r ../shared/data/books .books
    ls .whl/*.whl >/dev/null 2>&1 || $PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl -r eval/device-wheels.txt
    echo ".books ($(du -sh .books | cut -f1)) and .whl ($(du -sh .whl | cut -f1)) ready: carry both in the first call"
    ;;
put)  # whatever this call carried: books, wheels, model parts
    mkdir -p "$ASSETS/parts" "$ASSETS/site"
    if [ -d .books ]; then rm -rf "$ASSETS/books" && cp -r .books "$ASSETS/books"; fi
    if ls .whl/*.whl >/dev/null 2>&1; then
        $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$ASSETS/site" .whl/*.whl
        # a wheel missing from .whl (pymoo 0.6.2 also needs moocore) fails here, not minutes later in a search
        PYTHONPATH="$ASSETS/site" $PY -c "import gguf, pymoo.algorithms.moo.nsga2" \
            || { echo "the wheels in .whl do not import: download the missing one (device README) and stage again"; exit 1; }
    fi
    if [ -d .assets ]; then
        for p in .assets/*/part*; do
            [ -f "$p" ] || continue
            mkdir -p "$ASSETS/parts/$(basename "$(dirname "$p")")"
            cp "$p" "$ASSETS/parts/$(basename "$(dirname "$p")")/"
        done
    fi
    du -sh "$ASSETS"/* 2>/dev/null
    ls "$ASSETS/parts"/* 2>/dev/null | tr "\n" " " || true; echo
    ;;
assemble)
    name=${2:?name a demo model}
    export ROPESEARCH_CACHE=$ASSETS/cache
    target=$($PY -c "from ropesearch.models.registry import demo_model_path as p; print(p('$name'))")
    want=$($PY -c "from ropesearch.models.registry import DEMO_MODELS as m; print(m['$name'].sha256)")
    if [ -f "$target" ] && [ "$(sha256sum "$target" | cut -d' ' -f1)" = "$want" ]; then echo "$target: already there"; exit 0; fi
    mkdir -p "$(dirname "$target")"
    cat "$ASSETS/parts/$name"/part* > "$target.part"
    got=$(sha256sum "$target.part" | cut -d' ' -f1)
    [ "$got" = "$want" ] || { echo "sha256 $got, expected $want: a part is missing or the machine was given back; stage again"; rm -f "$target.part"; exit 1; }
    mv "$target.part" "$target" && rm -rf "$ASSETS/parts/$name"
    echo "$target: sha256 checked"
    ;;
*)
    sed -n 2,15p "$0"; exit 2
    ;;
esac
