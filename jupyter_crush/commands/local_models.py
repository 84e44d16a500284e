"""``%crush model --local``: the models of the local servers answering on their usual ports."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..providers.trust import host_of

if TYPE_CHECKING:
    from ..kernel.crush import Crush
    from ..providers.local import LocalServer


def show_local_models(crush: Crush) -> None:
    """Probe the local servers (only now, when asked) and print what each one serves."""
    from ..providers.local import discover_now

    print(local_models_report(discover_now(crush.config.provider_settings())))


def local_models_report(servers: list[LocalServer]) -> str:
    """One block per answering server, its models as names to use; then those not answering."""
    lines: list[str] = []
    for server in servers:
        if server.models is None:
            continue
        lines.append(f"{server.name} at {host_of(server.base_url)}:")
        if not server.models:
            lines.append("  no models: pull or load one first")
        width = max((len(server.provider) + len(m.name) for m in server.models), default=0) + 1
        for model in server.models:
            name = f"{server.provider}:{model.name}"
            note = {False: "cannot call tools", None: "tool calls not reported"}.get(model.tools)
            lines.append(f"  {name:<{width}}  {note}" if note else f"  {name}")
    silent = [f"{s.name} ({host_of(s.base_url)})" for s in servers if s.models is None]
    if silent:
        lines.append("Not answering: " + ", ".join(silent))
    named = next((s for s in servers if s.models), None)
    if named is not None:
        lines.append(f"Use one: %crush model {named.provider}:{named.models[0].name}")
    else:
        lines.append(
            "No local server answered; start one (ollama serve, LM Studio's server, "
            "llama-server, vllm serve) or set CrushConfig.base_urls for another port"
        )
    return "\n".join(lines)
