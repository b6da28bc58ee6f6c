#!/bin/bash
# Runs a queue of jobs in the background on the GPU machine, so that one long run spans several
# device calls (each call is at most 10 minutes) without reloading the model or re-running a
# search's set-up at every call:
#
#   bash eval/gpu_queue.sh start QUEUE   # returns at once; QUEUE: one job a line (# comments), each
#                                        # `ropesearch ARGS...`, `python eval/SCRIPT ARGS...` or
#                                        # `sh COMMAND` (e.g. copy a committed partial JSON to resume)
#   bash eval/gpu_queue.sh wait SECS     # until the queue ends or SECS pass: the log's new lines, then
#                                        # the runs (/root/assets/runs) and outputs (/root/assets/out) into $OUT
#   bash eval/gpu_queue.sh stop          # SIGINT to the running job (a search checkpoints), the rest skipped
#
# Jobs write their JSONs under /root/assets/out and run directories under /root/assets/runs. Make the
# calls back to back: a machine idle for 30 s is given back, with the queue and its files.
source "$(dirname "$(readlink -f "$0")")/gpu_env.sh" 2>/dev/null || source eval/gpu_env.sh
Q=/root/assets/queue
mkdir -p "$Q" /root/assets/runs /root/assets/out

collect() {  # tar's 1 is "a file changed while read": a job is writing; the archive is still good
    [ -n "$OUT" ] || return 0
    tar -C /root/assets -cf "$OUT/runs.tar" --exclude='*.lock' --exclude='.lock' runs out queue/log 2>/dev/null \
        || [ $? -eq 1 ]
}

running() { [ -f "$Q/pid" ] && kill -0 "$(cat "$Q/pid")" 2>/dev/null; }

case "${1:-}" in
start)
    queue=${2:?name a queue file}
    running && { echo "a queue is running (pid $(cat "$Q/pid"))"; exit 1; }
    cp "$queue" "$Q/jobs"
    : > "$Q/log"
    rm -f "$Q/stop" "$Q/shown" "$Q/pid"
    # the jobs run from a copy of the tree: the next call may replace the working tree's files
    rm -rf /root/assets/src && mkdir -p /root/assets/src
    tar -c --exclude=./.assets --exclude=./.whl --exclude=./.books --exclude=./.git . | tar -x -C /root/assets/src
    cp "$0" "$Q/runner.sh"
    cd /root/assets/src && export PYTHONPATH=$PWD:/root/assets/site
    mkdir -p ../shared/data && ln -sfn /root/assets/books ../shared/data/books  # plans name ../shared/data/books
    # job control on: a background job of a script otherwise starts with SIGINT ignored, and `stop`
    # could not interrupt a search (Python keeps an ignored SIGINT ignored)
    set -m
    setsid nohup bash "$Q/runner.sh" _run >> "$Q/log" 2>&1 < /dev/null &
    for _ in 1 2 3 4 5; do [ -f "$Q/pid" ] && break; sleep 1; done
    cat "$Q/log" && wc -l < "$Q/log" > "$Q/shown"  # a `wait` in the same call shows only what follows
    ;;
_run)  # the runner (started by `start`): one job after another, each with no stdin
    echo $$ > "$Q/pid"
    trap : INT  # `stop` interrupts the job, not the runner (a trapped signal is default again in a job)
    n=0
    while IFS= read -r line || [ -n "$line" ]; do
        case "$line" in ""|"#"*) continue;; esac
        n=$((n + 1))
        [ -f "$Q/stop" ] && { echo "== job $n skipped (stopped): $line"; continue; }
        echo "== job $n $(date -u +%H:%M:%S): $line"
        started=$(date +%s)
        case "$line" in
            python*) eval "python3 ${line#python }" ;;
            "sh "*) eval "${line#sh }" ;;
            *) eval "python3 -m ropesearch.cli $line" ;;
        esac < /dev/null 2>&1 | grep --line-buffered -v "it/s]$"
        echo "== job $n exit ${PIPESTATUS[0]} after $(( $(date +%s) - started )) s"
    done < "$Q/jobs"
    echo "== queue done $(date -u +%H:%M:%S)"
    nvidia-smi --query-gpu=name,memory.used --format=csv,noheader
    ;;
wait)
    secs=${2:?how many seconds}
    end=$(( $(date +%s) + secs ))
    shown=$(cat "$Q/shown" 2>/dev/null || echo 0)
    while [ "$(date +%s)" -lt "$end" ] && running && ! grep -q "^== queue done" "$Q/log" 2>/dev/null; do sleep 5; done
    total=$(wc -l < "$Q/log")
    tail -n +$((shown + 1)) "$Q/log" | tail -n 150
    echo "$total" > "$Q/shown"
    if grep -q "^== queue done" "$Q/log"; then echo "(queue finished)"
    elif running; then echo "(queue still running)"
    else echo "(the queue's runner is gone: start it again)"; fi
    collect
    ;;
stop)  # SIGINT to the job's Python processes only (a search checkpoints and exits); later jobs skipped
    touch "$Q/stop"
    running && pkill -INT -s "$(cat "$Q/pid")" -f '^[^ ]*python3 ' || true
    for _ in $(seq 60); do running || break; sleep 1; done
    tail -n 20 "$Q/log"
    collect
    ;;
*)
    sed -n 2,14p "$0"; exit 2
    ;;
esac
