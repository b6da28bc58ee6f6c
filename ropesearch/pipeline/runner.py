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
from ropesearch.validate import ListOf, MapOf, conform, read_json
from ropesearch.export.factor_file import load_factors, save_factors
from ropesearch.own_files import atomic_write_bytes, atomic_write_text
from ropesearch.pipeline.plan import Plan, Stage
from ropesearch.pipeline.records import check_record, read_record, write_record
from ropesearch.rope import RopeFactors


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
        from ropesearch.models import load_model, load_tokenizer, resolve_model

        spec = spec or self.model_spec
        if self._loaded is None or self._loaded[0] != spec:
            self._loaded = None  # free the previous one first
            ref = resolve_model(spec)
            self._loaded = (spec, load_model(ref, device=self.plan.device), load_tokenizer(ref))
        return self._loaded[1], self._loaded[2]

    def documents(self, role: str):
        """The documents a stage reads: with a holdout, search and fine-tuning get the part that is
        not held out, evaluation the held-out part (of the same data; other data is used whole)."""
        from ropesearch.data import load_documents, split_holdout

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

    # ---- stages ------------------------------------------------------------------------
    def _search(self, stage: Stage, folder: Path) -> dict:
        from ropesearch.evaluate.workers import worker_options
        from ropesearch.search.session import SearchConfig, run_search

        settings = stage.settings
        reference = self.factors if settings.relative else None
        workers = worker_options(settings.workers, settings.ray_address, settings.gpus_per_worker)
        config = SearchConfig(self.model_spec, self.plan.data["search"], settings.target, space=settings.space,
                              objective=settings.objective, samples=settings.samples, seed=settings.seed,
                              max_evals=settings.max_evals, time_minutes=settings.time_minutes, reference=reference,
                              short_tolerance=settings.short_tolerance, pack=self.plan.pack,
                              documents=self.documents("search"), workers=workers)
        result = run_search(config, folder / "search", resume=(folder / "search" / "config.json").is_file(),
                            log=self.log, loaded=None if workers else self.loaded())  # workers load their own model
        from ropesearch.search.rundir import RunDir
        from ropesearch.search.screening import screen_rank_correlation

        rank = screen_rank_correlation(RunDir(folder / "search").history())
        if rank["pairs"]:
            shown = "n/a (fewer than 3)" if rank["spearman"] is None else f"{rank['spearman']:.2f} (Kendall {rank['kendall']:.2f})"
            self.log(f"screen vs full score over {rank['pairs']} candidates: Spearman {shown}")
        return {"factors": str(folder / "search" / "best.json"), "values": result.values,
                "search_dir": str(folder / "search"), "screen_rank": rank}

    def _finetune(self, stage: Stage, folder: Path) -> dict:
        import torch

        from ropesearch.data import tokenize_documents
        from ropesearch.export import apply_to_config
        from ropesearch.export.model_folder import save_model_folder
        from ropesearch.models import load_config, load_model, load_tokenizer, resolve_model
        from ropesearch.pipeline.finetune import Finetuner

        ref = resolve_model(self.model_spec)
        factors = self.factors
        self._loaded = None
        # float32 master weights; the forward runs under bf16 autocast on a GPU
        model = load_model(ref, dtype=torch.float32, device=self.plan.device)
        tokenizer = load_tokenizer(ref)
        documents = tokenize_documents(self.documents("finetune"), tokenizer)
        trainer = Finetuner(model, factors, documents, stage.settings, folder, eos_id=tokenizer.eos_token_id,
                            log=self.log)
        history = trainer.run()
        weights = trainer.full_state_dict()
        config = load_config(ref)
        apply_to_config(config, factors, allow_start_tokens=True)
        save_model_folder(model, tokenizer, config, folder / "model", state_dict=weights)
        save_factors(factors, folder / "model" / "ropesearch_factors.json", provenance={"finetuned": str(folder)})
        if stage.settings.trainable:  # the trained tensors alone: base model + this file = the fine-tuned model
            from safetensors.torch import save

            trained = {name: weights[name].contiguous() for name, parameter in model.named_parameters()
                       if parameter.requires_grad and name in weights}
            atomic_write_bytes(folder / "trained.safetensors", save(trained))
        atomic_write_text(folder / "history.json", json.dumps(history, indent=1) + "\n")
        return {"model": str(folder / "model"), "factors": str(folder / "model" / "ropesearch_factors.json"),
                "final_loss": history[-1]["loss"] if history else None,
                "documents": sorted(d.name for d in documents)}

    def _rebuild_finetuned(self, folder: Path, outputs: dict) -> None:
        """A completed fine-tuning stage whose model folder is gone (a run directory copied to a
        fresh machine without weights): rebuild it from the base model and trained.safetensors."""
        import torch
        from safetensors.torch import load_file

        from ropesearch.export import apply_to_config
        from ropesearch.export.model_folder import save_model_folder
        from ropesearch.models import load_config, load_model, load_tokenizer, resolve_model

        from ropesearch.validate import check_safetensors

        trained, target = folder / "trained.safetensors", folder / "model"
        again = "run the fine-tuning again (delete its done.json) or restore the folder"
        if Path(outputs.get("model") or target).resolve() != target.resolve():  # rebuilt only where it was written
            raise RopesearchError(f"{folder / 'done.json'} names model {outputs.get('model')!r}, not {target}: {again}")
        named = outputs.get("factors")
        if named and Path(named).resolve() != (target / "ropesearch_factors.json").resolve():
            raise RopesearchError(f"{folder / 'done.json'} names factors {named!r}, not the fine-tuned model's: {again}")
        outputs = outputs | {"model": str(target)}
        if not trained.is_file():
            raise RopesearchError(f"{target} is missing and {folder} has no trained.safetensors to rebuild "
                                  f"it from: {again}")
        check_safetensors(trained, "fine-tuned weights", again)
        self.log(f"rebuilding {target} from {self.model_spec} and {trained.name}")
        ref = resolve_model(self.model_spec)
        model = load_model(ref, dtype=torch.float32, device="cpu")
        tensors = load_file(trained)
        shapes = {name: tuple(p.shape) for name, p in model.named_parameters()}
        wrong = sorted(name for name, tensor in tensors.items() if shapes.get(name, tuple(tensor.shape)) != tuple(tensor.shape))
        missing = sorted(set(tensors) - set(shapes))
        if missing or wrong:
            name = (missing or wrong)[0]
            raise RopesearchError(f"{trained} holds {name!r}, which {self.model_spec} does not have"
                                  + (" in that shape" if not missing else "") + f": {again}")
        model.load_state_dict(tensors, strict=False)
        config = load_config(ref)
        saved = outputs.get("factors")
        factors = load_factors(saved) if saved and Path(saved).is_file() else self.factors
        apply_to_config(config, factors, allow_start_tokens=True)
        save_model_folder(model, load_tokenizer(ref), config, outputs["model"])
        save_factors(factors, Path(outputs["model"]) / "ropesearch_factors.json", provenance={"finetuned": str(folder)})

    def _recover_short(self, stage: Stage, folder: Path) -> dict:
        from ropesearch.search.session import SearchConfig, run_search
        from ropesearch.search.space import load_space

        settings = stage.settings
        factors = self.factors
        original = factors.base.original_context
        lengths = tuple(settings.lengths) or (original,)
        space = load_space(settings.space)
        # short factors only: no attention or n̂ genes (those are shared with the long regime)
        space = replace(space, factors=replace(space.factors, high=settings.high, critical_dimension=None),
                        attention_factor=None, start_tokens=None, seeds=())
        config = SearchConfig(self.model_spec, self.plan.data["search"], factors.target_context, space=space,
                              samples=settings.samples, seed=settings.seed, max_evals=settings.max_evals,
                              time_minutes=settings.time_minutes, reference=factors, short_lengths=lengths,
                              pack=self.plan.pack, documents=self.documents("search"))
        result = run_search(config, folder / "search", resume=(folder / "search" / "config.json").is_file(),
                            log=self.log, loaded=self.loaded())
        return {"factors": str(folder / "search" / "best.json"), "values": result.values,
                "search_dir": str(folder / "search")}

    def _export(self, stage: Stage, folder: Path) -> dict:
        from ropesearch.api import export

        written = {}
        for fmt in stage.settings.formats:
            written[fmt] = str(export(self.factors_file, self.model_spec, folder / fmt, fmt=fmt, overwrite=True,
                                      allow_start_tokens=True))
        return {"exports": written}

    def _evaluate(self, stage: Stage, folder: Path) -> dict:
        from ropesearch.evaluate.passkey import passkey_accuracy
        from ropesearch.evaluate.runs import (baseline_table, format_table, original_window_warnings, save_json,
                                              searched_documents, setup)
        from ropesearch.rope import make_factors

        settings = stage.settings
        factors = self.factors
        original = factors.base.original_context
        lengths = sorted(set(settings.lengths) or {original * 2**k for k in range(8)
                                                    if original * 2**k <= factors.target_context})
        data = self.plan.data["evaluate"]
        exclude = ()
        if settings.heldout and self.plan.holdout is None:
            # without a holdout split: leave out what the searches scored and fine-tuning read
            if data == self.plan.data["search"]:
                exclude = {name for run in self.search_dirs for name in searched_documents(run)}
            if data == self.plan.data["finetune"]:
                exclude = set(exclude) | set(self.finetuned_documents)
            exclude = sorted(exclude)
        tables, passkey = {}, {}
        scale = factors.target_context / original  # baselines: the found factors' scale at every length
        # the baselines on the model the plan started from; the found factors on the current model
        unscaled = ("none",) if settings.unscaled else ()
        for label, spec, methods, files in (("baselines", self.plan.model, unscaled + tuple(settings.methods), ()),
                                            ("found", self.model_spec, (), (str(self.factors_file),))):
            model, tokenizer = self.loaded(spec)
            run = setup(spec, data, max(lengths), samples=settings.samples, seed=settings.seed,
                        loaded=(model, tokenizer), exclude=exclude, pack=self.plan.pack,
                        documents=self.documents("evaluate"))
            baselines = label == "baselines"
            tables[label] = baseline_table(run, lengths, methods=methods, factor_files=files,
                                           scale=scale if settings.baseline_scale == "target" else None,
                                           per_length=settings.baseline_scale == "length",
                                           native=settings.native and baselines)
            if settings.passkey:
                sets = {m: None if m == "none" else make_factors(m, factors.base, scale) for m in methods}
                sets = sets if label == "baselines" else {"found": factors}
                for name, candidate in sets.items():
                    passkey[name] = passkey_accuracy(model, tokenizer, candidate, settings.passkey_lengths or lengths,
                                                     settings.passkey_depths,
                                                     settings.passkey_trials, settings.seed)
        if passkey:
            save_json({"passkey": passkey, "found_model": self.model_spec,
                       "baseline_scale": scale}, folder / "passkey.json")
        merged = dict(tables["baselines"])
        merged["ppl"] = {**tables["baselines"]["ppl"], "found": next(iter(tables["found"]["ppl"].values()))}
        merged["seconds"] = {**tables["baselines"]["seconds"], "found": next(iter(tables["found"]["seconds"].values()))}
        merged["scales"] = {**tables["baselines"]["scales"], "found": factors.scale}
        merged["original_window"] = {"found": next(iter(tables["found"].get("original_window", {}).values()), None)}
        if merged["original_window"]["found"] is None:
            del merged["original_window"]
        merged["found_model"] = self.model_spec
        path = save_json(merged, folder / "perplexity.json")
        self.log(format_table(merged))
        for warning in original_window_warnings(merged):
            self.log(warning)
        return {"table": str(path)}

    def _passkey(self, stage: Stage, folder: Path) -> dict:
        """The found model first, then each baseline on the starting model at the target's scale;
        every finished (length, depth) cell is saved, and a rerun keeps them."""
        from ropesearch.evaluate.passkey import passkey_accuracy, passkey_prompt
        from ropesearch.evaluate.runs import save_json
        from ropesearch.rope import make_factors

        settings = stage.settings
        factors = self.factors
        original = factors.base.original_context
        lengths = list(settings.lengths) or [original * 2**k for k in range(12) if original * 2**k <= factors.target_context]
        scale = factors.target_context / original
        path = folder / "passkey.json"
        header = {"found_model": self.model_spec, "baseline_scale": scale, "seed": settings.seed, "lengths": lengths}
        saved = read_json(path, "the passkey results so far", "remove it to start the stage again") \
            if path.is_file() else {}
        # found_model is not compared: the completed stages (checked) decide it, and its path moves
        # with a moved run directory
        changed = [k for k in header if k != "found_model" and saved and saved.get(k) != header[k]]
        if changed:
            raise RopesearchError(f"{path} was made with other settings ({', '.join(changed)}): "
                                  "restore them, or remove the file to start the stage again")
        results = dict(saved.get("passkey", {}))
        _, tokenizer = self.loaded()
        for length in lengths:  # a length too short for the prompt fails now, not after hours of longer ones
            passkey_prompt(tokenizer, length, 0.5, "12345")
        runs = [("found", self.model_spec, factors, settings.trials)] + [
            (m, self.plan.model, None if m == "none" else make_factors(m, factors.base, scale),
             settings.baseline_trials or settings.trials) for m in settings.methods]
        for name, spec, candidate, trials in runs:
            model, tokenizer = self.loaded(spec)
            self.log(f"passkey {name}: {len(lengths)} lengths x {len(settings.depths)} depths x {trials} trials")

            def keep(result, name=name):
                results[name] = result
                save_json(header | {"passkey": results}, path)

            keep(passkey_accuracy(model, tokenizer, candidate, lengths, settings.depths, trials, settings.seed,
                                  previous=results.get(name), on_cell=keep))
        return {"passkey": str(path)}

    def _report(self, stage: Stage, folder: Path) -> dict:
        from ropesearch.report import build_report

        return {"report": str(build_report(self.out, folder))}

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
        from ropesearch.data import load_documents
        from ropesearch.models import resolve_model
        from ropesearch.validate import check_model_folder, check_output

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
                                          if k not in ("workers", "ray_address", "gpus_per_worker")}}
                                for s in self.plan.stages]}
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
        handlers = {"search": self._search, "finetune": self._finetune, "recover-short": self._recover_short,
                    "export": self._export, "evaluate": self._evaluate, "passkey": self._passkey,
                    "report": self._report}
        for number, stage in enumerate(self.plan.stages, 1):
            folder = self.out / stage.name
            done = folder / "done.json"
            if done.exists() or done.is_symlink():  # anything there is read as the record (a FIFO: one line)
                record = read_record(done, self.out, stage.name)
                outputs = record["outputs"]
                finetuned = Path(outputs.get("model") or folder / "model")
                if stage.kind == "finetune" and not any(finetuned.glob("*.safetensors")):  # gone, or copied without weights
                    kept = outputs.get("factors")
                    if kept and Path(kept).is_file() and not record["legacy"]:  # the rebuild applies it: as written
                        check_record(done, self.out, stage.name, record | {"outputs": {"factors": kept}})
                    self._rebuild_finetuned(folder, outputs)
                    record["legacy"] = True  # its factor file is new too: recorded anew
                if record["legacy"]:
                    write_record(done, self.out, outputs, record["seconds"])
                    record = read_record(done, self.out, stage.name)
                check_record(done, self.out, stage.name, record)
                self._apply(outputs)
                self.outputs[stage.name] = outputs
                self.log(f"[{number}/{total}] {stage.name}: done earlier, skipped")
                again = f"remove {done} to run {stage.name} again"
                if stage.kind == "evaluate" and Path(outputs.get("table", "")).is_file():
                    from ropesearch.evaluate.runs import format_table

                    self.log(format_table(read_json(outputs["table"], "the evaluation table", again)))  # the result again
                continue
            self.log(f"[{number}/{total}] {stage.name}")
            folder.mkdir(parents=True, exist_ok=True)
            # seconds of earlier, interrupted sessions of this stage count too
            spent_file = folder / "spent.json"
            spent = read_json(spent_file, "time record", "remove it") if spent_file.is_file() else {}
            earlier = float(spent.get("seconds", 0.0)) if isinstance(spent, dict) else 0.0
            started = time.perf_counter()
            try:
                outputs = handlers[stage.kind](stage, folder)
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
    return [f"{stage}: {_produced(values)}" for stage, values in outputs.items()]


def _produced(outputs: dict) -> str:
    from ropesearch.evaluate.runs import format_ppl

    if "exports" in outputs:
        written = ", ".join(f"{fmt} in {path}" for fmt, path in outputs["exports"].items())
        return f"exported {written}" if written else "nothing exported"
    if "table" in outputs:
        table = read_json(outputs["table"], "the evaluation table", "remove the stage's done.json to run it again") \
            if Path(outputs["table"]).is_file() else {}
        if not table.get("lengths"):
            return f"perplexity table in {outputs['table']}"
        longest = str(max(table["lengths"]))
        scores = ", ".join(f"{name} {format_ppl(row[longest])}" for name, row in table["ppl"].items()
                           if row.get(longest) is not None)
        return f"perplexity at {longest} tokens: {scores} (table in {outputs['table']})"
    if "report" in outputs:
        return f"report in {outputs['report']}"
    if "passkey" in outputs:
        return f"passkey accuracy in {outputs['passkey']}"
    if "final_loss" in outputs:
        loss = "" if outputs["final_loss"] is None else f", final loss {outputs['final_loss']:.3f}"
        return f"fine-tuned model in {outputs['model']}{loss}"
    if "factors" in outputs:
        best = Path(outputs["factors"])
        scores = (read_json(best, "the found factors", "remove the stage's done.json to run it again")
                  .get("provenance") or {}).get("scores") if best.is_file() else None
        if not isinstance(scores, dict):  # without its file: the values alone
            scores = {"score": outputs["values"][0]} if outputs.get("values") else {}
        shown = ", ".join(f"{name} {format_ppl(value)}" for name, value in scores.items())
        return f"best {shown} on its search windows; factors in {best}" if shown else f"factors in {best}"
    shown = ", ".join(f"{key} {value}" for key, value in outputs.items() if value not in (None, {}, [], ""))
    return shown or "done"


def run_plan(plan: Plan | str | Path, out: str | Path | None = None, resume: bool = False, log=print) -> dict:
    """`ropesearch run`: returns each stage's outputs."""
    from ropesearch.pipeline.plan import load_plan

    plan = plan if isinstance(plan, Plan) else load_plan(plan)
    return Pipeline(plan, out or Path("runs") / plan.name, log=log).run(resume=resume)
