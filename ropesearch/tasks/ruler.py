"""RULER-style synthetic long-context tasks, generated offline at an exact length in tokens.

The synthetic families of RULER (Hsieh et al., 2024, "RULER: What's the Real Context Size of
Your Long-Context Language Models?"), following its task definitions and prompts: needle in a
haystack (single, multi-key, multi-value, multi-query; noise, essay or needle haystacks; word,
number or UUID keys and values), variable tracking, common-words and frequent-words
extraction. The essay haystack is the user's documents (`--data`, default `builtin`).

Lengths follow RULER's convention: a sample of length L is a prompt (the task, then the answer
prefix the model continues) of exactly L - max_new_tokens tokens as the model reads it (a BOS
the tokenizer adds included), so prompt plus answer fit in L. Every sample is generated from
its own seed (seed, the task's seed key, length, index): any one reproduces alone, and adding a
task changes no other task's samples.

Scoring is RULER's: string_match_all (the share of the references found in the output, case
insensitive) for every synthetic task; string_match_part (any reference found) is there for
tasks that define it.
"""

from __future__ import annotations

import itertools
import json
import re
import string
import uuid
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import numpy as np

from ropesearch.errors import RopesearchError
from ropesearch.data import load_documents

WORDS_FILE = Path(__file__).resolve().parents[1] / "assets" / "ruler" / "words.json"
NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
NEEDLE = "One of the special magic {kind} for {key} is: {value}."
NIAH_HEAD = ("Some special magic {kinds} are hidden within the following text. Make sure to memorize it. "
             "I will quiz you about the {kinds} afterwards.\n")
NIAH_TAIL = ("\nWhat are all the special magic {kinds} for {query} mentioned in the provided text? "
             "The special magic {kinds} for {query} mentioned in the provided text are")
VT_HEAD = "Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n"
VT_TAIL = ("\nQuestion: Find all variables that are assigned the value {value} in the text above. Answer: According "
           "to the chain(s) of variable assignment in the text above, {count} variables are assigned the value "
           "{value}, they are: ")
CWE_HEAD = ("Below is a numbered list of words. In these words, some appear more often than others. "
            "Memorize the ones that appear most often.\n")
CWE_TAIL = ("\nQuestion: What are the {count} most common words in the above list? "
            "Answer: The top {count} words that appear most often in the list are:")
FWE_HEAD = ("Read the following coded text and track the frequency of each coded word. Find the three most "
            "frequently appeared coded words. ")
FWE_TAIL = ("\nQuestion: Do not provide any explanation. Please ignore the dots '....'. What are the three most "
            "frequently appeared words in the above coded text? Answer: According to the coded text above, "
            "the three most frequently appeared words are:")
DEPTHS = np.round(np.linspace(0, 100, num=40)).astype(int) / 100  # RULER's 40 needle depths


@dataclass(frozen=True)
class TaskSpec:
    """One RULER task: its family (a key of FAMILIES: the generator), answer budget, metric and the
    family's options. `seed_key` picks its samples' random streams; left out, it is derived from
    the task's name (`seed_key_of`), so adding or reordering tasks changes no other task's samples."""

    family: str  # niah, vt, cwe, fwe
    max_new_tokens: int
    metric: str = "all"  # all: string_match_all; part: string_match_part
    options: dict = field(default_factory=dict)
    seed_key: int | None = None


def _niah(haystack: str, key: str, value: str, keys: int = 1, values: int = 1, queries: int = 1,
          seed_key: int | None = None) -> TaskSpec:
    return TaskSpec("niah", 128, options=dict(haystack=haystack, key=key, value=value, keys=max(keys, queries),
                                              values=values, queries=queries), seed_key=seed_key)


# RULER's synthetic suite (scripts/synthetic.yaml, and the budgets of new tokens of its constants).
# To add a task: one entry here (and, for a new kind of prompt, a generator in FAMILIES below).
# The seed keys of these eleven are the positions they have always had (0-10), so every sample,
# and every committed or resumed RULER result, stays what it was; a new task leaves seed_key out.
TASKS: dict[str, TaskSpec] = {
    "niah_single_1": _niah("noise", "words", "numbers", seed_key=0),
    "niah_single_2": _niah("essay", "words", "numbers", seed_key=1),
    "niah_single_3": _niah("essay", "words", "uuids", seed_key=2),
    "niah_multikey_1": _niah("essay", "words", "numbers", keys=4, seed_key=3),
    "niah_multikey_2": _niah("needle", "words", "numbers", seed_key=4),
    "niah_multikey_3": _niah("needle", "uuids", "uuids", seed_key=5),
    "niah_multivalue": _niah("essay", "words", "numbers", values=4, seed_key=6),
    "niah_multiquery": _niah("essay", "words", "numbers", queries=4, seed_key=7),
    "vt": TaskSpec("vt", 30, options=dict(chains=1, hops=4), seed_key=8),
    "cwe": TaskSpec("cwe", 120, options=dict(common=10, common_repeats=30, rare_repeats=3), seed_key=9),
    "fwe": TaskSpec("fwe", 50, options=dict(alpha=2.0, word_length=6), seed_key=10),
}


def seed_key_of(task: str) -> int:
    """The number a task's samples are seeded with: its spec's seed_key, else one from its name
    (CRC-32 of the name, offset past the shipped keys): never from its place in TASKS."""
    key = TASKS[task].seed_key
    return key if key is not None else (1 << 32) + zlib.crc32(task.encode("utf-8"))


MAX_LENGTH = 1 << 24  # 16M tokens, 8x the paper's 2048k: a prompt is held as text, and 16M tokens is ~70 MB of it


def check_lengths(lengths: Sequence[int]) -> list[int]:
    """RULER lengths this suite builds prompts for."""
    for length in lengths:
        if length > MAX_LENGTH:
            raise RopesearchError(f"--lengths: {length} tokens is past the longest RULER prompt built here "
                                  f"({MAX_LENGTH} tokens): give shorter lengths")
    return list(lengths)


def answer_cap(cap: int | None, tasks: Sequence[str]) -> int | None:
    """--max-new-tokens as it acts on these tasks: one at or above every task's answer budget caps
    nothing, and is the same as none."""
    return None if cap is None or cap >= max(TASKS[task].max_new_tokens for task in tasks) else cap


def parse_tasks(text: str | Sequence[str] | None) -> list[str]:
    """`all` (or nothing), or comma-separated names of TASKS."""
    names = list(TASKS) if text in (None, "", "all") else (
        [t.strip() for t in text.split(",") if t.strip()] if isinstance(text, str) else list(text))
    unknown = [t for t in names if t not in TASKS]
    if unknown or not names:
        raise RopesearchError(f"--tasks: unknown RULER task {unknown[0] if unknown else text!r}; choose from all, "
                              + ", ".join(TASKS))
    return list(dict.fromkeys(names))  # a task named twice runs (and counts in the average) once


@dataclass(frozen=True)
class RulerSample:
    task: str
    length: int
    index: int
    prompt: str  # the whole input, answer prefix included: the model continues it
    answers: list[str]
    max_new_tokens: int
    metric: str
    prompt_tokens: int  # as the model reads it (special tokens the tokenizer adds included)

    def to_json(self) -> dict:
        return {"task": self.task, "length": self.length, "index": self.index, "prompt": self.prompt,
                "answers": self.answers, "max_new_tokens": self.max_new_tokens, "metric": self.metric,
                "prompt_tokens": self.prompt_tokens}


# ---------------------------------------------------------------- scoring (RULER's metrics)

def postprocess(prediction: str) -> str:
    """RULER's clean-up of a generated answer: control characters become newlines, ends stripped."""
    return re.sub(r"[\x00-\x1f]", "\n", prediction.strip()).strip()


def string_match_all(prediction: str, references: Sequence[str]) -> float:
    text = prediction.lower()
    return sum(r.lower() in text for r in references) / len(references)


def string_match_part(prediction: str, references: Sequence[str]) -> float:
    text = prediction.lower()
    return float(max(r.lower() in text for r in references))


METRICS: dict[str, Callable[[str, Sequence[str]], float]] = {"all": string_match_all, "part": string_match_part}


def score(metric: str, prediction: str, references: Sequence[str]) -> float:
    return METRICS[metric](postprocess(prediction), references)


# ---------------------------------------------------------------- words

@cache
def _word_lists() -> dict[str, list[str]]:
    data = json.loads(WORDS_FILE.read_text())
    return {k: data[k] for k in ("nouns", "adjectives", "verbs")}


@cache
def _cwe_words() -> list[str]:
    lists = _word_lists()
    return sorted(set(lists["nouns"] + lists["adjectives"] + lists["verbs"]))


def _random_values(rng: np.random.Generator, kind: str, count: int) -> list[str]:
    if kind == "numbers":  # seven digits, as RULER
        return [str(v) for v in rng.integers(1_000_000, 10_000_000, size=count)]
    if kind == "words":  # adjective-noun, as RULER
        lists = _word_lists()
        adjectives = rng.integers(len(lists["adjectives"]), size=count)
        nouns = rng.integers(len(lists["nouns"]), size=count)
        return [f"{lists['adjectives'][a]}-{lists['nouns'][n]}" for a, n in zip(adjectives, nouns)]
    raw = rng.bytes(16 * count)
    return [str(uuid.UUID(bytes=raw[16 * i:16 * i + 16], version=4)) for i in range(count)]


def _distinct(rng: np.random.Generator, kind: str, count: int, taken: set[str]) -> list[str]:
    """`count` new values of a kind, none in `taken` (which they join)."""
    out: list[str] = []
    while len(out) < count:
        for value in _random_values(rng, kind, count - len(out)):
            if value not in taken:
                taken.add(value)
                out.append(value)
    return out


# ---------------------------------------------------------------- exact-length assembly

TRIM_SPOTS = 6  # whole units inside the filler where _exact may drop a surplus token or two


@dataclass
class _Layout:
    """A prompt as head + filler units (with inserts between them) + tail; the filler is cut to fit."""

    head: str
    tail: str
    units: Callable[[int], list[str]]  # the first n filler units, each with its leading separator
    inserts: list[str] = field(default_factory=list)  # placed between filler units, in this order
    depths: list[float] = field(default_factory=list)  # where each insert goes (0 start, 1 end of the filler)
    head_tokens: int | None = None  # known already (a long generated head): not counted again
    cache_units: bool = True  # False for units that never repeat: counted in one pass, not remembered


class RulerSuite:
    """Generates RULER samples for one tokenizer; haystack essays from `data` (load_documents spec)."""

    def __init__(self, tokenizer, data: str = "builtin", text_field: str = "text", seed: int = 0):
        self.tokenizer, self.data, self.text_field, self.seed = tokenizer, data, text_field, seed
        self._counts: dict[str, int] = {}
        self._essay_cache: list[str] | None = None
        self._made: dict[tuple, list[RulerSample]] = {}
        self.special_tokens = len(tokenizer("a")["input_ids"]) - len(self._ids("a"))

    # token counting, cached per string (units repeat across samples)
    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False, return_attention_mask=False, verbose=False)["input_ids"]

    def _count(self, texts: Sequence[str], cache: bool = True) -> np.ndarray:
        """Tokens of each text; cache=False counts them in context in one pass over their join (texts that
        never repeat, e.g. distractor needles), each token going to the text where it starts."""
        if not cache:
            encoded = self.tokenizer("".join(texts), add_special_tokens=False, return_offsets_mapping=True,
                                     return_attention_mask=False, verbose=False)
            starts = np.fromiter((start for start, _ in encoded["offset_mapping"]), dtype=np.int64)
            ends = np.cumsum(np.fromiter((len(t) for t in texts), dtype=np.int64, count=len(texts)))
            return np.bincount(np.searchsorted(ends, starts, side="right"), minlength=len(texts))[:len(texts)]
        missing = list({t for t in texts if t not in self._counts})
        if missing:
            encoded = self.tokenizer(missing, add_special_tokens=False, return_attention_mask=False, verbose=False)
            self._counts.update((t, len(ids)) for t, ids in zip(missing, encoded["input_ids"]))
        return np.fromiter((self._counts[t] for t in texts), dtype=np.int64, count=len(texts))

    def prompt_tokens(self, text: str) -> int:
        """Tokens the model reads for `text`: what lm-eval and generation feed it, special tokens included."""
        return len(self._ids(text)) + self.special_tokens

    def _essay_units(self) -> list[str]:
        if self._essay_cache is None:

            sentences: list[str] = []
            for document in load_documents(self.data, text_field=self.text_field):
                words = re.sub(r"\s+", " ", document.text).strip()
                for sentence in re.split(r"(?<=[.!?]) ", words):
                    parts = sentence.split(" ")  # long "sentences" (code, lists) in pieces of 40 words
                    sentences += [" " + " ".join(parts[i:i + 40]) for i in range(0, len(parts), 40)]
            if not sentences:
                raise RopesearchError(f"data {self.data} gives no text for the essay haystack")
            self._essay_cache = sentences
        return self._essay_cache

    def _essay(self, n: int) -> list[str]:
        units = self._essay_units()
        return [units[i % len(units)] for i in range(n)]  # RULER repeats the essays when too short

    def _room(self, layout: _Layout, budget: int, what: str, answer: int = 0) -> int:
        """Tokens left for the filler once head, inserts, tail and special tokens are counted (`answer`:
        the answer budget, to name the shortest length in an error)."""
        head = [] if layout.head_tokens is not None else [layout.head]
        fixed = self._count(head + [layout.tail] + layout.inserts).sum() + (layout.head_tokens or 0)
        room = budget - int(fixed) - self.special_tokens
        if room < 8:
            raise RopesearchError(f"{what}: too short for this task (needs a length of about "
                                  f"{budget - room + 8 + answer} tokens or more)")
        return room

    def _cut(self, units: Sequence[str], tokens: int, skip: int = 0) -> str:
        """The start of one of `units` that ends between two characters (a cut among one character's
        byte tokens decodes to U+FFFD, which the tokenizer reads as other tokens) and is `tokens`
        tokens read alone: the first unit that has such a cut after `skip` of them (another try picks
        another unit, whose neighbours merge otherwise), else the first unit's cut."""
        cuts = []
        for unit in units:
            offsets = self.tokenizer(unit, add_special_tokens=False, return_offsets_mapping=True,
                                     return_attention_mask=False, verbose=False)["offset_mapping"]
            if len(offsets) >= tokens:
                end = offsets[tokens - 1][1]
                if (len(offsets) == tokens or offsets[tokens][0] >= end) and len(self._ids(unit[:end])) == tokens:
                    if skip == 0:
                        return unit[:end]
                    skip -= 1
                cuts.append(unit[:end])
        return cuts[0] if cuts else ""

    def _fill(self, layout: _Layout, room: int, clean: bool = False, skip: int = 0,
              trim: tuple[int, int] = (0, 0)) -> str:
        """head + `room` tokens of filler (inserts at their depths, the last unit cut to fit) + tail;
        `clean` cuts between characters (text beyond ASCII: see _cut), else by decoding the tokens.
        `trim` = (n, at) then drops the last n tokens of one whole unit inside the filler (the at-th of
        a few spread over it), leaving the filler's end, and so its junction with the tail, as it was."""
        per_unit = max(1.0, float(self._count(layout.units(16), layout.cache_units).mean()))
        n = int(room / per_unit * 1.1) + 4
        units = layout.units(n)
        counts = self._count(units, layout.cache_units)
        while counts.sum() <= room:  # units shorter than the first: take more
            n = int(n * 1.5) + 2
            units = layout.units(n)
            counts = self._count(units, layout.cache_units)
        cumulative = np.cumsum(counts)
        whole = int(np.searchsorted(cumulative, room, side="right"))  # units that fit entirely
        left = room - (int(cumulative[whole - 1]) if whole else 0)
        if not left:
            partial = ""
        elif clean:
            partial = self._cut(layout.units(whole + 33)[whole:], left, skip)
        else:
            partial = self.tokenizer.decode(self._ids(units[whole])[:left])
        pieces = list(units[:whole])
        if trim[0] and whole:
            k = whole * (trim[1] + 1) // (TRIM_SPOTS + 1)
            pieces[k] = self.tokenizer.decode(self._ids(pieces[k])[:-trim[0]])
        slots = sorted(zip((int(round(d * whole)) for d in layout.depths), range(len(layout.inserts))), reverse=True)
        for slot, order in slots:
            pieces.insert(slot, layout.inserts[order])
        return layout.head + "".join(pieces) + partial + layout.tail

    def _exact(self, layout: _Layout, budget: int, what: str, text: str, got: int, answer: int = 0) -> str:
        """Refill until the whole prompt is `budget` tokens: counts of pieces add up exactly unless
        tokens merge across a boundary, which the next try corrects."""
        room = self._room(layout, budget, what, answer)
        over = None  # the try that overshot least: (tokens over, room, clean, skip)
        if got == budget:
            return text
        # cut by decoding first (every prompt of ASCII text, as made so far), then between characters
        for attempt in range(12):
            room += budget - got
            clean, skip = attempt >= 6, max(0, attempt - 6)
            text = self._fill(layout, room, clean=clean, skip=skip)
            got = self.prompt_tokens(text)
            if got == budget:
                return text
            if got > budget and (over is None or got - budget < over[0]):
                over = (got - budget, room, clean, skip)
        # the filler's end merges with the tail at every cut that would fit (Qwen2's tokenizer reads
        # ".\n" as one token, so room r gives budget - 1 and r + 1 budget + 1): keep an end that does
        # not merge and drop the surplus inside the filler instead (a token or two more where the
        # dropped end itself merged with the next unit)
        for at, extra in itertools.product(range(TRIM_SPOTS), range(3)) if over else ():
            text = self._fill(layout, over[1], clean=over[2], skip=over[3], trim=(over[0] + extra, at))
            got = self.prompt_tokens(text)
            if got == budget:
                return text
        raise RopesearchError(f"{what}: could not build a prompt of exactly {budget} tokens with this tokenizer "
                              f"(last try {got}): the haystack text of --data {self.data} does not cut to an exact "
                              "length here (characters of several tokens each, such as emoji, at every cut); "
                              "give other --data (e.g. builtin) or another length")

    # ------------------------------------------------------------ task families

    def _niah(self, rng, spec: TaskSpec, budget: int, what: str):
        o = spec.options
        kind = o["value"]
        taken: set[str] = set()
        keys = _distinct(rng, o["key"], o["keys"], taken)
        values = [_distinct(rng, kind, o["values"], taken) for _ in keys]
        needles = [NEEDLE.format(kind=kind, key=k, value=v) for k, vs in zip(keys, values) for v in vs]
        needles = [needles[i] for i in rng.permutation(len(needles))]
        queried = [int(i) for i in rng.choice(len(keys), size=o["queries"], replace=False)]
        answers = [v for i in queried for v in values[i]]
        query = (", ".join(keys[i] for i in queried[:-1]) + ", and " + keys[queried[-1]]) if len(queried) > 1 \
            else keys[queried[0]]
        single = o["queries"] * o["values"] == 1
        kinds = kind[:-1] if single else kind
        head, tail = NIAH_HEAD.format(kinds=kinds), NIAH_TAIL.format(kinds=kinds, query=query)
        if single:  # RULER's singular wording
            head = head.replace("Some", "A").replace("are hidden", "is hidden")
            tail = tail.replace("What are all", "What is").replace("mentioned in the provided text are",
                                                                   "mentioned in the provided text is")
        separator = " " if o["haystack"] == "essay" else "\n"
        if o["haystack"] == "noise":
            units = lambda n: ["\n" + NOISE] * n  # noqa: E731
        elif o["haystack"] == "essay":
            units = self._essay
        else:  # other needles with keys and values of their own
            stream: list[str] = []
            state = np.random.default_rng(rng.integers(1 << 62))

            def units(n):
                if len(stream) < n:
                    new_keys, new_values = _distinct(state, o["key"], n - len(stream), taken), \
                        _distinct(state, kind, n - len(stream), taken)
                    stream.extend("\n" + NEEDLE.format(kind=kind, key=k, value=v) for k, v in zip(new_keys, new_values))
                return stream[:n]
        depths = sorted(rng.choice(DEPTHS, size=len(needles), replace=False).tolist())
        layout = _Layout(head, tail, units, [separator + n for n in needles], depths,
                         cache_units=o["haystack"] != "needle")
        return layout, answers

    def _vt(self, rng, spec: TaskSpec, budget: int, what: str):
        def chain(state, hops):
            names = _distinct_names(state, hops + 1)
            value = str(int(state.integers(10_000, 100_000)))
            lines = [f"VAR {names[0]} = {value}"] + [f"VAR {names[j + 1]} = VAR {names[j]}" for j in range(hops)]
            return names, value, lines

        hops = spec.options["hops"]
        # the one-shot example RULER puts first: a short noise text with a chain of its own, and its answer
        names, value, lines = chain(rng, hops)
        example_noise = ["\n" + NOISE] * 8
        for at, line in zip(sorted(rng.choice(len(example_noise) + 1, size=len(lines), replace=False).tolist())[::-1],
                            lines[::-1]):
            example_noise.insert(at, "\n" + line)
        example = (VT_HEAD + "".join(example_noise).lstrip("\n") + VT_TAIL.format(value=value, count=hops + 1)
                   + " ".join(names) + "\n\n")
        names, value, lines = chain(rng, hops)
        head = example + VT_HEAD
        tail = VT_TAIL.format(value=value, count=hops + 1)
        depths = sorted(rng.choice(DEPTHS, size=len(lines), replace=False).tolist())
        layout = _Layout(head, tail, lambda n: ["\n" + NOISE] * n, ["\n" + line for line in lines], depths)
        return layout, names

    def _cwe(self, rng, spec: TaskSpec, budget: int, what: str):
        o = spec.options
        words = _cwe_words()
        order = rng.permutation(len(words))
        # RULER: below 4k tokens the words repeat 6 / 1 times and the example has 20 words (3 / 1)
        short = budget + spec.max_new_tokens < 4096
        common_repeats, rare_repeats = (6, 1) if short else (o["common_repeats"], o["rare_repeats"])
        shot_size, shot_common, shot_rare = (20, 3, 1) if short else (40, 10, 3)
        shuffle_seed = int(rng.integers(1 << 62))

        def listing(rare: int) -> tuple[list[str], list[str]]:
            chosen = [words[i] for i in order[:o["common"] + rare]]
            common, uncommon = chosen[:o["common"]], chosen[o["common"]:]
            entries = common * common_repeats + uncommon * rare_repeats
            entries = [entries[i] for i in np.random.default_rng(shuffle_seed).permutation(len(entries))]
            return [f"{i + 1}. {w}" if i == 0 else f" {i + 1}. {w}" for i, w in enumerate(entries)], common

        # the one-shot example RULER puts first, with its answer
        shot_words = [words[i] for i in rng.permutation(len(words))[:shot_size]]
        shot = shot_words[:o["common"]] * shot_common + shot_words[o["common"]:] * shot_rare
        shot = [shot[i] for i in rng.permutation(len(shot))]
        example = (CWE_HEAD + " ".join(f"{i + 1}. {w}" for i, w in enumerate(shot)) + CWE_TAIL.format(count=o["common"])
                   + " " + " ".join(f"{i + 1}. {w}" for i, w in enumerate(shot_words[:o["common"]])) + "\n")
        head, tail = example + CWE_HEAD, CWE_TAIL.format(count=o["common"])
        fixed = int(self._count([head, tail]).sum()) + self.special_tokens
        # the most rare words whose list fits with a margin (the margin is filled with words said once):
        # a list's tokens are those of its numbers " 12." plus its words " word", summed by prefix sums
        word_tokens = self._count([" " + w for w in words])[order]
        rare_sums = np.concatenate([[0], np.cumsum(word_tokens[o["common"]:])])
        entries_for = o["common"] * common_repeats + rare_repeats * np.arange(len(rare_sums))
        number_sums = np.concatenate([[0], np.cumsum(self._count([f"{i}." if i == 1 else f" {i}." for i in range(1, entries_for[-1] + 1)]))])
        totals = (fixed + number_sums[entries_for] + common_repeats * word_tokens[:o["common"]].sum()
                  + rare_repeats * rare_sums)
        low = int(np.searchsorted(totals, budget - 24, side="right")) - 1
        if low < 0:
            raise RopesearchError(f"{what}: too short for this task (needs a length of about "
                                  f"{int(totals[0]) + 24 + spec.max_new_tokens} tokens or more: this sample's "
                                  "words; other samples' a few more or fewer)")
        entries, common = listing(low)
        head_tokens = int(self._count([head])[0] + totals[low] - fixed)
        spare = [words[i] for i in order[o["common"] + low:]]
        head = head + "".join(entries)

        def units(n):
            start = len(entries) + 1
            return [f" {start + i}. {spare[i % len(spare)]}" for i in range(n)]
        return _Layout(head, tail, units, head_tokens=head_tokens), common

    def _fwe(self, rng, spec: TaskSpec, budget: int, what: str):
        from scipy.special import zeta

        o = spec.options
        size = max(16, budget // 50)  # RULER's vocabulary: a coded word per 50 tokens
        letters = np.array(list(string.ascii_lowercase))[rng.integers(26, size=(size * 2, o["word_length"]))]
        vocabulary = sorted({"".join(row) for row in letters})[:size]
        vocabulary = [vocabulary[i] for i in rng.permutation(len(vocabulary))]
        vocabulary[0] = "..."  # the most frequent "word" is noise, as RULER
        ranks = np.arange(1, len(vocabulary) + 1)
        share = ranks ** -o["alpha"] / zeta(o["alpha"])
        word_tokens = self._count([" " + w for w in vocabulary], cache=False)
        fixed = int(self._count([FWE_HEAD, FWE_TAIL]).sum()) + self.special_tokens

        def counts_for(total_words: int) -> np.ndarray:
            return (total_words * share).astype(int)

        low, high = 0, budget * 2
        while low < high:
            mid = (low + high + 1) // 2
            if fixed + int(counts_for(mid) @ word_tokens) <= budget - 24:
                low = mid
            else:
                high = mid - 1
        counts = counts_for(low)
        if counts[3] < 1:
            raise RopesearchError(f"{what}: too short for this task (its word frequencies need a longer length)")
        words = np.repeat(np.arange(len(vocabulary)), counts)
        words = words[rng.permutation(len(words))]
        text = "".join(" " + vocabulary[i] for i in words)  # the first word's space ends the head
        once = [w for w in vocabulary if w != "..."][::-1]  # the rarest words, said once more each
        head_tokens = int(self._count([FWE_HEAD.rstrip(" ")])[0] + counts @ word_tokens)
        return _Layout(FWE_HEAD.rstrip(" ") + text, FWE_TAIL, lambda n: [" " + once[i % len(once)] for i in range(n)],
                       head_tokens=head_tokens), vocabulary[1:4]

    # ------------------------------------------------------------ public

    def samples(self, task: str, length: int, count: int, first: int = 0) -> list[RulerSample]:
        """Samples `first` .. `first + count - 1` of a task at a length (each from its own seed); those
        of the latest length asked for are kept, so factor sets compared at one length share them."""
        key = (task, length, count, first)
        if key not in self._made:
            if any(k[1] != length for k in self._made):
                self._made.clear()
            self._made[key] = self._make(task, length, count, first)
        return self._made[key]

    def _make(self, task: str, length: int, count: int, first: int) -> list[RulerSample]:
        spec = TASKS[task]
        what = f"RULER task {task} at {length} tokens"
        budget = length - spec.max_new_tokens
        drafts = []
        for index in range(first, first + count):
            rng = np.random.default_rng([self.seed, seed_key_of(task), length, index])
            layout, answers = FAMILIES[spec.family](self, rng, spec, budget, what)
            room = self._room(layout, budget, what, spec.max_new_tokens)
            drafts.append((index, layout, answers, self._fill(layout, room)))
        # one batched tokenisation checks every draft (the tokenizer runs it on all cores)
        checked = self.tokenizer([d[3] for d in drafts], add_special_tokens=True, return_attention_mask=False,
                                 verbose=False)["input_ids"]
        return [RulerSample(task, length, index, self._exact(layout, budget, what, text, len(ids), spec.max_new_tokens),
                            list(answers),
                            spec.max_new_tokens, spec.metric, budget)
                for (index, layout, answers, text), ids in zip(drafts, checked)]

    def sample(self, task: str, length: int, index: int) -> RulerSample:
        return self.samples(task, length, 1, first=index)[0]

    # as PrefetchedSuite (ruler_prefetch), whose worker builds planned samples ahead and stops on exit
    def plan(self, requests: Iterable[tuple[str, int, int]]) -> None:
        """Nothing to do ahead here: samples are made when asked for."""

    def __enter__(self) -> RulerSuite:
        return self

    def __exit__(self, *exc) -> None:
        pass


# task family -> generator(suite, rng, spec, budget, what) -> (layout, answers): the kinds of prompt TASKS use
FAMILIES: dict[str, Callable] = {"niah": RulerSuite._niah, "vt": RulerSuite._vt, "cwe": RulerSuite._cwe,
                                 "fwe": RulerSuite._fwe}


def _distinct_names(rng: np.random.Generator, count: int) -> list[str]:
    names: list[str] = []
    while len(names) < count:  # five capital letters, as RULER's variable names
        name = "".join(rng.choice(list(string.ascii_uppercase), size=5))
        if name not in names:
            names.append(name)
    return names
