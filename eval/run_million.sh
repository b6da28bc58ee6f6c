#!/bin/bash
# Runs (or continues) search_spaces/plans/smollm2-1m.yaml on the GPU machine for at most $1 seconds,
# then copies what the run directory holds (no model weights) to $OUT. How results/million-smollm2
# was made: the model's GGUF staged at $ROPESEARCH_CACHE/models/smollm2-135m, the books at
# /root/assets/books, pymoo and gguf wheels installed into /root/assets/site.
#   bash eval/run_million.sh 540
source "$(dirname "$0")/gpu_env.sh"
RUN=${RUN:-/root/assets/runs/million}
mkdir -p "$(dirname "$RUN")"
timeout -s INT "$1" python3 -m ropesearch.cli run search_spaces/plans/smollm2-1m.yaml --out "$RUN" --resume \
    2>&1 | grep --line-buffered -v "it/s]$" | tee -a "$RUN.log"
echo "exit: ${PIPESTATUS[0]}"
if [ -n "$OUT" ]; then
    tar czf "$OUT/run.tgz" --exclude='*.safetensors' --exclude=checkpoint --exclude='*.pt' -C "$(dirname "$RUN")" \
        "$(basename "$RUN")" "$(basename "$RUN").log"
    trained=$(ls "$RUN"/*/trained.safetensors 2>/dev/null | head -1)
    [ -n "$trained" ] && split -b 15M -d "$trained" "$OUT/trained.safetensors.part"
    ls -la "$OUT"
fi
