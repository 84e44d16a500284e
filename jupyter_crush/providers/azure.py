"""Azure OpenAI deployments, on the SDK's ``AsyncAzureOpenAI`` client.

The model of ``azure:NAME`` is a deployment of the resource at the provider's endpoint
(``AZURE_OPENAI_ENDPOINT`` or crush.json's ``base_url``), asked with its ``api-version``
(``OPENAI_API_VERSION`` or crush.json's ``api_version``) and its key in the ``api-key`` header
(``AZURE_OPENAI_API_KEY``). The SDK builds the URLs: chat completions at
``/openai/deployments/NAME/chat/completions``, the Responses API at ``/openai/responses`` with
the deployment as the model. Deployments take Chat Completions unless the Responses API is
chosen for them (``ProviderSettings.openai_apis`` or crush.json's ``"api"``): whether a
deployment serves it depends on its model and the api-version, which the name does not tell.
"""

from __future__ import annotations

from typing import Any

import openai

from .openai import OpenAIModel
from .responses import ResponsesModel


class _AzureClient:
    config: Any

    def _make_client(self, **options: Any) -> openai.AsyncAzureOpenAI:
        return openai.AsyncAzureOpenAI(
            azure_endpoint=options.pop("base_url"),
            api_version=self.config.api_version,
            **options,
        )


class AzureChatModel(_AzureClient, OpenAIModel):
    """An Azure OpenAI deployment asked through chat completions."""


class AzureResponsesModel(_AzureClient, ResponsesModel):
    """An Azure OpenAI deployment asked through the Responses API."""
