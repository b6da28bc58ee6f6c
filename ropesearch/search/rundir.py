"""A search's run directory: config, history.jsonl, checkpoint, best.json. Every write is atomic."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

from ropesearch.errors import RopesearchError
from ropesearch.export.factor_file import atomic_write_text, save_factors


class RunDir:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    config_file = property(lambda self: self.path / "config.json")
    history_file = property(lambda self: self.path / "history.jsonl")
    checkpoint_file = property(lambda self: self.path / "checkpoint.pkl")
    best_file = property(lambda self: self.path / "best.json")
    progress_file = property(lambda self: self.path / "progress.json")

    def start(self, config: dict, resume: bool) -> dict | None:
        """Create the folder, or on resume check the config; returns the checkpoint state if resuming."""
        if resume:
            if not self.config_file.is_file():
                raise RopesearchError(f"{self.path} holds no search to resume (no config.json)")
            saved = json.loads(self.config_file.read_text())
            differences = [k for k in config if k not in ("resumed",) and saved.get(k) != config[k]]
            if differences:
                key = differences[0]
                raise RopesearchError(
                    f"cannot resume {self.path}: {key} was {saved.get(key)!r}, now {config[key]!r}; "
                    "resume with the same settings or start a new --out"
                )
            return self.load_checkpoint()
        if self.path.exists() and any(self.path.iterdir()):
            raise RopesearchError(f"run directory {self.path} is not empty: pass --resume to continue it, or another --out")
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.config_file, json.dumps(config, indent=2) + "\n")
        self.history_file.touch()
        return None

    def load_checkpoint(self) -> dict | None:
        if not self.checkpoint_file.is_file():
            return None
        with open(self.checkpoint_file, "rb") as handle:
            state = pickle.load(handle)
        self._truncate_history(state["history_lines"])
        return state

    def _truncate_history(self, lines: int) -> None:
        """Drop history written after the last checkpoint (a generation the kill interrupted)."""
        kept = self.history_file.read_text().splitlines(keepends=True)[:lines] if self.history_file.exists() else []
        atomic_write_text(self.history_file, "".join(kept))

    def history_lines(self) -> int:
        with open(self.history_file) as handle:
            return sum(1 for _ in handle)

    def append_history(self, records: list[dict]) -> None:
        with open(self.history_file, "a") as handle:
            for record in records:
                handle.write(json.dumps(record) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def save_checkpoint(self, state: dict) -> None:
        tmp = self.checkpoint_file.with_suffix(".tmp")
        with open(tmp, "wb") as handle:
            pickle.dump(state, handle)
        os.replace(tmp, self.checkpoint_file)

    def save_progress(self, progress: list[dict]) -> None:
        """Best-so-far per generation (evaluations, seconds), readable without unpickling the checkpoint."""
        atomic_write_text(self.progress_file, json.dumps(progress, indent=1) + "\n")

    def save_best(self, factors, provenance: dict, monotone: bool) -> None:
        save_factors(factors, self.best_file, provenance=provenance, monotone=monotone)

    def history(self) -> list[dict]:
        return [json.loads(line) for line in self.history_file.read_text().splitlines() if line.strip()]
