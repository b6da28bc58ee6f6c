"""Compare search-space variants on the pocket model on CPU (target 2048 = 8x, built-in corpus).

    python eval/pocket_search_variants.py CODE SPACE[,SPACE...] > runs.jsonl

CODE is the folder whose `ropesearch` package is imported (a checkout; a git worktree of an
older commit compares code versions). Each space runs for 1.5 minutes with seeds 0 and 1 (the
seed also picks the search windows, so compare rows of the same seed). One JSON line per run:
best perplexity, full and screening evaluations, and every third point of best-vs-seconds.
"""

import sys, json
code=sys.argv[1]; sys.path.insert(0, code)
import torch; torch.set_num_threads(2)
import tempfile, time
from ropesearch.search.session import SearchConfig, run_search
from ropesearch.search.space import load_space
from ropesearch.models import load_model, load_tokenizer, resolve_model
ref=resolve_model('pocket'); tok=load_tokenizer(ref); model=load_model(ref, device='cpu')
for spec in sys.argv[2].split(','):
  for seed in (0,1):
    out=tempfile.mkdtemp()
    r=run_search(SearchConfig('pocket', 'builtin', 2048, space=load_space(spec), samples=2, seed=seed, time_minutes=1.5), out, loaded=(model,tok), log=lambda *a:None)
    trace=[(round(p.get('evaluator_seconds', p.get('gpu_seconds')),1), round(list(p['best'].values())[0],3)) for p in r.state.progress]
    print(json.dumps({'code':code,'space':spec,'seed':seed,'best':r.values[0],'evals':r.state.full_evals,'screens':r.state.screen_evals,'trace':trace[::3]}), flush=True)
