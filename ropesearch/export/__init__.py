"""Factor files, and their forms for transformers, vLLM and LongRoPE's CSV."""

from ropesearch.export.csv_factors import read_factor_csv, write_factor_csv
from ropesearch.export.factor_file import FORMAT, check_fits, load_factors, save_factors
from ropesearch.export.model_folder import FORMATS, export_csv, export_hf, export_vllm, vllm_overrides
from ropesearch.export.transformers_config import apply_to_config, rope_parameters

__all__ = [
    "FORMAT",
    "FORMATS",
    "apply_to_config",
    "check_fits",
    "export_csv",
    "export_hf",
    "export_vllm",
    "load_factors",
    "read_factor_csv",
    "rope_parameters",
    "save_factors",
    "vllm_overrides",
    "write_factor_csv",
]
