"""What the `ropesearch` commands share: the group and command classes (one-line errors, what an
interrupt kept), parameter types, and the option sets several commands take."""

from __future__ import annotations

from pathlib import Path

import click

from ropesearch.errors import RopesearchError
from ropesearch.export.factor_file import load_factors
from ropesearch.rope.methods import METHODS, method_params
from ropesearch.units import MAX_SCALE, token_count_type
from ropesearch.validate import SEED, Device, FiniteFloat, check_output, count, writable_folder


class Command(click.Command):
    """Ctrl-C says what was kept and how to go on (click alone prints `Aborted!`); exit status 130."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            click.echo(f"\n{interrupted(ctx.params)}", err=True)
            ctx.exit(130)


def interrupted(params: dict) -> str:
    """What an interrupted command kept: commands with --resume save as they go (into --out or --json)."""
    if "resume" not in params:
        return "Interrupted: this command keeps nothing until it finishes; run it again to start over."
    if params.get("json_out", "") is None:  # results are kept only in --json
        return "Interrupted: nothing was saved without --json; give --json FILE to keep results as they come."
    where = params.get("out") or params.get("json_out")
    return (f"Interrupted: the work finished so far is saved{f' in {where}' if where else ''}; run the same "
            "command again with --resume to continue from there.")


class Group(click.Group):
    """Turns RopesearchError into one line on stderr and exit status 1, no traceback."""

    command_class = Command

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except RopesearchError as exc:
            raise click.ClickException(str(exc)) from None
        except click.exceptions.NoArgsIsHelpError:
            raise
        except click.UsageError as exc:
            # a bad option value is one line and exit status 1 too, with where to look for help
            where = f"ropesearch {exc.ctx.info_name} --help" if exc.ctx and exc.ctx.parent else "ropesearch --help"
            raise click.ClickException(f"{exc.format_message().rstrip('.')} (see {where})") from None
        except RecursionError:  # a backstop: every reader bounds the nesting it parses (validate.read_json)
            raise click.ClickException("an input file is nested too deeply to read (JSON or YAML nested past "
                                       "Python's recursion limit): give a file ropesearch wrote, or fix it") from None
        except OSError as exc:  # a file that cannot be read or written (permissions, a full disk...)
            target = f" {exc.filename}" if exc.filename else ""
            raise click.ClickException(f"cannot access{target}: {exc.strerror or exc}") from None


def tokens(minimum: int = 1):
    """The token-count parameter type (2048, 2k, 1M), at least `minimum`."""
    return token_count_type(minimum)


def torch_dtype(name: str | None):
    """--dtype as a torch dtype (None: the default, bfloat16 on a GPU and float32 on the CPU)."""
    if name in (None, "auto"):
        return None
    import torch

    return getattr(torch, name)


DTYPE_OPTION = click.option("--dtype", type=click.Choice(["auto", "float32", "bfloat16", "float16"]), default="auto",
                            show_default=True, help="Weights and compute dtype (auto: bfloat16 on a GPU, float32 on "
                            "the CPU).")


MODEL_HELP = ("Model: pocket (shipped), smollm2-135m or qwen2.5-coder-0.5b (fetched), a transformers folder or hub id, "
              "or a .gguf file.")


PARAM_TYPES = {"positive": FiniteFloat(min=0, min_open=True), "non-negative": FiniteFloat(min=0)}


def method_param_options(function):
    """One option per method parameter in the METHODS table (--beta-fast, --truncate/--no-truncate)."""
    for name, (param, users) in reversed(method_params().items()):
        flag = "--" + name.replace("_", "-")
        where = "/".join(METHODS[m].spoken for m in users)
        if param.kind == "flag":
            function = click.option(f"{flag}/--no-{flag[2:]}", default=None, help=f"{where}: {param.help}.")(function)
        else:
            function = click.option(flag, type=PARAM_TYPES[param.kind], help=f"{where}: {param.help}.")(function)
    return function


PACK_OPTION = click.option(
    "--pack", is_flag=True, help="Join documents (EOS between them, seeded order, each from its start) into "
    "windows of the longest length: windows longer than any document, e.g. 1M tokens.")


BACKEND_OPTION = click.option(
    "--backend", type=click.Choice(["torch", "vllm"]), default="torch", show_default=True,
    help="Evaluator: torch, or vllm (prompt logprobs; needs vLLM and a model folder; vLLM uses long_factor "
    "at every length).")


def worker_flags(function):
    """--workers / --ray-address / --gpus-per-worker / --task-timeout: score on Ray workers (pip install 'ropesearch[ray]')."""
    options = [
        click.option("--workers", type=count(1, 100_000),
                     help="Score on N Ray workers, each holding the model (default with --ray-address: every GPU "
                     "/ --gpus-per-worker; without these flags: this process, no Ray)."),
        click.option("--ray-address", help="Ray cluster to join: auto, HOST:PORT or ray://HOST:PORT (default: start "
                     "a local Ray instance)."),
        click.option("--gpus-per-worker", type=count(0, 1024),
                     help="GPUs per worker, for a model that does not fit one (default 1; 0: CPU workers)."),
        click.option("--task-timeout", type=FiniteFloat(min=0, min_open=True),
                     help="Seconds before a worker's task counts as hung (default: 10x the slowest task, >= 600)."),
    ]
    for option in reversed(options):
        function = option(function)
    return function


def workers_from(options: dict, dtype=None):
    """Pop the worker flags from a command's options: WorkerOptions (workers load the model in `dtype`),
    or None without them."""
    from ropesearch.evaluate.workers import worker_options

    return worker_options(*(options.pop(k) for k in ("workers", "ray_address", "gpus_per_worker", "task_timeout")),
                          dtype=dtype)


def eval_options(function):
    """Options shared by `eval` and `baselines`."""
    options = [
        click.option("--model", "-m", default="smollm2-135m", show_default=True, help=MODEL_HELP),
        click.option("--data", "-d", default="builtin", show_default=True,
                     help="Documents: a folder of .txt, a .txt or .jsonl file, a datasets name, or builtin "
                     "(long texts that ship with Python)."),
        click.option("--lengths", "-l", required=True, help="Comma-separated window lengths in tokens, e.g. 16384,32k."),
        click.option("--samples", "-k", type=count(1), default=4, show_default=True, help="Documents (windows) per length."),
        click.option("--seed", type=SEED, default=0, show_default=True, help="Which documents are sampled."),
        click.option("--offset", type=click.Choice(["start", "random"]), default="start", show_default=True,
                     help="Cut each window from the document's start or a seeded random place."),
        click.option("--text-field", default="text", show_default=True, help=".jsonl / datasets text field."),
        click.option("--split", default="test", show_default=True, help="datasets split."),
        click.option("--heldout-of", type=click.Path(file_okay=False), multiple=True,
                     help="Leave out the documents this search run (or plan run) searched or fine-tuned on, "
                     "packed windows included (repeat for several runs)."),
        PACK_OPTION,
        click.option("--max-batch", type=count(1), help="Most windows per forward pass (default: what fits)."),
        click.option("--device", type=Device(), help="cuda, cuda:1, cpu (default: cuda if present)."),
        BACKEND_OPTION,
        DTYPE_OPTION,
        click.option("--json", "json_out", type=click.Path(dir_okay=False), help="Also write the results as JSON."),
    ]
    for option in reversed(options):
        function = option(function)
    return worker_flags(function)


def read_factor_files(ctx, param, factor_files):
    """--factors: every file is read and checked as it is parsed, before a model loads (a wrong path
    costs a second, not a model load and then an error)."""
    from ropesearch.evaluate.baselines import factor_labels

    for path in factor_labels(factor_files).values():
        load_factors(path)
    return factor_files


def compare_options(function):
    """--methods / --scale / --factors: what passkey and lm-eval compare."""
    options = [
        click.option("--model", "-m", default="smollm2-135m", show_default=True, help=MODEL_HELP),
        click.option("--methods", default="none", show_default=True,
                     help=f"Comma-separated baselines: {', '.join(METHODS)}."),
        click.option("--scale", type=FiniteFloat(min=1, max=MAX_SCALE),
                     help="Scale for the methods, 1 to 1024 (default: longest length / original window)."),
        click.option("--factors", "factor_files", multiple=True, type=click.Path(), callback=read_factor_files,
                     help="Factor files (repeat; LABEL=PATH names one)."),
        click.option("--device", type=Device(), help="cuda, cpu (default: cuda if present)."),
        DTYPE_OPTION,
        click.option("--json", "json_out", type=click.Path(dir_okay=False), help="Write the results as JSON."),
    ]
    for option in reversed(options):
        function = option(function)
    return function


def comparison(model, methods, factor_files, scale, device, dtype):
    """What compare_options give, as the task runs take it."""
    from ropesearch.evaluate.comparison import Comparison

    return Comparison(model, methods, factor_files, scale, device, torch_dtype(dtype))


def check_json_out(json_out, model, factor_files, data=None) -> None:
    if json_out:
        from ropesearch.evaluate.baselines import factor_labels  # LABEL=PATH: the path is the input

        inputs = {"the model": model, **{f"factor file {f}": f for f in factor_labels(factor_files).values()}}
        check_output(json_out, inputs | ({"the data": data} if data else {}), "--json", folder=False)


def check_plots(plots, json_out=None) -> None:
    """--plots can be written before the long work starts (its files come after every result)."""
    if plots:
        if json_out and Path(plots).resolve() == Path(json_out).resolve():
            raise RopesearchError(f"--plots {plots} is also the --json file: give the plots a folder of their own")
        writable_folder(plots, "--plots")
