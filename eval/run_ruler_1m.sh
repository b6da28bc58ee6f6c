#!/bin/bash
# The RULER proof with the 1m set on the GPU machine, for at most $1 seconds: `bash eval/run_ruler.sh`
# with the million plan's fine-tuned model as --found-model. results/million-smollm2 keeps no
# weights (not even trained.safetensors), so where this machine lacks the model, the plan's
# fine-tuning stage runs again first (~214 s on an H100): the committed run directory is copied to
# runs/million (the paths its done.json files name) without 02-finetune/done.json, and
# `ropesearch run --resume` redoes that stage alone (every other stage is done). Its final loss is
# printed beside the committed run's, and its done.json and history.json come back in $OUT.
# `ropesearch run` imports pymoo: its wheels (and moocore's, platformdirs among them) go into
# /root/assets/site with gguf's.
#   bash eval/run_ruler_1m.sh 570
START=$(date +%s)
source "$(dirname "$0")/gpu_env.sh"
RUN=runs/million
MODEL=$RUN/02-finetune/model
if [ ! -f $RUN/plan.json ]; then
    mkdir -p runs && cp -r results/million-smollm2 $RUN && rm $RUN/02-finetune/done.json $RUN/02-finetune/spent.json
fi
if ! ls $MODEL/*.safetensors >/dev/null 2>&1; then
    python3 -c "import pymoo.algorithms.moo.nsga2" || { echo "fine-tuning again needs pymoo: install its wheels into /root/assets/site"; exit 2; }
    timeout -s INT "$1" python3 -m ropesearch.cli run search_spaces/plans/smollm2-1m.yaml --out $RUN --resume \
        2>&1 | grep --line-buffered -v "it/s]$"
    [ -f $RUN/02-finetune/done.json ] || { echo "the fine-tuning stage did not finish: run again"; exit 1; }
    python3 - "$RUN" <<'PY'
import json, sys
now = json.load(open(f"{sys.argv[1]}/02-finetune/done.json"))["outputs"]["final_loss"]
then = json.load(open("results/million-smollm2/02-finetune/done.json"))["outputs"]["final_loss"]
print(f"fine-tuned again: final loss {now} (committed run: {then}, difference {now - then:+.2e})")
PY
    if [ -n "$OUT" ]; then
        cp $RUN/02-finetune/done.json "$OUT/finetune-again-done.json"
        cp $RUN/02-finetune/history.json "$OUT/finetune-again-history.json"
    fi
fi
LEFT=$(( $1 - $(date +%s) + START ))
[ "$LEFT" -gt 60 ] || { echo "no time left for RULER in this command"; exit 0; }
bash "$(dirname "$0")/run_ruler.sh" "$LEFT" --found-model "$MODEL"
