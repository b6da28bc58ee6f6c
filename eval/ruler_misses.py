"""What a RULER run's NIAH misses are, per factor set and length, read from its JSON's predictions.

    python eval/ruler_misses.py results/qwen2.5-coder-0.5b/ruler-64k-128k.json \
        --json results/qwen2.5-coder-0.5b/ruler-misses-64k-128k.json

Each reference an answer did not contain is one miss, of one of three kinds:
- near copy: the answer holds a value that starts like the reference (its first 3 characters; by chance 1 in 1000 for digits) but
  differs after that, a copy that drifts;
- other value: the answer holds some value of the reference's kind (digits, or UUID characters), just
  not one that starts like it: another needle's value, or one made up;
- no value: nothing of that kind in the answer.
Misses are counted from each row's score (RULER's, on the whole answer); where the stored answer
(its first 200 characters) shows fewer, the rest count as "past the stored text".
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ropesearch.tables import aligned  # noqa: E402

KINDS = ("near copy", "other value", "no value", "past the stored text")
VALUE = re.compile(r"[0-9a-f]+(?:-[0-9a-f]+)*")


DIGITS = re.compile(r"\d+")


def miss_kind(reference: str, answer: str) -> str | None:
    """None when the answer contains the reference (case aside, as RULER scores), else the kind of miss
    (see the module's doc); a numeric reference counts only numbers as values."""
    reference, answer = reference.lower(), answer.lower()
    if reference in answer:
        return None
    pattern = DIGITS if reference.isdigit() else VALUE
    values = [v for v in pattern.findall(answer) if len(v) >= min(6, len(reference))]
    if any(v[:3] == reference[:3] for v in values):
        return "near copy"
    return "other value" if values else "no value"


def misses(ruler: dict) -> dict:
    """{factor set: {length: {kind: count, "references": n}}} over the NIAH tasks."""
    table = {}
    for name, result in ruler.items():
        for task, by_length in result["predictions"].items():
            if not task.startswith("niah"):
                continue
            for length, rows in by_length.items():
                cell = table.setdefault(name, {}).setdefault(length, {"references": 0, **dict.fromkeys(KINDS, 0)})
                for references, answer, score in rows:
                    cell["references"] += len(references)
                    # the JSON keeps an answer's first 200 characters; its score saw the whole answer
                    missed = round((1 - score) * len(references))
                    kinds = [k for k in (miss_kind(r, answer) for r in references) if k][:missed]
                    for kind in kinds:
                        cell[kind] += 1
                    cell["past the stored text"] += missed - len(kinds)
    return table


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("ruler_json")
    parser.add_argument("--json", required=True)
    args = parser.parse_args()
    table = misses(json.loads(Path(args.ruler_json).read_text())["ruler"])
    rows = [[name, length, str(cell["references"]), *(str(cell[k]) for k in KINDS)]
            for name, by_length in table.items() for length, cell in sorted(by_length.items(), key=lambda x: int(x[0]))]
    print(aligned(["factor set", "tokens", "references", *KINDS], rows))
    Path(args.json).write_text(json.dumps({"source": args.ruler_json, "misses": table,
                                           "command": " ".join(["python"] + sys.argv)}, indent=1) + "\n")


if __name__ == "__main__":
    main()
