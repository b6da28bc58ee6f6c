#!/bin/bash
# One step of the Qwen2.5-Coder-0.5B proof on the GPU machine (results/qwen2.5-coder-0.5b/README.md):
# runs `ropesearch ARGS...` for at most $1 seconds with the staged assets (eval/stage_model.sh: the
# GGUF in $ROPESEARCH_CACHE, the books, gguf and pymoo in /root/assets/site), run directories under
# /root/assets/runs (kept while the machine is warm; a search resumes with --resume), then brings
# back every run directory as one tar and the JSONs written under $OUT.
#   bash eval/run_qwen.sh 560 search --model qwen2.5-coder-0.5b ... --out /root/assets/runs/search-128k
source "$(dirname "$0")/gpu_env.sh"
mkdir -p /root/assets/runs
[ -f "$(python3 -c 'from ropesearch.models.registry import demo_model_path as p; print(p("qwen2.5-coder-0.5b"))')" ] \
    || { echo "the model is not staged: bash eval/stage_model.sh assemble qwen2.5-coder-0.5b"; exit 2; }
timeout -s INT "$1" python3 -m ropesearch.cli "${@:2}" 2>&1 | grep --line-buffered -v "it/s]$"
RC=${PIPESTATUS[0]}
echo "exit: $RC"
nvidia-smi --query-gpu=name,memory.used --format=csv,noheader
[ -z "$OUT" ] || tar -C /root/assets -cf "$OUT/runs.tar" --exclude='*.lock' --exclude='.lock' runs
exit $RC
