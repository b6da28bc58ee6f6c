"""lm-eval hooks of the ropesearch_ruler tasks: RULER's scoring from ropesearch (copied next to the filled YAML)."""

from ropesearch.tasks.ruler_tasks import mean_present, process_results  # noqa: F401
