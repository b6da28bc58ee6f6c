"""Long-context tasks on a patched model: passkey retrieval, the RULER-style suite, lm-eval.

Each has a Python twin of its command (`run_passkey`, `run_ruler`, `compare_lm_eval`), used by the CLI
and the pipeline alike; the perplexity scoring they sit beside is `ropesearch.evaluate`.
"""
