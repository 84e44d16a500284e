"""Settings for the notebook surface, as a traitlets ``Configurable``.

Set them in a cell (``%config CrushConfig.model = "openai:gpt-4o"``), in
``ipython_config.py`` (``c.CrushConfig.max_steps = 10``), or through the
environment for the two that are commonly machine-specific (``CRUSH_MODEL``,
``CRUSH_DATA_DIR``).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from traitlets import (
    Bool,
    CaselessStrEnum,
    Dict,
    Float,
    Int,
    List,
    TraitError,
    TraitType,
    Unicode,
    default,
    observe,
    validate,
)
from traitlets.config import Configurable

from ..core.remote import looks_remote, store_place
from ..core.secrets import remember, remember_url

if TYPE_CHECKING:
    from ..providers import ProviderSettings

OPENAI_DEFAULT = "openai:gpt-4o"
ANTHROPIC_DEFAULT = "anthropic:claude-sonnet-4-20250514"
#: Offline default: for each prompt, the recorded real stream that answered it.
REPLAY_DEFAULT = "replay:auto"


def default_model_name(environ: os._Environ[str] | dict[str, str] | None = None) -> str:
    """The model a fresh kernel talks to: whichever provider has a key, else a replay."""
    return default_model_choice(environ)[0]


def default_model_choice(
    environ: os._Environ[str] | dict[str, str] | None = None,
) -> tuple[str, str]:
    """The model a fresh kernel talks to, and the environment variable that chose it
    ("" for the offline replay)."""
    env = os.environ if environ is None else environ
    if env.get("CRUSH_MODEL"):
        return env["CRUSH_MODEL"], "CRUSH_MODEL"
    if env.get("OPENAI_API_KEY"):
        return OPENAI_DEFAULT, "OPENAI_API_KEY"
    if env.get("ANTHROPIC_API_KEY"):
        return ANTHROPIC_DEFAULT, "ANTHROPIC_API_KEY"
    return REPLAY_DEFAULT, ""


class _MaskedKeys(dict):
    """Provider id -> API key, with a repr that shows only which providers have one:
    ``%config CrushConfig`` prints current values into the cell's output."""

    def __repr__(self) -> str:
        return "{" + ", ".join(f"{name!r}: '***'" for name in self) + "}"


class SecretKeys(TraitType):
    """A trait holding API keys by provider id, never shown in full."""

    default_value = _MaskedKeys()
    info_text = "a dict of provider id -> API key"

    def validate(self, obj: Any, value: Any) -> _MaskedKeys:
        if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()
        ):
            self.error(obj, value)
        remember(value.values())  # tool output is redacted of these from now on
        return _MaskedKeys(value)

    def default_value_repr(self) -> str:
        return "{}"


class CrushConfig(Configurable):
    """Configuration of ``%%crush`` in this kernel."""

    model = Unicode(
        help="Default model as 'provider:model'. Default: $CRUSH_MODEL, else openai:gpt-4o "
        "when OPENAI_API_KEY is set, else Anthropic when ANTHROPIC_API_KEY is set, "
        "else a replay of a recorded real stream.",
    ).tag(config=True)

    data_dir = Unicode(
        help="Directory of the transcript store. Default: $CRUSH_DATA_DIR, else .crush/ in "
        "the notebook's folder ($KERNEL_WORKING_DIR for a gateway kernel that can see it, "
        "else the kernel's working directory); a gateway kernel that cannot see the "
        "notebook's folder uses the user's data directory.",
    ).tag(config=True)

    yolo = Bool(
        False,
        help="Allow state-changing tools without asking.",
    ).tag(config=True)

    tools = List(
        Unicode(),
        default_value=None,
        allow_none=True,
        help="Names of the tools the agent may call (None: all of them: python, variables, "
        "notebook, insert_cell, edit_cell, run_cell, view, glob, grep, ls, write, edit, bash, "
        "fetch, agent). Read when the agent is made.",
    ).tag(config=True)

    allowed_tools = List(
        Unicode(),
        help="State-changing tools that run without a permission prompt, e.g. ['python'].",
    ).tag(config=True)

    max_steps = Int(25, help="Most model requests one prompt may make.").tag(config=True)

    max_cost = Float(
        0.0,
        min=0.0,
        help="Most dollars one session may spend (the costs the transcript store records); "
        "a request that could take it past this is not sent and the turn stops saying so. "
        "0: no cap.",
    ).tag(config=True)

    max_cost_per_day = Float(
        0.0,
        min=0.0,
        help="Most dollars all sessions of the transcript store may spend since local "
        "midnight; a request that could take them past this is not sent. 0: no cap.",
    ).tag(config=True)

    history_chars = Int(
        400_000,
        help="For a model whose context window is unknown: characters of the session's "
        "conversation sent with each request (about 4 a token); older turns beyond it are "
        "left out of the request, never out of the store.",
    ).tag(config=True)

    auto_compact = Bool(
        True,
        help="Summarize a session's older turns when the next request would leave less than "
        "the model's reserve free (the larger of its output limit and 20% of its window); "
        "False leaves the oldest turns out of the request instead. The store keeps them all.",
    ).tag(config=True)

    context_window = Int(
        0,
        help="The model's context window in tokens; 0 takes it from crush.json's model entry "
        "or the genai-prices model table.",
    ).tag(config=True)

    titles = Bool(
        True,
        help="Title each new session with a short request to a model after its first prompt; "
        "False keeps the title made from the prompt and sends no extra request.",
    ).tag(config=True)

    title_model = Unicode(
        "",
        help="Model that titles a new session after its first prompt, as 'provider:model'; "
        "empty uses crush.json's models.small when there is one, else the session's model.",
    ).tag(config=True)

    agent_model = Unicode(
        "",
        help="Model of the agent tool's sub-agent, as 'provider:model'; empty uses the model "
        "answering the prompt.",
    ).tag(config=True)

    redraw_rate = Float(
        30.0,
        help="Most redraws per second of a streaming answer; tokens in between are coalesced.",
    ).tag(config=True)

    undo_copy_limit = Int(
        100 * 2**20,
        min=0,
        help="Largest object (bytes; 100 MB) a python call may change in place that %crush "
        "undo keeps a copy of, to put back; a larger one is named as not restored. 0 keeps "
        "no copies.",
    ).tag(config=True)

    run_view = CaselessStrEnum(
        ["delta", "widgets"],
        default_value="delta",
        help="How a run is shown live: 'delta' sends the page only what is new (an "
        "anywidget module); 'widgets' re-sends whole ipywidgets values at each redraw "
        "(kept for comparison).",
    ).tag(config=True)

    wait = CaselessStrEnum(
        ["auto", "always", "never"],
        default_value="auto",
        help="Whether a %%crush cell blocks until its answer is complete. 'auto' blocks "
        "only when the front end cannot interact (nbclient, papermill, nbconvert "
        "--execute, or $CRUSH_WAIT=1); %%crush --wait always blocks.",
    ).tag(config=True)

    replay = CaselessStrEnum(
        ["auto", "off", "strict", "verify"],
        default_value="auto",
        help="What a %%crush cell does when the store holds its answer "
        "(jupyter_crush.kernel.rerun): 'auto' replays an unchanged cell's recorded turn "
        "and asks afresh when anything changed; 'strict' replays or fails the cell saying "
        "what changed, and stops a replay before a recorded call with effects outside the "
        "kernel rather than use its recorded result (for CI); 'off' always asks. "
        "%%crush --fresh always asks. 'verify' (%crush verify's fresh kernel) replays as "
        "'auto' does and refuses a cell that would ask, --fresh included.",
    ).tag(config=True)

    system_prompt = Unicode(
        "",
        help="System prompt; empty uses the built-in one (jupyter_crush.kernel.prompt), "
        "which tells the model it runs in this notebook kernel and which tools it has.",
    ).tag(config=True)

    api_keys = SecretKeys(
        help="API keys by provider id, e.g. {'openai': '...'}; most specific source, above "
        "crush.json and the SDKs' variables (OPENAI_API_KEY, ANTHROPIC_API_KEY). Never shown.",
    ).tag(config=True)

    base_urls = Dict(
        key_trait=Unicode(),
        value_trait=Unicode(),
        help="Base URLs by provider id, e.g. {'openai': 'http://127.0.0.1:8080/v1'} for a "
        "local OpenAI-compatible server.",
    ).tag(config=True)

    openai_apis = Dict(
        key_trait=Unicode(),
        value_trait=Unicode(),
        help="Force OpenAI's Responses API or Chat Completions for a model or a provider, "
        "e.g. {'openai:gpt-5': 'chat', 'myproxy': 'responses'}; OpenAI's own models at its "
        "own endpoint take the Responses API, every other server Chat Completions.",
    ).tag(config=True)

    crush_config = Unicode(
        "",
        help="Path of a Crush crush.json to read providers and models from; empty searches "
        "./crush.json, ./.crush.json and ~/.config/crush/crush.json.",
    ).tag(config=True)

    trust_project_config = Bool(
        False,
        help="Apply every crush.json outside your config directory whole, as if trusted with "
        "%crush trust (for CI and headless runs; $CRUSH_TRUST_PROJECT_CONFIG=1 does the same). "
        "Otherwise a folder's crush.json sets MCP servers, endpoints, keys and $VAR values "
        "only once you trusted it as it is now.",
    ).tag(config=True)

    mcp_servers = Dict(
        key_trait=Unicode(),
        value_trait=Dict(),
        help="MCP servers whose tools the agent may use, by name, in crush.json's shape: "
        "{'db': {'type': 'stdio', 'command': 'uvx', 'args': ['mcp-server-sqlite']}} or "
        "{'api': {'type': 'http', 'url': '...', 'headers': {...}}}; added to crush.json's "
        '"mcp" section, winning by name. Read at the start of each prompt.',
    ).tag(config=True)

    max_retries = Int(
        2, help="Retries of a failed provider request (429, 5xx, connection errors)."
    ).tag(config=True)

    request_timeout = Float(
        300.0,
        help="Seconds without a byte from the provider, once it answers, before a request fails.",
    ).tag(config=True)

    answer_timeout = Float(
        60.0,
        help="Seconds for the provider to start answering, retries included: a server that "
        "accepts the connection and never answers fails within this.",
    ).tag(config=True)

    image_input = Bool(
        None,
        allow_none=True,
        help="Send figures and images to the model (True) or a line of text for each "
        "(False); None decides from the model's name.",
    ).tag(config=True)

    def provider_settings(self) -> ProviderSettings:
        """These settings in the form the providers take."""
        from ..providers import ProviderSettings

        return ProviderSettings(
            api_keys=dict(self.api_keys),
            base_urls=dict(self.base_urls),
            openai_apis=dict(self.openai_apis),
            crush_config=self.crush_config or None,
            max_retries=self.max_retries,
            read_timeout=self.request_timeout,
            answer_timeout=self.answer_timeout,
            image_input=self.image_input,
            trust_project_config=self.trust_project_config,
        )

    #: The data_dir the kernel's transcript store was opened with; fixed from then on.
    opened_data_dir = Unicode(None, allow_none=True)

    @validate("data_dir")
    def _check_data_dir(self, proposal: dict) -> str:
        # Compared with the opened path, not the current value: %config sets traits while
        # holding notifications and validates afterwards, when the value is already new.
        opened = self.opened_data_dir
        if opened is not None and proposal["value"] != opened:
            raise TraitError(
                "data_dir cannot change once the transcript store is open; set it before the "
                "first %%crush, in ipython_config.py or $CRUSH_DATA_DIR, or restart the kernel"
            )
        return proposal["value"]

    @validate("base_urls")
    def _remember_url_credentials(self, proposal: dict) -> dict:
        for url in proposal["value"].values():
            remember_url(url)  # a user:password in a URL is redacted from tool output
        return proposal["value"]

    @default("model")
    def _default_model(self) -> str:
        name, self._model_source = default_model_choice()
        return name

    @observe("model")
    def _model_chosen(self, change: dict) -> None:
        self._model_source = "CrushConfig.model"

    def nothing_reached_a_remote_kernel(self) -> bool:
        """Whether the model is the offline replay only because no key and no CRUSH_MODEL
        reached this gateway kernel (rather than by anyone's choice)."""
        if self.model != REPLAY_DEFAULT or self.api_keys:
            return False
        # Read after the model: its default is made on first read, noting where it came from.
        return getattr(self, "_model_source", None) == "" and looks_remote()

    @default("data_dir")
    def _default_data_dir(self) -> str:
        self._default_place = store_place()
        return self._default_place.path

    def store_line(self) -> str:
        """Where the transcript store is (or will be) and why there, in one line."""
        path = os.path.abspath(os.path.expanduser(self.data_dir))
        place = getattr(self, "_default_place", None)
        chosen = place is not None and self.data_dir == place.path
        return f"transcripts: {path} ({place.reason if chosen else 'from CrushConfig.data_dir'})"
