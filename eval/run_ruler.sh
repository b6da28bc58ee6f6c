#!/bin/bash
# Runs (or continues) `python eval/bench_ruler.py all` on the GPU machine for at most $1 seconds,
# then copies the proof's JSON to $OUT. How results/ruler-smollm2 was made: the model's GGUF
# staged at $ROPESEARCH_CACHE/models/smollm2-135m, the books at /root/assets/books, the gguf
# wheel installed into /root/assets/site; the JSON of earlier commands comes with the working
# tree (results/ruler-smollm2/, copied back here after each command) and every cell resumes.
# The JSON is also copied to $OUT every 15 s while it runs (each is written whole, by a rename), so
# a call cut short by the device (a limit below the one asked for, when little device time is
# left) still brings back every task finished before the cut.
#   bash eval/run_ruler.sh 540 [more options of `bench_ruler.py all`]
source "$(dirname "$0")/gpu_env.sh"
copy_out() {  # each file whole: a copy cut off by the device's kill is a .part beside the last whole one
    [ -n "$OUT" ] || return 0
    for f in results/ruler-smollm2/ruler-*.json; do
        [ -f "$f" ] && cp "$f" "$OUT/${f##*/}.part" && mv "$OUT/${f##*/}.part" "$OUT/${f##*/}"
    done
}
copier() {  # until this script ends; stopped between copies (the trap waits for a cp), no sleep left behind
    trap 'kill $nap 2>/dev/null; exit 0' TERM
    while kill -0 $$ 2>/dev/null; do sleep 15 & nap=$!; wait $nap; copy_out; done
}
copier &
COPIER=$!
timeout -s INT "$1" python3 eval/bench_ruler.py all "${@:2}" 2>&1 | grep --line-buffered -v "it/s]$"
RC=${PIPESTATUS[0]}
echo "exit: $RC"
kill $COPIER
wait $COPIER
copy_out
[ -z "$OUT" ] || ls -la "$OUT"
exit $RC
