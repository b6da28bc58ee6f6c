"""A search's run directory: config, history.jsonl, checkpoint, best.json. Every write is atomic.

    config.json        the settings and a fingerprint of the inputs (checked on --resume)
    history.jsonl      one line per scored candidate
    checkpoint.json    the search state after the last finished generation: data only, never
    checkpoint-gN.npz  a pickle (no file of a run directory is ever executed when read); with
                       the history's record count and checksum, so truncation or a mismatch
                       between them is named instead of silently restarting or losing records
    best.json, progress.json
    .lock              held by the one process that writes the run

`prepare()` checks the folder and takes the lock before anything is loaded or written;
`start()` then writes the config (a new run) or checks it (--resume).
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from ropesearch.errors import RopesearchError
from ropesearch.export.factor_file import save_factors
from ropesearch.own_files import atomic_write_bytes, atomic_write_text
from ropesearch.lock import LOCK_NAME, DirectoryLock
from ropesearch.own_files import append_own, refuse_links
from ropesearch.search.checkpoint import check_arrays, check_state
from ropesearch.validate import damaged, read_bytes, read_json, require, writable_folder

CHECKPOINT_FORMAT = "ropesearch/checkpoint@1"
NEW_RUN = "start a new run with another --out (this one's best.json and history.jsonl stay readable)"

# what each fingerprint entry is, for the message that names a changed input
# the files of a run, for the message that names one that is a link
RUN_FILES = {"config.json": "the config", "history.jsonl": "the history", "checkpoint.json": "the checkpoint",
             "best.json": "the best factors", "progress.json": "the progress record"}
INPUT_NAMES = {"weights": "the model weights", "model_config": "the model config (config.json)",
               "tokenizer": "the tokenizer", "data": "the search windows (data)",
               "space": "the search space", "seed": "the seed"}


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class RunDir:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.lock = DirectoryLock(self.path)
        self._prepared: bool | None = None  # the `resume` prepare() ran with
        self._created: list[Path] = []  # folders prepare() made (removed again if the run never starts)
        self._saved: dict | None = None
        self._saved_config: dict = {}  # config.json of the run to resume, read by prepare()
        self._cut: tuple[list[bytes], int] | None = None  # history lines read on resume, and how many to keep

    config_file = property(lambda self: self.path / "config.json")
    history_file = property(lambda self: self.path / "history.jsonl")
    checkpoint_file = property(lambda self: self.path / "checkpoint.json")
    legacy_checkpoint = property(lambda self: self.path / "checkpoint.pkl")
    best_file = property(lambda self: self.path / "best.json")
    progress_file = property(lambda self: self.path / "progress.json")

    # ---- before anything is loaded ------------------------------------------------------------
    def prepare(self, resume: bool) -> None:
        """Check the folder can take this run (or holds one to resume, undamaged) and lock it."""
        if self._prepared is not None:
            return
        if self.path.exists() and not self.path.is_dir():
            raise RopesearchError(f"--out {self.path} is a file, not a run directory")
        if resume:
            if not self.config_file.is_file():
                raise RopesearchError(f"{self.path} holds no search to resume (no config.json): leave out --resume "
                                      "to start one")
            writable_folder(self.path)
            self.lock.acquire()
            try:
                refuse_links(self.path, RUN_FILES | {p.name: "the search state" for p in
                                                     self.path.glob("checkpoint-g*.npz")})
                self._saved_config = read_json(self.config_file, f"cannot resume {self.path}: its config", NEW_RUN,
                                               expect=dict)
                self._saved = self._read_checkpoint()
            except BaseException:
                self.lock.release()
                raise
        else:
            if self.path.is_dir() and any(p.name != LOCK_NAME for p in self.path.iterdir()):
                raise RopesearchError(f"run directory {self.path} is not empty: pass --resume to continue it, "
                                      "or another --out")
            writable_folder(self.path)
            missing = [p for p in [self.path, *self.path.parents] if not p.exists()]
            self.path.mkdir(parents=True, exist_ok=True)
            self._created = missing
            self.lock.acquire()
            # another process may have started a run here between the check and the lock
            if self.config_file.exists():
                self.release()
                raise RopesearchError(f"run directory {self.path} is not empty: pass --resume to continue it, "
                                      "or another --out")
        self._prepared = resume

    def release(self) -> None:
        self.lock.release()

    @contextmanager
    def opened(self, resume: bool):
        """prepare(), then release the lock at the end; abandon() a new run that fails before it starts."""
        self.prepare(resume)
        try:
            yield self
        except BaseException:
            self.abandon()
            raise
        finally:
            self.release()

    def abandon(self) -> None:
        """The run never started (bad input found after prepare): remove only what prepare() made."""
        if self._prepared is False and not self.config_file.exists():
            (self.path / LOCK_NAME).unlink(missing_ok=True)
            for folder in self._created:  # deepest first
                try:
                    folder.rmdir()
                except OSError:
                    break
        self.release()

    # ---- config and inputs ---------------------------------------------------------------------
    def start(self, config: dict, resume: bool) -> dict | None:
        """Write the config of a new run, or check it on resume; returns the checkpoint state if resuming."""
        self.prepare(resume)
        if not resume:
            atomic_write_text(self.config_file, json.dumps(config, indent=2) + "\n")
            append_own(self.history_file, b"", "the history")
            return None
        saved = self._saved_config
        inputs = config.get("inputs") or {}
        saved_inputs = require(saved, "inputs", (dict, type(None)), f"cannot resume {self.path}: its config "
                               f"{self.config_file}", NEW_RUN, default=None)
        # where the weights are hashed, the model's name may change (a plan's run directory moved with
        # its fine-tuned model): the fingerprint says whether it is the same model
        named = ("model",) if isinstance(saved_inputs, dict) and "weights" in saved_inputs and "weights" in inputs else ()
        differences = [k for k in config if k not in ("resumed", "inputs", *named) and saved.get(k) != config[k]]
        if differences:
            key = differences[0]
            raise RopesearchError(
                f"cannot resume {self.path}: {key} was {saved.get(key)!r}, now {config[key]!r}; "
                "resume with the same settings or start a new --out"
            )
        if inputs and saved_inputs is None:
            raise RopesearchError(f"cannot resume {self.path}: its config.json records no fingerprint of its "
                                  f"inputs (an older ropesearch wrote it); {NEW_RUN}")
        for key, value in inputs.items():
            if key not in saved_inputs:  # e.g. a run from before whole-file weight hashes: unverifiable
                raise RopesearchError(
                    f"cannot resume {self.path}: its config.json records no fingerprint of {INPUT_NAMES.get(key, key)} "
                    f"(an older ropesearch wrote it), so a change to them cannot be ruled out; {NEW_RUN}")
            if saved_inputs.get(key) != value:
                raise RopesearchError(
                    f"cannot resume {self.path}: {INPUT_NAMES.get(key, key)} changed since the run started "
                    f"(fingerprint {saved_inputs.get(key)}, now {value}); resume with the same inputs, or {NEW_RUN}")
        if self._cut is not None and len(self._cut[0]) > self._cut[1]:
            # records of the generation a kill interrupted: that generation is scored again
            atomic_write_bytes(self.history_file, b"".join(self._cut[0][: self._cut[1]]))
        return self._saved

    # ---- checkpoint -----------------------------------------------------------------------------
    def _history_bytes(self) -> list[bytes]:
        if not self.history_file.exists():
            return []
        return read_bytes(self.history_file, f"cannot resume {self.path}: its history", NEW_RUN).splitlines(keepends=True)

    def _read_checkpoint(self) -> dict | None:
        """The saved state, checked against the history; the history cut back to the checkpoint."""
        lines = self._history_bytes()
        if not self.checkpoint_file.is_file():
            if self.legacy_checkpoint.is_file():
                raise RopesearchError(
                    f"cannot resume {self.path}: its checkpoint.pkl is a pickle from an older ropesearch, which "
                    f"is never loaded (unpickling runs code its author chose); {NEW_RUN}")
            if self.checkpoint_file.exists():  # a folder, a FIFO...: read_json names it
                read_json(self.checkpoint_file, f"cannot resume {self.path}: its checkpoint", NEW_RUN)
            if lines:
                raise RopesearchError(
                    f"cannot resume {self.path}: history.jsonl holds {len(lines)} records but checkpoint.json is "
                    f"missing, so the search state is lost; {NEW_RUN}")
            return None  # killed before the first generation finished: start from generation 0
        source = f"cannot resume {self.path}: its checkpoint {self.checkpoint_file}"
        state = read_json(self.checkpoint_file, f"cannot resume {self.path}: its checkpoint", NEW_RUN, expect=dict)
        if state.get("format") != CHECKPOINT_FORMAT:
            raise damaged(source, f"not a {CHECKPOINT_FORMAT} file", NEW_RUN)
        check_state(state, source, NEW_RUN)
        meta = state["algorithm"]
        arrays = {}
        if meta["arrays"]:
            arrays_file = self.path / Path(meta["arrays"]).name
            blob = read_bytes(arrays_file, f"cannot resume {self.path}: its checkpoint arrays", NEW_RUN)
            if _sha256(blob) != require(meta, "arrays_sha256", str, source, NEW_RUN):
                raise damaged(source, f"{arrays_file.name} does not match it (checksum)", NEW_RUN)
            try:
                with np.load(io.BytesIO(blob), allow_pickle=False) as npz:
                    arrays = {key: npz[key] for key in npz.files}
            except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
                raise damaged(source, f"{arrays_file.name} is not a numpy archive of numbers: {exc}", NEW_RUN) from None
        check_arrays(arrays, meta["initialized"], f"{source} ({meta['arrays'] or 'no arrays'})", NEW_RUN)
        expected, checksum = state["history_lines"], state["history_sha256"]
        complete = [line for line in lines if line.endswith(b"\n")]
        if len(complete) < expected:
            raise RopesearchError(
                f"cannot resume {self.path}: history.jsonl is truncated ({len(complete)} complete records, the "
                f"checkpoint of generation {state['generation'] - 1} counts {expected}); restore the file, or {NEW_RUN}")
        if _sha256(b"".join(complete[:expected])) != checksum:
            raise RopesearchError(
                f"cannot resume {self.path}: history.jsonl does not match checkpoint.json (its first {expected} "
                f"records were changed); restore the file, or {NEW_RUN}")
        self._cut = (lines, expected)
        state["algorithm"] = {"meta": meta, "arrays": arrays}
        return state

    def save_checkpoint(self, state: dict, arrays: dict[str, np.ndarray]) -> None:
        """`state`: JSON-able fields (with algorithm metadata); `arrays`: the population."""
        lines = self._history_bytes()
        name = ""
        if arrays:
            buffer = io.BytesIO()
            np.savez(buffer, **arrays)
            name = f"checkpoint-g{state['generation']}.npz"
            atomic_write_bytes(self.path / name, buffer.getvalue())
            state["algorithm"] |= {"arrays_sha256": _sha256(buffer.getvalue())}
        state["algorithm"] |= {"arrays": name}
        document = {"format": CHECKPOINT_FORMAT, **state, "history_lines": len(lines),
                    "history_sha256": _sha256(b"".join(lines))}
        atomic_write_text(self.checkpoint_file, json.dumps(document) + "\n")
        for old in self.path.glob("checkpoint-g*.npz"):
            if old.name != name:
                old.unlink(missing_ok=True)

    # ---- history, progress, best -----------------------------------------------------------
    def history_lines(self) -> int:
        with open(self.history_file) as handle:
            return sum(1 for _ in handle)

    def append_history(self, records: list[dict]) -> None:
        append_own(self.history_file, "".join(json.dumps(record) + "\n" for record in records).encode(), "the history")

    def save_progress(self, progress: list[dict]) -> None:
        """Best-so-far per generation (evaluations, seconds), readable without the checkpoint."""
        atomic_write_text(self.progress_file, json.dumps(progress, indent=1) + "\n")

    def save_best(self, factors, provenance: dict, monotone: bool) -> None:
        save_factors(factors, self.best_file, provenance=provenance, monotone=monotone)

    def history(self) -> list[dict]:
        return [json.loads(line) for line in self.history_file.read_text().splitlines() if line.strip()]
