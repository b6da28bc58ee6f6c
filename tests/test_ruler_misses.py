"""eval/ruler_misses.py: each NIAH reference an answer missed is a near copy, another value, or none."""

import importlib.util
from pathlib import Path

spec = importlib.util.spec_from_file_location("ruler_misses", Path(__file__).parents[1] / "eval" / "ruler_misses.py")
ruler_misses = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ruler_misses)


def test_a_miss_is_a_near_copy_another_value_or_none():
    kind = ruler_misses.miss_kind
    assert kind("8220654", " 8220654.") is None
    assert kind("8220654", " 8223301.") == "near copy"
    assert kind("63ce2e68-4973-4a71-846e-a5448af608be", ": 63ce2e68-4973-4000. The text") == "near copy"
    assert kind("8220654", " 5088451.") == "other value"
    assert kind("a84917f3-148c-4cd6-9be5-b8e9d8d2a665", ' "Paradise Lost." The text states') == "no value"
    assert kind("63ce2e68-4973-4a71-846e-a5448af608be", "63CE2E68-4973-4A71-846E-A5448AF608BE") is None
    assert kind("8220654", " a decade, a facade") == "no value"


def test_misses_count_references_of_niah_tasks_only():
    ruler = {"found": {"predictions": {
        "niah_multivalue": {"1024": [[["1111111", "2222222"], " 1111111, 2229999", 0.5],
                                     [["3333333", "4444444"], " 3333333", 1.0]]},  # the rest past 200 characters
        "vt": {"1024": [[["X"], "nothing", 0.0]]}}}}
    assert ruler_misses.misses(ruler) == {"found": {"1024": {"references": 4, "near copy": 1, "other value": 0,
                                                              "no value": 0, "past the stored text": 0}}}
