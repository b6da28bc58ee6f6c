#!/bin/bash
# Runs (or continues) `python eval/bench_ruler.py all` on the GPU machine for at most $1 seconds,
# then copies the proof's JSON to $OUT. How results/ruler-smollm2 was made: the model's GGUF
# staged at $ROPESEARCH_CACHE/models/smollm2-135m, the books at /root/assets/books, the gguf
# wheel installed into /root/assets/site; the JSON of earlier commands comes with the working
# tree (results/ruler-smollm2/, copied back here after each command) and every cell resumes.
#   bash eval/run_ruler.sh 540 [more options of `bench_ruler.py all`]
source "$(dirname "$0")/gpu_env.sh"
timeout -s INT "$1" python3 eval/bench_ruler.py all "${@:2}" 2>&1 | grep --line-buffered -v "it/s]$"
echo "exit: ${PIPESTATUS[0]}"
if [ -n "$OUT" ]; then
    cp results/ruler-smollm2/ruler-*.json "$OUT"/ 2>/dev/null
    ls -la "$OUT"
fi
