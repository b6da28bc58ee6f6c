"""Find and load a model: a demo name, a transformers folder or hub id, or a GGUF file."""

from __future__ import annotations

import contextlib
import difflib
import functools
import hashlib
import json
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ropesearch.errors import RopesearchError
from ropesearch.lock import DirectoryLock
from ropesearch.models.registry import DEMO_MODELS, PACKAGED_MODELS, cache_dir, fetch_model
from ropesearch.rope.factors import RopeBase
from ropesearch.own_files import current_umask
from ropesearch.units import MAX_TOKENS
from ropesearch.validate import check_model_folder, conform, damaged, read_json


@dataclass(frozen=True)
class ModelRef:
    """Where a model's files are: a folder (or hub id) and, for GGUF, the file inside it."""

    spec: str  # what the user typed
    path: str
    gguf_file: str | None = None
    local_only: bool = False  # a hub id read from the local cache (the hub cannot be reached)

    @property
    def kwargs(self) -> dict:
        return ({"gguf_file": self.gguf_file} if self.gguf_file else {}) | (
            {"local_files_only": True} if self.local_only else {})


def resolve_model(spec: str, fetch: bool = True) -> ModelRef:
    """Turn what the user typed into files; demo models are fetched on first use."""
    if spec in PACKAGED_MODELS:
        folder = PACKAGED_MODELS[spec]
        if not (folder / "config.json").is_file():
            raise RopesearchError(f"the {spec} model is missing from this installation ({folder})")
        return ModelRef(spec, str(folder))
    if spec in DEMO_MODELS:
        log = lambda msg: print(msg, file=sys.stderr)  # noqa: E731
        gguf = fetch_model(spec, log=log) if fetch else None
        return ModelRef(spec, str(gguf.parent), gguf.name) if gguf else ModelRef(spec, spec)
    path = Path(spec).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise RopesearchError(f"model file {spec} does not exist")
        return ModelRef(spec, str(path.parent), path.name)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise RopesearchError(f"model folder {spec} has no config.json: not a transformers model folder")
        return ModelRef(spec, str(path))
    if path.exists() or spec.startswith((".", "/", "~")) or spec.count("/") > 1:
        raise RopesearchError(f"model {spec!r} is neither a model folder nor a .gguf file")
    if "/" not in spec:  # hub ids are owner/name: a bare name close to one of ours is a typo of it
        close = difflib.get_close_matches(spec.lower(), _NAMES, n=1, cutoff=0.6)
        if close:
            raise RopesearchError(f"unknown model {spec!r}: did you mean {close[0]}? (shipped and demo models: "
                                  f"{', '.join(_NAMES)}; else a model folder, a .gguf file or a Hugging Face id)")
    return _hub_model(spec)


_NAMES = [*PACKAGED_MODELS, *DEMO_MODELS]


def _hub_model(spec: str) -> ModelRef:
    """A Hugging Face hub id. Where the hub cannot be reached, read from the local cache only, or fail
    at once: the hub client would otherwise retry for tens of seconds, a line per retry."""
    from huggingface_hub import constants, try_to_load_from_cache

    if constants.HF_HUB_OFFLINE or _reachable(constants.ENDPOINT):
        return ModelRef(spec, spec)
    try:
        cached = try_to_load_from_cache(spec, "config.json")
    except ValueError:  # not a valid repo id
        cached = None
    if not isinstance(cached, str):
        raise RopesearchError(f"model {spec!r} is not a shipped or demo model ({', '.join(_NAMES)}), a model "
                              f"folder or a .gguf file, and as a Hugging Face id it is not in the local cache "
                              f"while {constants.ENDPOINT} cannot be reached from this machine")
    return ModelRef(spec, spec, local_only=True)


@functools.cache
def _reachable(url: str, timeout: float = 3.0) -> bool:
    """Whether `url` answers at all (any HTTP status counts; proxies as the environment sets them)."""
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout).close()
    except urllib.error.HTTPError:
        return True
    except (OSError, ValueError):
        return False
    return True


def _not_found(ref: ModelRef, exc: Exception) -> RopesearchError:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return RopesearchError(
        f"could not load model {ref.spec!r} ({first}); give a demo name ({', '.join(_NAMES)}), a model folder, "
        "a .gguf file, or a Hugging Face id reachable from this machine"
    )


CONFIG_FIX = "fix the file, or give another --model"
# the fields of a model config that ropesearch reads, with the JSON types they must have
CONFIG_FIELDS = {"head_dim?": (int, None), "hidden_size?": int, "num_attention_heads?": int,
                 "max_position_embeddings?": int, "partial_rotary_factor?": (float, None), "rope_theta?": float,
                 "rope_parameters?": (dict, None), "rope_scaling?": (dict, None)}
ROPE_FIELDS = {"rope_theta?": float, "rope_type?": str, "type?": str, "partial_rotary_factor?": (float, None),
               "original_max_position_embeddings?": (int, None), "factor?": (float, None)}


def check_config_file(path: str | Path) -> dict:
    """A local model's config.json: a JSON object whose RoPE fields have usable types and values, checked
    before transformers reads it (which fails on these deep inside, or not at all)."""
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    path = Path(path)
    config = read_json(path, "model config", CONFIG_FIX, expect=dict)
    source = f"model config {path}"
    conform(config, CONFIG_FIELDS, source, CONFIG_FIX)
    for key in ("head_dim", "hidden_size", "num_attention_heads", "max_position_embeddings"):
        if config.get(key) is not None and config[key] < 1:
            raise damaged(source, f"field {key} must be >= 1, got {config[key]}", CONFIG_FIX)
    known = ("default", *ROPE_INIT_FUNCTIONS)
    for key in ("rope_parameters", "rope_scaling"):
        params = config.get(key)
        if not params or not any(k in params for k in ROPE_FIELDS_NAMES):
            continue  # none, or one per layer type (said by rope_base)
        conform(params, ROPE_FIELDS, source, CONFIG_FIX, key)
        theta = params.get("rope_theta")
        if theta is not None and not (math.isfinite(theta) and theta > 1):
            raise damaged(source, f"field {key}.rope_theta must be a finite number > 1, got {theta}", CONFIG_FIX)
        kind = params.get("rope_type", params.get("type"))
        if kind is not None and kind not in known:
            raise damaged(source, f"field {key}.rope_type is {kind!r}, which transformers does not know "
                          f"(known: {', '.join(known)})", CONFIG_FIX)
    head_dim = config.get("head_dim")
    partial = ((config.get("rope_parameters") or {}).get("partial_rotary_factor")
               or config.get("partial_rotary_factor") or 1.0)
    if head_dim is not None and isinstance(partial, (int, float)) and int(head_dim * partial) % 2:
        raise damaged(source, f"field head_dim is {head_dim}: with partial_rotary_factor {partial:g} that rotates "
                      f"{int(head_dim * partial)} dims, and RoPE rotates pairs (an even number)", CONFIG_FIX)
    return config


ROPE_FIELDS_NAMES = tuple(k.removesuffix("?") for k in ROPE_FIELDS)


def _check_local_config(ref: ModelRef) -> None:
    """A local folder's config.json, checked before transformers reads it (config, tokenizer or model)."""
    if not ref.gguf_file and (Path(ref.path) / "config.json").exists():
        check_config_file(Path(ref.path) / "config.json")


def load_config(ref: ModelRef):
    from huggingface_hub.errors import StrictDataclassError
    from transformers import AutoConfig

    _check_local_config(ref)
    try:
        return AutoConfig.from_pretrained(ref.path, **ref.kwargs)
    except (OSError, ValueError, TypeError, KeyError, StrictDataclassError) as exc:
        raise _not_found(ref, exc) from None


def load_tokenizer(ref: ModelRef):
    """The model's tokenizer. One built from a GGUF file is saved once in the cache (rebuilding takes ~15 s)."""
    from transformers import AutoTokenizer

    cached = _gguf_cache(ref, "tokenizers")
    if cached is not None and (cached / "tokenizer_config.json").is_file():
        return AutoTokenizer.from_pretrained(cached)
    _check_local_config(ref)
    try:
        tokenizer = AutoTokenizer.from_pretrained(ref.path, **ref.kwargs)
    except (OSError, ValueError) as exc:
        raise _not_found(ref, exc) from None
    if cached is not None:
        _save_in_cache(cached, tokenizer.save_pretrained)
    return tokenizer


def _gguf_cache(ref: ModelRef, kind: str, *extra: str) -> Path | None:
    """Where what is built from a GGUF file (its tokenizer, its de-quantised weights) is kept: one
    folder per file and `extra` (dtype, versions). The file counts by path, size, mtime, ctime, inode
    and device: a file replaced in place by one of the same size and mtime (`cp -p`) still changes
    ctime and inode. None for other models."""
    if not ref.gguf_file:
        return None
    stat = (Path(ref.path) / ref.gguf_file).stat()
    stamp = [stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino, stat.st_dev]
    key = "|".join([str(Path(ref.path).resolve() / ref.gguf_file), *map(str, stamp), *extra])
    return cache_dir() / kind / hashlib.sha256(key.encode()).hexdigest()[:16]


def _save_in_cache(cached: Path, save) -> None:
    """`save(folder)` into a folder beside `cached`, then swapped in whole: a reader never sees half."""
    import tempfile

    cached.parent.mkdir(parents=True, exist_ok=True)
    for left in cached.parent.glob(f".{cached.name}.*"):  # a process killed while saving left a whole copy
        if time.time() - left.lstat().st_mtime > 3600:
            shutil.rmtree(left, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(dir=cached.parent, prefix=f".{cached.name}."))  # a name none can plant a link at
    try:
        staging.chmod(0o777 & ~current_umask())
        save(staging)
        shutil.rmtree(cached, ignore_errors=True)
        os.replace(staging, cached)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _weights_cache(ref: ModelRef, dtype) -> tuple[Path, dict] | None:
    """Where the de-quantised weights of a GGUF model in `dtype` are kept after the first load, and
    what they are made from (SmolLM2 on a CPU: 22 s de-quantised, 0.2 s read back;
    eval/bench_model_load.py). ROPESEARCH_WEIGHT_CACHE=0 turns it off (an entry takes 2 bytes a
    parameter in bfloat16, 4 in float32)."""
    if os.environ.get("ROPESEARCH_WEIGHT_CACHE", "1") == "0" or not ref.gguf_file:
        return None
    from importlib.metadata import PackageNotFoundError, version

    import torch
    import transformers

    try:
        gguf = version("gguf")
    except PackageNotFoundError:  # transformers then says what to install
        gguf = "none"
    # what de-quantises (transformers, gguf) and what saves and reads (torch) are in the key
    versions = [WEIGHTS_CACHE_FORMAT, str(dtype), transformers.__version__, gguf, torch.__version__.split("+")[0]]
    source = {"gguf": str(Path(ref.path).resolve() / ref.gguf_file), "made_with": versions}
    return _gguf_cache(ref, "weights", *versions), source


WEIGHTS_CACHE_FORMAT = "weights@1"


@contextlib.contextmanager
def _building(cached: Path):
    """Held while one process reads or builds a cache entry: Ray workers starting together wait for
    the first to de-quantise instead of each doing it and writing a copy (released however it ends)."""
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        lock = DirectoryLock(cached.parent, wait=True).acquire()
    except OSError:  # a cache this user cannot write: read what is there, keep nothing new (said at the save)
        yield
        return
    try:
        yield
    finally:
        lock.release()


def _read_cached(auto, cached: Path, kwargs: dict):
    """The model from a cache entry, or None where there is none; a damaged entry is removed (said on
    stderr) to be built again. Running out of memory is not damage: it is raised, the entry kept."""
    import torch

    if not (cached / "config.json").is_file():
        return None
    try:
        return auto.from_pretrained(cached, **{k: v for k, v in kwargs.items() if k != "gguf_file"})
    except (MemoryError, torch.OutOfMemoryError, PermissionError):
        raise
    except Exception as exc:  # noqa: BLE001 - a cut or damaged file fails in any of the readers' own types
        print(f"warning: the cached weights in {cached} could not be read ({type(exc).__name__}: "
              f"{str(exc)[:200]}): de-quantising the GGUF file again", file=sys.stderr)
        shutil.rmtree(cached, ignore_errors=True)
        return None


def _save_weights(model, cached: Path, source: dict) -> None:
    """The loaded GGUF model as a plain folder (its weights arrive de-quantised), with `source.json`
    naming the GGUF file, dtype and versions; entries an earlier state of the same file left with the
    same dtype and versions (the file was replaced) are removed. A failed write (a full disk) costs
    only the cache, with a warning. Weights transformers kept packed (kernels for newer GGUF
    architectures) are not plain floats, and are not kept."""
    if getattr(getattr(model, "hf_quantizer", None), "packed_modules", None):
        return
    for other in cached.parent.glob("*/source.json"):
        try:
            stale = json.loads(other.read_text()) == source and other.parent != cached
        except (OSError, ValueError):
            stale = False
        if stale:
            shutil.rmtree(other.parent, ignore_errors=True)

    def save(folder: Path) -> None:
        with saved_as_plain(model):
            model.save_pretrained(folder)
        (folder / "source.json").write_text(json.dumps(source))

    try:
        _save_in_cache(cached, save)
    except Exception as exc:  # safetensors' own error type for a failed write among them
        print(f"warning: could not keep the de-quantised weights in {cached.parent} ({exc}): the next load "
              "de-quantises again", file=sys.stderr)


@contextlib.contextmanager
def saved_as_plain(model):
    """Within it, `model.save_pretrained` writes a model loaded from GGUF as plain floats (its weights
    arrive de-quantised, but transformers counts it as quantised and refuses); the model is as before
    afterwards."""
    quantizer, quantization = getattr(model, "hf_quantizer", None), getattr(model.config, "quantization_config", None)
    model.hf_quantizer = None
    if quantization is not None:
        del model.config.quantization_config
    try:
        yield model
    finally:
        model.hf_quantizer = quantizer
        if quantization is not None:
            model.config.quantization_config = quantization


def default_dtype(device=None):
    """bfloat16 on a GPU, float32 on the CPU: what models are loaded and scored in."""
    import torch

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def load_for_backend(ref: ModelRef, backend: str = "torch", device=None, dtype=None):
    """What an evaluator needs: the loaded model for torch; for vLLM only its config, since the
    engine loads the weights itself (a torch copy on the same GPU would take memory vLLM claims)."""
    if backend == "vllm":
        return load_config(ref)
    return load_model(ref, dtype=dtype, device=device)


def config_of(loaded):
    """The config of what `load_for_backend` returned: a loaded model's, or the config itself."""
    return getattr(loaded, "config", loaded)


def dtype_of(loaded):
    """The dtype scores are made in: a loaded model's own; with only a config (the vLLM engine
    loads the weights), the default one, which the engine is asked for."""
    import torch

    return next(loaded.parameters()).dtype if isinstance(loaded, torch.nn.Module) else default_dtype()


def load_model(ref: ModelRef, dtype=None, device=None, attn_implementation: str | None = None):
    """A causal LM in eval mode: float32 on CPU, bfloat16 on a GPU unless `dtype` says otherwise.

    device "auto" spreads the layers over every visible GPU (a model that does not fit one)."""
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as transformers_logging

    spread = device == "auto"
    device = torch.device("cuda" if spread or (device is None and torch.cuda.is_available()) else device or "cpu")
    dtype = dtype or default_dtype(device)
    kwargs = dict(ref.kwargs, dtype=dtype)
    if spread:
        kwargs["device_map"] = "auto"
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    # transformers' per-tensor loading bars and warnings drown our own output
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()

    check_model_folder(ref.path)  # a truncated weights file is named, not a deep traceback
    _check_local_config(ref)
    cache = _weights_cache(ref, dtype)
    if cache is None:
        model = _from_files(AutoModelForCausalLM, ref, kwargs)
    else:
        cached, source = cache
        with _building(cached):
            model = _read_cached(AutoModelForCausalLM, cached, kwargs)
            if model is None:
                model = _from_files(AutoModelForCausalLM, ref, kwargs)
                _save_weights(model, cached, source)
    return (model if spread else model.to(device)).eval()


def _from_files(auto, ref: ModelRef, kwargs: dict):
    try:
        return auto.from_pretrained(ref.path, **kwargs)
    except (OSError, ValueError) as exc:
        raise _not_found(ref, exc) from None


def rope_base(config, original_context: int | None = None) -> RopeBase:
    """The pretrained RoPE of a transformers config (any scaling it already has is set aside)."""
    arch = (getattr(config, "architectures", None) or [type(config).__name__])[0]
    params = getattr(config, "rope_parameters", None)
    if not params or "rope_theta" not in params and "rope_type" not in params:
        raise RopesearchError(f"{arch} has no rotary position embedding (no rope_parameters in its config)")
    if "rope_theta" not in params:
        raise RopesearchError(f"{arch} uses a different RoPE per layer type ({', '.join(params)}): not supported")
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    partial = params.get("partial_rotary_factor", getattr(config, "partial_rotary_factor", None) or 1.0)
    original = original_context or params.get("original_max_position_embeddings") or config.max_position_embeddings
    original = _trained_window(original, arch)
    try:
        return RopeBase(rope_theta=float(params["rope_theta"]), rotary_dim=int(head_dim * partial),
                        original_context=original)
    except (TypeError, ValueError, RopesearchError) as exc:  # head_dim 63, rope_theta "abc"...: said with the model
        raise RopesearchError(f"{arch}'s config has a RoPE ropesearch cannot use: {exc} (head_dim {head_dim}, "
                              f"partial_rotary_factor {partial}, rope_theta {params['rope_theta']!r})") from None


def _trained_window(value, arch: str) -> int:
    """original_max_position_embeddings (or max_position_embeddings): a whole token count in range."""
    whole = isinstance(value, int) or isinstance(value, float) and value.is_integer()
    if isinstance(value, bool) or not whole or not 1 <= value <= MAX_TOKENS:
        raise RopesearchError(f"{arch} config: original_max_position_embeddings (the trained window) must be a "
                              f"whole number of tokens between 1 and {MAX_TOKENS}, got {value!r}: fix the model's "
                              "config.json")
    return int(value)
