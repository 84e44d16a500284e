"""Cost of one model step from its token usage.

Prices come from ``genai-prices`` (pydantic's maintained price table, shipped
as a data snapshot inside the package, so lookups work offline; we never call
its network updater). A model it does not know costs ``None``: the transcript
says "unknown" rather than a wrong number.
"""

from __future__ import annotations

import warnings

from genai_prices import Usage as PriceUsage
from genai_prices import calc_price
from genai_prices.data_snapshot import get_snapshot
from genai_prices.types import ModelInfo

from ..core.message import Usage

#: Our provider ids whose names genai-prices knows under another id.
_PRICE_PROVIDER = {
    "openai": "openai",
    "anthropic": "anthropic",
    "groq": "groq",
    "openrouter": "openrouter",
    "azure": "azure",  # by deployment name: priced when it is the model's name
    "gemini": "google",
}

#: Local servers: nothing is billed, but we cannot know that a model is local
#: on a custom endpoint, so only these built-ins are free.
_FREE_PROVIDERS = frozenset({"ollama", "lmstudio", "llamacpp", "vllm"})


def step_cost(
    provider: str, model: str, usage: Usage, *, base_url: str | None = None
) -> float | None:
    """Dollars for one request, or ``None`` when the model's price is unknown."""
    if provider in _FREE_PROVIDERS:
        return 0.0
    # genai-prices counts cached tokens inside input_tokens; ours keeps them apart.
    price_usage = PriceUsage(
        input_tokens=usage.input_tokens + usage.cache_read_tokens + usage.cache_write_tokens,
        output_tokens=usage.output_tokens,
        cache_read_tokens=usage.cache_read_tokens,
        cache_write_tokens=usage.cache_write_tokens,
    )
    price_provider = _PRICE_PROVIDER.get(provider)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if price_provider is not None:
                result = calc_price(price_usage, model, provider_id=price_provider)
            elif base_url:
                # A custom endpoint: genai-prices matches known hosts by URL.
                result = calc_price(price_usage, model, provider_api_url=base_url)
            else:
                return None
    except (LookupError, ValueError):
        return None
    return float(result.total_price)


def model_info(provider: str, model: str) -> ModelInfo | None:
    """genai-prices' entry for ``model`` (its context window among others), or None."""
    price_provider = _PRICE_PROVIDER.get(provider)
    if price_provider is None or not model:
        return None
    try:
        return get_snapshot().find_provider_model(model, None, price_provider, None)[1]
    except (LookupError, ValueError):
        return None
