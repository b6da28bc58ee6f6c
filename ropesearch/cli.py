"""The `ropesearch` command: a thin click layer over the library (each command has a Python twin)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from ropesearch import __version__
from ropesearch.errors import RopesearchError
from ropesearch.cli_options import (BACKEND_OPTION, DTYPE_OPTION, Group, MODEL_HELP, PACK_OPTION, check_json_out,
                                    check_plots, compare_options, comparison, eval_options, method_param_options,
                                    read_factor_files, tokens, torch_dtype, worker_flags, workers_from)
from ropesearch.validate import SEED, Device, FiniteFloat, check_output, count
from ropesearch.rope.methods import METHODS
from ropesearch.search.objectives import OBJECTIVES
from ropesearch.units import MAX_SCALE
from ropesearch.api import baseline_factors, export, factors_from_csv
from ropesearch.export import load_factors, save_factors
from ropesearch.export.factor_file import factor_provenance, factors_to_dict
from ropesearch.export.portable import original_window_caveat
from ropesearch.models import fetch_model, load_config, resolve_model, rope_base
from ropesearch.rope import critical_dimension, in_range_length, unturned
from ropesearch.tasks.ruler import TASKS as RULER_TASKS


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="ropesearch")
def cli():
    """Find, apply and export LongRoPE rescale factors for RoPE language models.

    \b
    Typical flow:
      ropesearch fetch-model smollm2-135m
      ropesearch factors yarn --model smollm2-135m --scale 8 --out yarn8.json
      ropesearch export yarn8.json --model smollm2-135m --out smollm2-yarn-64k
    """


@cli.command("fetch-model")
@click.argument("name")
@click.option("--force", is_flag=True, help="Download again even if cached.")
def fetch_model_cmd(name, force):
    """Download a demo model (e.g. smollm2-135m) into the ropesearch cache and print its path."""
    path = fetch_model(name, force=force, log=lambda msg: click.echo(msg, err=True))
    click.echo(str(path))


def _model_base(model: str, original_context: int | None):
    ref = resolve_model(model)
    return ref, rope_base(load_config(ref), original_context)


@cli.command("factors")
@click.argument("method", type=click.Choice([*METHODS, "longrope"]))
@click.option("--model", "-m", required=True, help=MODEL_HELP)
@click.option("--scale", "-s", type=FiniteFloat(min=1, max=MAX_SCALE), required=True,
              help="Extension ratio: target window / original window (1 to 1024; targets up to 128M tokens).")
@click.option("--out", "-o", type=click.Path(dir_okay=False), help="Write the factor file here (else print a summary).")
@click.option("--original-context", type=tokens(2), help="Override the model's trained window (e.g. 4k).")
@method_param_options
@click.option("--csv", "long_csv", type=click.Path(), help="LongRoPE: long factors from a LongRoPE-style CSV.")
@click.option("--short-csv", type=click.Path(), help="LongRoPE: short factors from a CSV (default: the long ones).")
@click.option("--start-tokens", type=count(0), default=0, show_default=True, help="LongRoPE: positions kept unscaled.")
def factors_cmd(method, model, scale, out, original_context, long_csv, short_csv, start_tokens, **options):
    """Write the factor file of METHOD for a model, or import LongRoPE CSV factors (METHOD longrope).

    Baseline methods use the same factors at every length.
    """
    ref, base = _model_base(model, original_context)
    params = {k: v for k, v in options.items() if v is not None}
    if method == "longrope":
        foreign = sorted(set(params) - {"attention_factor"})
        if foreign:
            raise RopesearchError(f"--{foreign[0].replace('_', '-')} is not a LongRoPE setting: longrope takes "
                                  "--csv, --short-csv, --start-tokens and --attention-factor")
        if not long_csv:
            raise RopesearchError("method longrope needs --csv LONG_FACTORS.csv (searched factors come from `search`)")
        factors = factors_from_csv(base, scale, long_csv, short_csv, start_tokens=start_tokens, **params)
    else:
        if long_csv or short_csv or start_tokens:
            raise RopesearchError("--csv, --short-csv and --start-tokens apply to method longrope only")
        factors = baseline_factors(method, base, scale, **params)
    if out:
        check_output(out, {"the model": model, "the CSV": long_csv, "the short CSV": short_csv}, folder=False)
        save_factors(factors, out, provenance={"model": model})
        click.echo(f"wrote {out}: {method}, {base.n_factors} factors, {base.original_context} -> {factors.target_context}")
    else:
        click.echo(_summary(factors))


def _summary(factors, reference=None) -> str:
    base = factors.base
    lines = [
        f"method {factors.method}: rope_theta {base.rope_theta:g}, {base.rotary_dim} rotary dims, "
        f"window {base.original_context} -> {factors.target_context} (x{factors.scale:g})",
        f"attention factor {factors.attention_factor:.6g}, start tokens {factors.start_tokens}, "
        f"critical dimension {critical_dimension(base)} (factor index {critical_dimension(base) // 2})",
        _in_range_line(factors, reference),
        "  i   wavelength   long_factor  short_factor",
    ]
    for i, (wave, lf, sf) in enumerate(zip(base.wavelengths(), factors.long_factor, factors.short_factor)):
        lines.append(f"{i:3d} {wave:12.1f} {lf:13.5f} {sf:13.5f}")
    return "\n".join(lines)


def _in_range_line(factors, reference=None) -> str:
    """How far the factors keep every pair that never turned in training inside its trained angles."""
    mask = unturned(factors.base, reference)
    window = factors.base.original_context if reference is None else reference.target_context
    trained = "its original window" if reference is None else f"the {window}-token fine-tuning with --reference"
    if not mask.any():
        return f"in range at any length: every pair turned at least once in {trained}"
    length = in_range_length(factors, reference)
    share = f" ({length / factors.target_context:.0%} of the target)" if length < factors.target_context else ""
    return (f"in range up to {length:,.0f} tokens{share}: pairs {mask.tolist().index(True)}-{len(mask) - 1} never turned "
            f"once in {trained}; past that they meet angles they were never trained on")


@cli.command("show")
@click.argument("factor_file", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print the validated file as JSON.")
@click.option("--reference", type=click.Path(), help="The factor file the model was fine-tuned with (a "
              "progressive stage's first search): the in-range length is then counted from that fine-tuning.")
def show_cmd(factor_file, as_json, reference):
    """Validate a factor file and print its factors, and the length up to which the pairs that never
    turned in training stay inside their trained angles."""
    factors = load_factors(factor_file)
    fine_tuned = load_factors(reference) if reference else None
    if fine_tuned is not None and fine_tuned.base != factors.base:
        raise RopesearchError(f"--reference {reference} is for another RoPE ({fine_tuned.base}) than {factor_file} "
                              f"({factors.base}): give the factor file the model was fine-tuned with")
    click.echo(json.dumps(factors_to_dict(factors), indent=2) if as_json else _summary(factors, fine_tuned))


@cli.command("export")
@click.argument("factor_file", type=click.Path())
@click.option("--model", "-m", required=True, help=MODEL_HELP)
@click.option("--out", "-o", required=True, type=click.Path(file_okay=False), help="Output folder.")
@click.option("--format", "fmt", type=click.Choice(["hf", "vllm", "csv"]), default="hf", show_default=True,
              help="hf: a model folder transformers and vLLM load; vllm: overrides for an existing model; "
              "csv: LongRoPE-style factor lists.")
@click.option("--copy", is_flag=True, help="hf: copy weights (default: hard links where possible, else copies).")
@click.option("--symlink", is_flag=True, help="hf: symlink weights and tokenizer to the source model instead "
              "(the folder then breaks when the source moves).")
@click.option("--overwrite", is_flag=True, help="Replace a non-empty output folder.")
@click.option("--ignore-start-tokens", is_flag=True, help="Export although configs cannot express start tokens.")
def export_cmd(factor_file, model, out, fmt, copy, symlink, overwrite, ignore_start_tokens):
    """Export FACTOR_FILE for a model as a transformers folder, vLLM overrides or CSV."""
    if copy and symlink:
        raise RopesearchError("--copy and --symlink exclude each other: choose one")
    path = export(factor_file, model, out, fmt=fmt, copy=copy, overwrite=overwrite,
                  allow_start_tokens=ignore_start_tokens, symlink=symlink)
    click.echo(f"wrote {path}")

    provenance = factor_provenance(factor_file)
    caveat = original_window_caveat(load_factors(factor_file), provenance)
    if caveat:
        click.echo(f"warning: {caveat}", err=True)


def _run_table(model, data, lengths, samples, seed, offset, text_field, split, heldout_of, pack, max_batch, device,
               backend, dtype, json_out, needle=False, **table_args):
    from ropesearch.evaluate.baselines import baseline_table, failed_cells, format_table
    from ropesearch.evaluate.runs import (describe_windows, parse_lengths, WindowSpec, save_json, searched_documents,
                                          setup)

    workers = workers_from(table_args, torch_dtype(dtype))
    lengths = parse_lengths(lengths)
    check_json_out(json_out, model, table_args.get("factor_files", ()), data)
    exclude = sorted({document for one in heldout_of for document in searched_documents(one)})
    text = WindowSpec(data, samples, seed, offset, text_field, split, pack, exclude, needle=needle)
    run = setup(model, text, max(lengths), device=device, backend=backend, dtype=torch_dtype(dtype),
                config_only=workers is not None)
    table = baseline_table(run, lengths, max_batch=max_batch, backend=backend, workers=workers, **table_args)
    click.echo(format_table(table))
    click.echo(describe_windows(run, heldout_of), err=True)
    failed = failed_cells(table)
    if failed:
        raise RopesearchError(f"non-finite perplexity (shown as failed) for {', '.join(failed)}: those factors "
                              "break the model at that length; no result is written")
    from ropesearch.evaluate.baselines import original_window_warnings

    for warning in original_window_warnings(table):
        click.echo(warning, err=True)
    if json_out:
        save_json(table | {"command": " ".join(sys.argv)}, json_out)
        click.echo(f"wrote {json_out}")


@cli.command("eval")
@eval_options
@click.option("--method", type=click.Choice(["as-is", *METHODS]),
              help="Score a baseline method (with --scale), or as-is: the model with the RoPE its own config sets "
              "(e.g. an exported folder as shipped).")
@click.option("--scale", type=FiniteFloat(min=1, max=MAX_SCALE),
              help="Scale for --method, 1 to 1024 (default: longest length / original window).")
@click.option("--factors", "factor_file", type=click.Path(), help="Score a factor file.")
@click.option("--needle", is_flag=True, help="Needle-driven perplexity: only the answer to a needle is scored.")
def eval_cmd(method, scale, factor_file, needle, **options):
    """Perplexity of one factor set (a method or a factor file) at several lengths.

    One forward pass per window gives every shorter length too (prefixes).
    """
    from ropesearch.evaluate.runs import parse_lengths

    if (method is None) == (factor_file is None):
        raise RopesearchError("give either --method (with --scale) or --factors FILE")
    if needle and len(parse_lengths(options["lengths"])) > 1:
        raise RopesearchError("--needle scores one length at a time: give a single --lengths value")
    _run_table(methods=[method] if method else [], factor_files=[factor_file] if factor_file else [],
               scale=scale, fixed_scale=True, needle=needle, **options)


@cli.command("baselines")
@eval_options
@click.option("--methods", default="none,pi,ntk,yarn", show_default=True,
              help=f"Comma-separated: {', '.join(METHODS)}.")
@click.option("--scale", type=FiniteFloat(min=1, max=MAX_SCALE), help="Scale of the methods at every length, 1 to 1024 (default: longest "
              "length / original window).")
@click.option("--per-length-scale", is_flag=True, help="Rescale each method to length / original window at each "
              "length instead (a different model per row; columns labelled 'per-length').")
@click.option("--factors", "factor_files", multiple=True, type=click.Path(), callback=read_factor_files,
              help="Factor files to compare (repeat; LABEL=PATH names the column).")
@click.option("--native", is_flag=True,
              help="Add the unscaled model reading the same text in back-to-back windows of its own length.")
def baselines_cmd(methods, scale, per_length_scale, factor_files, native, **options):
    """Perplexity by length of the baseline methods (and factor files) in one run, as a table.

    Every column is one model at one scale, shown in its header.
    """
    from ropesearch.evaluate.comparison import method_names

    names = method_names(methods)
    if scale and per_length_scale:
        raise RopesearchError("--scale and --per-length-scale exclude each other: choose one")
    _run_table(methods=names, factor_files=list(factor_files), scale=scale, per_length=per_length_scale,
               native=native, **options)


@cli.command("search")
@click.option("--model", "-m", default="smollm2-135m", show_default=True, help=MODEL_HELP)
@click.option("--data", "-d", default="builtin", show_default=True, help="Search documents (as for eval).")
@click.option("--target-length", "-t", type=tokens(2), required=True,
              help="Window to extend the model to, in tokens (e.g. 2048, 32k, 1M).")
@click.option("--space", "-s", default="fast", show_default=True,
              help="Search space: fast, longrope, longrope2, or a YAML file.")
@click.option("--out", "-o", required=True, type=click.Path(file_okay=False), help="Run directory.")
@click.option("--resume", is_flag=True, help="Continue the search in --out from its last generation.")
@click.option("--objective", type=click.Choice(list(OBJECTIVES)),
              help="; ".join(f"{name}: {kind.help}" for name, kind in OBJECTIVES.items()) + ". Default: the space's.")
@click.option("--max-evals", type=count(1), help="Stop after this many full evaluations.")
@click.option("--time-budget", type=FiniteFloat(min=0, min_open=True), help="Stop after this many minutes.")
@click.option("--samples", "-k", type=count(1), help="Search windows (default: the space's).")
@click.option("--seed", type=SEED, default=0, show_default=True, help="Windows and search randomness.")
@click.option("--max-batch", type=count(1), help="Most windows per forward pass.")
@click.option("--device", type=Device(), help="cuda, cpu (default: cuda if present).")
@BACKEND_OPTION
@click.option("--text-field", default="text", show_default=True, help=".jsonl / datasets text field.")
@click.option("--short-tolerance", type=FiniteFloat(min=0), default=0.01, show_default=True,
              help="Keep the original window within this relative perplexity of the unscaled model "
              "(short_factor = 1, attention factor capped to what allows it).")
@DTYPE_OPTION
@click.option("--no-short-guard", is_flag=True, help="Search without that guard (short_factor = long_factor, "
              "attention factor free; the original window may get worse).")
@PACK_OPTION
@worker_flags
def search_cmd(model, data, target_length, space, out, resume, objective, max_evals, time_budget, samples, seed,
               max_batch, device, backend, text_field, short_tolerance, dtype, no_short_guard, pack, **worker_flags):
    """Evolutionary search for LongRoPE factors at --target-length.

    Writes OUT/config.json, OUT/history.jsonl (every scored candidate), OUT/checkpoint.json
    (after every generation, data only) and OUT/best.json (a factor file). A killed search continues
    with --resume and reaches the same result as an uninterrupted one; one process at a time.
    """
    from ropesearch.search.session import SearchConfig, run_search

    check_output(out, {"the model": model, "the data": data, "the space": space})
    config = SearchConfig(model, data, target_length, space=space, objective=objective, samples=samples, seed=seed,
                          max_evals=max_evals, time_minutes=time_budget, device=device, max_batch=max_batch,
                          text_field=text_field, backend=backend, pack=pack, dtype=torch_dtype(dtype),
                          short_tolerance=None if no_short_guard else short_tolerance,
                          workers=workers_from(worker_flags, torch_dtype(dtype)))
    result = run_search(config, out, resume=resume, log=lambda m: click.echo(m, err=True))
    values = ", ".join(f"{v:.4f}" for v in result.values)
    click.echo(f"best: {values} after {result.state.full_evals} evaluations; factors in {Path(out) / 'best.json'}")


@cli.command("passkey")
@compare_options
@click.option("--lengths", "-l", required=True, help="Prompt lengths in tokens, e.g. 8k,16k,32k.")
@click.option("--depths", default="0.1,0.5,0.9", show_default=True, help="Where the key sits (0 start, 1 end).")
@click.option("--trials", type=count(1), default=5, show_default=True, help="Random keys per length and depth.")
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--plots", type=click.Path(file_okay=False), help="Write a heatmap per method into this folder.")
@click.option("--data", "-d", help="Hide the key in these documents' text (as for eval) instead of the usual "
              "filler sentences; one document long enough, or several joined with --pack.")
@PACK_OPTION
def passkey_cmd(model, methods, scale, factor_files, device, dtype, json_out, lengths, depths, trials, seed, plots,
                data, pack):
    """Passkey retrieval: accuracy by length and depth for baselines and factor files (greedy, exact match)."""
    from ropesearch.tasks.passkey_run import PasskeyConfig, run_passkey

    check_json_out(json_out, model, factor_files, data)
    check_plots(plots, json_out)

    def plot(name, result):
        if plots:
            from ropesearch.report.plots import plot_passkey

            Path(plots).mkdir(parents=True, exist_ok=True)
            plot_passkey(result, Path(plots) / f"passkey-{name.replace('/', '_')}.png", f"Passkey: {name}")

    config = PasskeyConfig(comparison(model, methods, factor_files, scale, device, dtype), lengths, depths, trials,
                           seed, data, pack)
    run_passkey(config, json_out, log=click.echo, on_result=plot, command=" ".join(sys.argv))


@cli.command("ruler")
@compare_options
@click.option("--lengths", "-l", required=True, help="Sequence lengths in tokens (prompt + answer), e.g. 8k,16k,32k.")
@click.option("--tasks", default="all", show_default=True,
              help=f"Comma-separated RULER tasks: {', '.join(RULER_TASKS)}; or all.")
@click.option("--samples", "-k", type=count(1), default=20, show_default=True, help="Samples per task and length.")
@click.option("--seed", type=SEED, default=0, show_default=True, help="Every sample's seed derives from it.")
@click.option("--data", "-d", default="builtin", show_default=True, help="Documents for the essay haystack (as for eval).")
@click.option("--text-field", default="text", show_default=True, help=".jsonl / datasets text field.")
@click.option("--max-batch", type=count(1), help="Samples per generate call (default on a GPU: as many as its memory holds, "
              "measured on the first call at each length; 1 on CPU).")
@click.option("--max-new-tokens", type=count(1),
              help="Cap each task's answer budget (RULER's: NIAH 128, vt 30, cwe 120, fwe 50); prompts keep their length. "
              "A cap at or above every chosen task's budget is the same as none.")
@click.option("--resume", is_flag=True, help="Add to --json: keep the factor sets and lengths already there and run the "
              "rest (none left: the table and plots, without loading the model). The JSON's tasks, samples, "
              "settings and each column's factors must be the same.")
@click.option("--plots", type=click.Path(file_okay=False), help="Write a heatmap per factor set into this folder.")
@click.option("--prefetch/--no-prefetch", default=None, help="Build the prompts in a worker process while the model "
              "answers (default: on a GPU; on a CPU the worker takes the model's cores). The samples are the same.")
def ruler_cmd(model, methods, scale, factor_files, device, dtype, json_out, lengths, tasks, samples, seed, data,
              text_field, max_batch, max_new_tokens, resume, plots, prefetch):
    """RULER-style long-context suite: NIAH, variable tracking, common/frequent words; greedy, RULER's scoring.

    Generated offline at exactly each length in the model's tokens (RULER's convention: the prompt
    is the length minus the task's answer budget). Tables per task and the average per length.
    """
    from ropesearch.tasks.ruler_eval import format_ruler
    from ropesearch.tasks.ruler_run import RulerConfig, run_ruler

    check_json_out(json_out, model, factor_files, data)
    check_plots(plots, json_out)
    config = RulerConfig(comparison(model, methods, factor_files, scale, device, dtype), lengths, tasks, samples,
                         seed, data, text_field, max_batch, max_new_tokens, prefetch)
    run = run_ruler(config, json_out, resume, log=lambda m: click.echo(m, err=True), command=" ".join(sys.argv))
    click.echo(format_ruler(run.results))
    _ruler_plots(run.results, plots)
    if not run.ran:
        click.echo(f"nothing left to run: every factor set, length and task is already in {json_out}")
    elif json_out:
        click.echo(f"wrote {json_out}")


def _ruler_plots(results: dict, plots) -> None:
    """A heatmap per factor set into the --plots folder (none without it)."""
    if plots:
        from ropesearch.report.plots import plot_ruler

        Path(plots).mkdir(parents=True, exist_ok=True)
        for name, result in results.items():
            plot_ruler(result, Path(plots) / f"ruler-{name.replace('/', '_')}.png", f"RULER: {name}")


@cli.command("lm-eval")
@compare_options
@click.option("--tasks", required=True,
              help="Comma-separated lm-eval tasks: any registered name, or the offline ropesearch_passkey, "
              "ropesearch_ppl, ropesearch_ruler (the RULER-style group) and ropesearch_ruler_<task> (e.g. _vt).")
@click.option("--data", "-d", default="builtin", show_default=True,
              help="Documents for ropesearch_ppl and the essay haystack of ropesearch_ruler (as for eval).")
@click.option("--lengths", "-l", help="ropesearch_passkey prompt lengths and ropesearch_ruler lengths (default: the "
              "original window), ropesearch_ppl document lengths (default: the extended window).")
@click.option("--limit", type=count(1), help="About this many documents per task; offline tasks (ropesearch_*) keep "
              "at least one per length and depth.")
@click.option("--doc-tokens", type=tokens(1), help="ropesearch_ppl: cut every document to N tokens instead of --lengths.")
@click.option("--workdir", type=click.Path(file_okay=False), default="runs/lm-eval", show_default=True,
              help="Where generated task data and filled-in task files go.")
@click.option("--verbose", "-v", is_flag=True, help="Show lm-eval's own logging.")
def lm_eval_cmd(model, methods, scale, factor_files, device, dtype, json_out, tasks, data, lengths, limit, doc_tokens,
                workdir, verbose):
    """lm-evaluation-harness on the patched model (max_length from the factors), offline tasks included."""
    from ropesearch.tasks.lm_eval_bridge import LmEvalConfig, compare_lm_eval

    check_json_out(json_out, model, factor_files)
    config = LmEvalConfig(comparison(model, methods, factor_files, scale, device, dtype), tasks, data, lengths, limit,
                          doc_tokens, workdir, verbose)
    compare_lm_eval(config, json_out, log=click.echo, command=" ".join(sys.argv))


@cli.command("run")
@click.argument("plan", type=click.Path())
@click.option("--out", "-o", type=click.Path(file_okay=False), help="Run directory (default runs/<plan name>).")
@click.option("--resume", is_flag=True, help="Skip completed stages and continue the interrupted one.")
def run_cmd(plan, out, resume):
    """Carry out a progressive plan: search, fine-tune, search again, recover short, export, evaluate, report.

    Each stage writes into its own folder of the run directory; --resume skips completed
    stages. Example plans: search_spaces/plans/.
    """
    from ropesearch.pipeline.runner import run_plan, summary

    outputs = run_plan(plan, out, resume=resume, log=lambda m: click.echo(m, err=True))
    click.echo("\n".join(summary(outputs)))


@cli.command("report")
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--out", type=click.Path(file_okay=False), help="Where to write (default RUN_DIR/report).")
def report_cmd(run_dir, out):
    """Markdown report with plots (factors per dimension, search progress, perplexity by length)."""
    from ropesearch.report import build_report

    click.echo(f"wrote {build_report(run_dir, out)}")


def main():
    cli(prog_name="ropesearch")


if __name__ == "__main__":
    sys.exit(main())
