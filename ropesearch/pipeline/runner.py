"""`ropesearch run PLAN`: carry out a plan's stages in order, each in its own folder, resumable.

A stage that completes writes `done.json` (what it produced, see records.py); on --resume completed
stages are skipped and their outputs restored and checked, an interrupted search or fine-tuning continues from
its own checkpoint, and a failing stage leaves the earlier ones as they are.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

from ropesearch.errors import RopesearchError
from ropesearch.lock import LOCK_NAME, DirectoryLock
from ropesearch.validate import ListOf, MapOf, check_model_folder, check_output, conform, read_json
from ropesearch.export.factor_file import load_factors
from ropesearch.own_files import atomic_write_text
from ropesearch.pipeline.plan import Plan, load_plan
from ropesearch.pipeline.records import check_record, read_record, write_record
from ropesearch.pipeline.stages import STAGES
from ropesearch.rope import RopeFactors
from ropesearch.data import load_documents, split_holdout
from ropesearch.models import load_model, load_tokenizer, resolve_model


class Pipeline:
    """Holds the current model (a spec or a fine-tuned folder) and factors between stages."""

    def __init__(self, plan: Plan, out: str | Path, log=print):
        self.plan = plan
        self.out = Path(out)
        self.log = log
        self.model_spec = plan.model
        self.factors_file: Path | None = None
        self._loaded: tuple | None = None  # (spec, model, tokenizer)
        self._documents: dict[str, list] = {}  # data spec -> its documents
        self.outputs: dict[str, dict] = {}
        self.search_dirs: list[Path] = []  # run folders of the search stages so far
        self.finetuned_documents: list[str] = []  # documents the fine-tuning stages read

    # ---- shared helpers -------------------------------------------------------------------
    @property
    def factors(self) -> RopeFactors:
        return load_factors(self.factors_file)

    def loaded(self, spec: str | None = None):
        """(model, tokenizer) of `spec` (default: the current model), loaded once."""
        spec = spec or self.model_spec
        if self._loaded is None or self._loaded[0] != spec:
            self._loaded = None  # free the previous one first
            ref = resolve_model(spec)
            self._loaded = (spec, load_model(ref, device=self.plan.device), load_tokenizer(ref))
        return self._loaded[1], self._loaded[2]

    def unload(self) -> None:
        """Free the loaded model (a stage about to load its own copy)."""
        self._loaded = None

    def documents(self, role: str):
        """The documents a stage reads: with a holdout, search and fine-tuning get the part that is
        not held out, evaluation the held-out part (of the same data; other data is used whole)."""
        spec = self.plan.data[role]
        if spec not in self._documents:  # read once per run: several stages (and the checks) use them
            self._documents[spec] = load_documents(spec)
        documents = self._documents[spec]
        holdout = self.plan.holdout
        if holdout is None:
            return documents
        used, held_out = split_holdout(documents, holdout.fraction, holdout.seed)
        if role != "evaluate":
            return used
        trained_on = {self.plan.data["search"], self.plan.data["finetune"]}
        return held_out if spec in trained_on else documents

    # ---- driver -------------------------------------------------------------------------------
    def _apply(self, outputs: dict) -> None:
        if outputs.get("search_dir"):
            self.search_dirs.append(Path(outputs["search_dir"]))
        self.finetuned_documents.extend(outputs.get("documents", []))
        if outputs.get("model"):
            self.model_spec = outputs["model"]
        if outputs.get("factors"):
            self.factors_file = Path(outputs["factors"])

    def _check_unchanged(self, before: dict, now: dict) -> None:
        """Completed stages (and the model) must be as they were; later stages may be fixed."""
        if before["model"] != now["model"]:
            raise RopesearchError(f"the plan's model changed since {self.out} was started: resume with the same one")
        for key in ("pack", "holdout"):  # they decide what every completed stage read
            if before.get(key) != now.get(key) and (self.out / self.plan.stages[0].name / "done.json").is_file():
                raise RopesearchError(f"the plan's {key} changed since {self.out} was started: resume with the same "
                                      f"{key}, or start a new --out")
        for index, stage in enumerate(self.plan.stages):
            if not (self.out / stage.name / "done.json").is_file():
                break
            if index >= len(before["stages"]) or not _same_stage(before["stages"][index], now["stages"][index]):
                raise RopesearchError(f"completed stage {stage.name} is not in the plan as it was: "
                                      "resume with its settings unchanged, or start a new --out")

    def check_inputs(self) -> None:
        """The model and local data exist and read as they should, before anything is written."""
        ref = resolve_model(self.plan.model, fetch=False)
        check_model_folder(ref.path)
        inputs = {"the model": ref.path if Path(ref.path).exists() else None}
        for role, spec in self.plan.data.items():
            path = Path(spec).expanduser()
            if spec != "builtin" and (path.exists() or spec.startswith((".", "/", "~")) or path.suffix):
                # missing, empty or binary documents fail here, not at their stage
                self._documents[spec] = load_documents(spec)
                inputs[f"the {role} data"] = spec
        if self.plan.holdout is not None:  # the split must leave documents on both sides
            for role in ("search", "finetune"):
                self.documents(role)
        check_output(self.out, inputs)

    def run(self, resume: bool = False) -> dict[str, dict]:
        used = self.out.exists() and any(p.name != LOCK_NAME for p in self.out.iterdir())
        if used and not resume:
            raise RopesearchError(f"run directory {self.out} is not empty: pass --resume to continue it, or another --out")
        if used and not (self.out / "plan.json").is_file():  # --resume of an empty folder just starts
            raise RopesearchError(f"{self.out} is not a plan's run directory (no plan.json): choose another --out")
        self.check_inputs()  # also: the run directory can be written
        self.out.mkdir(parents=True, exist_ok=True)
        with DirectoryLock(self.out):  # one writer per run directory, released by the OS if this process dies
            return self._run(resume)

    def describe(self) -> dict:
        """The plan as its run directory records it (plan.json), in JSON types."""
        from dataclasses import asdict

        described = {"name": self.plan.name, "model": self.plan.model, "data": self.plan.data,
                     # where the scoring runs (Ray workers) may change between sessions: results do not depend on it
                     "stages": [{s.kind: {k: v for k, v in asdict(s.settings).items()
                                          if k not in STAGES[s.kind].placement}} for s in self.plan.stages]}
        if self.plan.pack or self.plan.holdout:  # what every stage reads (absent: off, as in older copies)
            described |= {"pack": self.plan.pack, "holdout": self.plan.holdout and asdict(self.plan.holdout)}
        return json.loads(json.dumps(described))

    def _run(self, resume: bool) -> dict[str, dict]:
        described = self.describe()
        plan_copy = self.out / "plan.json"
        if resume and plan_copy.is_file():
            fix = f"restore it, or start a new --out instead of {self.out}"
            saved = read_json(plan_copy, "the plan copy", fix, expect=dict)
            conform(saved, PLAN_COPY, f"the plan copy {plan_copy}", fix)
            self._check_unchanged(saved, described)
        atomic_write_text(plan_copy, json.dumps(described, indent=1) + "\n")
        total = len(self.plan.stages)
        for number, stage in enumerate(self.plan.stages, 1):
            folder = self.out / stage.name
            done = folder / "done.json"
            if done.exists() or done.is_symlink():  # anything there is read as the record (a FIFO: one line)
                kind = STAGES[stage.kind]
                record = read_record(done, self.out, stage.name)
                if kind.restore is not None:
                    record = kind.restore(self, folder, record, lambda r: check_record(done, self.out, stage.name, r))
                outputs = record["outputs"]
                if record["legacy"]:
                    write_record(done, self.out, outputs, record["seconds"])
                    record = read_record(done, self.out, stage.name)
                check_record(done, self.out, stage.name, record)
                self._apply(outputs)
                self.outputs[stage.name] = outputs
                self.log(f"[{number}/{total}] {stage.name}: done earlier, skipped")
                if kind.skipped is not None:
                    kind.skipped(self, outputs)  # e.g. the result again
                continue
            self.log(f"[{number}/{total}] {stage.name}")
            folder.mkdir(parents=True, exist_ok=True)
            # seconds of earlier, interrupted sessions of this stage count too
            spent_file = folder / "spent.json"
            spent = read_json(spent_file, "time record", "remove it") if spent_file.is_file() else {}
            earlier = float(spent.get("seconds", 0.0)) if isinstance(spent, dict) else 0.0
            started = time.perf_counter()
            try:
                outputs = STAGES[stage.kind].run(self, stage, folder)
            except RopesearchError as exc:
                raise RopesearchError(f"stage {stage.name} failed: {exc} (earlier stages are kept in {self.out}; "
                                      "fix it and run again with --resume)") from None
            finally:
                seconds = round(earlier + time.perf_counter() - started, 2)
                atomic_write_text(spent_file, json.dumps({"seconds": seconds}) + "\n")
            self._apply(outputs)
            self.outputs[stage.name] = outputs
            write_record(done, self.out, outputs, seconds)
        return self.outputs


# what a resume reads of plan.json (the stages as {kind: settings})
PLAN_COPY = {"model": str, "stages": ListOf(MapOf(dict, nonempty=True)), "pack?": (bool, None), "holdout?": (dict, None)}


def _same_stage(before: dict, now: dict) -> bool:
    """A stage as the plan copy recorded it and as the plan gives it now. A setting added to
    ropesearch after the run started is absent from the copy: it matches when set off (null,
    false or empty), which is how that run behaved."""
    if before.keys() != now.keys():
        return False
    for kind, settings in now.items():
        old = before[kind]
        if not isinstance(old, dict) or not isinstance(settings, dict):
            return old == settings
        added = set(settings) - set(old)
        off = lambda v: v is None or v is False or (type(v) in (list, dict) and not v)  # noqa: E731 (0 is a value)
        if set(old) - set(settings) or not all(off(settings[k]) for k in added):
            return False
        if any(old[k] != settings[k] for k in old):
            return False
    return True


def summary(outputs: dict[str, dict]) -> list[str]:
    """One line per stage of `run_plan`'s outputs saying what it produced, numbers rounded."""
    return [f"{stage}: {_produced(stage, values)}" for stage, values in outputs.items()]


def _produced(stage: str, outputs: dict) -> str:
    kind = STAGES.get(stage.split("-", 1)[-1])  # stage folders are NN-kind
    if kind is not None and kind.produced is not None:
        return kind.produced(outputs)
    shown = ", ".join(f"{key} {value}" for key, value in outputs.items() if value not in (None, {}, [], ""))
    return shown or "done"


def run_plan(plan: Plan | str | Path, out: str | Path | None = None, resume: bool = False, log=print) -> dict:
    """`ropesearch run`: returns each stage's outputs."""
    plan = plan if isinstance(plan, Plan) else load_plan(plan)
    return Pipeline(plan, out or Path("runs") / plan.name, log=log).run(resume=resume)
