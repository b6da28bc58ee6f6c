"""The reserved KV cache: generation writes keys and values in place and gives the tokens that
transformers' default cache gives, for every architecture the tests build, batched and unbatched."""

import pytest
import torch

from conftest import tiny_model
from ropesearch.tasks.kv_cache import ReservedLayer, reserved_cache_kwargs
from ropesearch.models import rope_base
from ropesearch.rope import make_factors
from ropesearch.rope.patching import patch_rope


def _generate(model, ids, new, **kwargs):
    with torch.no_grad():
        return model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=new,
                              min_new_tokens=new, pad_token_id=0, **kwargs)


@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen2"])
@pytest.mark.parametrize("rows", [1, 3])
def test_same_tokens_as_the_default_cache(arch, rows):
    model = tiny_model(arch)
    ids = torch.randint(3, model.config.vocab_size, (rows, 200), generator=torch.Generator().manual_seed(rows))
    with patch_rope(model, make_factors("yarn", rope_base(model.config), 4)) as patch:
        patch.pin(230)
        expected = _generate(model, ids, 30)
        kwargs = reserved_cache_kwargs(model, 230)
        got = _generate(model, ids, 30, **kwargs)
    assert torch.equal(got, expected)
    layer = next(iter(kwargs.values())).layers[0]
    assert isinstance(layer, ReservedLayer) and layer.keys.shape[-2] == 229  # the last token is never cached
    assert layer.keys.data_ptr() == layer._buffers[0].data_ptr()  # a view of the reserved buffer, no copy


def test_a_reservation_too_small_grows_and_stays_exact():
    model = tiny_model("llama")
    ids = torch.randint(3, model.config.vocab_size, (2, 50), generator=torch.Generator().manual_seed(0))
    expected = _generate(model, ids, 40)
    kwargs = reserved_cache_kwargs(model, 52)
    assert torch.equal(_generate(model, ids, 40, **kwargs), expected)
    assert next(iter(kwargs.values())).layers[0]._buffers[0].shape[-2] >= 89


def test_a_reset_cache_serves_a_new_prompt():
    model = tiny_model("llama")
    first, second = (torch.randint(3, model.config.vocab_size, (2, 40), generator=torch.Generator().manual_seed(s))
                     for s in (1, 2))
    kwargs = reserved_cache_kwargs(model, 60)
    _generate(model, first, 10, **kwargs)
    next(iter(kwargs.values())).reset()
    assert torch.equal(_generate(model, second, 10, **kwargs), _generate(model, second, 10))
