"""The ``agent`` tool: a sub-agent that reads and searches on its own, as Crush's does.

The model hands it a self-contained task ("find where the sales data is loaded and which
columns are parsed as dates"). A sub-agent takes it in a fresh conversation (a session of its
own, linked to the tool call that ran it) with only the tools that read — ``notebook``,
``view``, ``ls``, ``glob``, ``grep``, ``variables``, and ``fetch`` when the user has allowed it
without asking — and the parent turn's model (or ``CrushConfig.agent_model``). Its final answer
is the tool's result, so the main conversation gets the conclusion rather than the file
dumps. It cannot start a sub-agent of its own.

The child turn runs through the same agent as its parent (``SessionAgent.run_child``): the
same requests and spending checks, its events streamed into the parent's run view, its cost
part of the parent turn's, and a Stop of the parent stops it at once.
"""

from __future__ import annotations

import dataclasses
import platform
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..agent.calls import SessionAgentCall
from ..core.message import FinishReason, Role
from ..core.model import Model, ToolSpec
from ..core.tools import Tool, ToolContext, ToolResult

if TYPE_CHECKING:
    from ..agent.session import SessionAgent

AGENT_TOOL = "agent"
#: What a sub-agent may use: the tools that only read, in the order it sees them.
SUB_AGENT_TOOLS = ("notebook", "view", "ls", "glob", "grep", "variables", "fetch")
#: Tools a sub-agent gets only when they would run without asking for the parent's session.
ASKING_TOOLS = frozenset({"fetch"})
#: Longest session title taken from the task.
TITLE_CHARS = 60

DESCRIPTION = """\
Launch a sub-agent that has only tools that read: notebook, view, ls, glob, grep, variables \
(and fetch when allowed). When you are searching for a keyword, a file or where something is \
defined and are not confident you will find the right match on the first try, let the \
sub-agent search for you: it reads as much as it needs and returns only its conclusion. It \
does not see this conversation, so give it a self-contained task that says exactly what to \
find and what to report. It cannot change anything."""

#: The sub-agent's system prompt (Crush's task prompt, in the notebook).
TASK_PROMPT = """\
You are a sub-agent of crush, working inside a user's Jupyter notebook kernel. Given the \
task below, use the tools available to you to answer it. You can only read: the notebook's \
cells, files, the kernel's variables.

<rules>
1. Be concise, direct, and to the point: your answer goes back to the agent that asked, not \
to a person. Answer the question directly, without introductions, conclusions or a plan of \
what you will do.
2. When relevant, share file names, cell numbers and code snippets relevant to the task.
3. Any file path in your final answer must be absolute.
</rules>

<env>
Working directory: {cwd}
Platform: {system}
Today's date: {today}
Tools available: {tools}
</env>"""


class AgentTool:
    """The ``agent`` tool of ``agent()``, the agent whose turns call it (read at each call).

    ``model`` gives the sub-agent's model (None: the parent turn's); ``allowed(session_id,
    tool)`` says whether a tool that asks would run without asking in the parent's session;
    ``workspace`` is the folder the sub-agent is told it works in; ``with_context`` adds the
    project's instructions (its context files) to the sub-agent's prompt.
    """

    def __init__(
        self,
        agent: Callable[[], SessionAgent],
        *,
        model: Callable[[], Model | None] = lambda: None,
        allowed: Callable[[str, str], bool] = lambda _session, _tool: False,
        workspace: Path | None = None,
        with_context: Callable[[str], str] = lambda prompt: prompt,
    ) -> None:
        self._agent = agent
        self._with_context = with_context
        self._model = model
        self._allowed = allowed
        self._workspace = workspace

    def tool(self) -> Tool:
        spec = ToolSpec(
            AGENT_TOOL,
            DESCRIPTION,
            {
                "type": "object",
                "properties": {
                    "prompt": {
                        "type": "string",
                        "description": "The task for the sub-agent: self-contained, saying "
                        "what to find and what to report.",
                    }
                },
                "required": ["prompt"],
                "additionalProperties": False,
            },
        )
        return Tool(spec=spec, run=self.run)

    def tools_for(self, agent: SessionAgent, session_id: str) -> list[Tool]:
        """The sub-agent's tools: the agent's tools that read, for the parent's session."""
        tools = []
        for name in SUB_AGENT_TOOLS:
            tool = agent.tools.get(name)
            if tool is None:
                continue
            if tool.changes_state:
                if name not in ASKING_TOOLS or not self._allowed(session_id, name):
                    continue
                tool = dataclasses.replace(tool, changes_state=False)  # allowed already
            tools.append(tool)
        return tools

    async def run(self, arguments: dict[str, Any], context: ToolContext) -> ToolResult:
        task = arguments.get("prompt")
        if not isinstance(task, str) or not task.strip():
            return ToolResult(
                "prompt is required: give the sub-agent a self-contained task", is_error=True
            )
        agent = self._agent()
        tools = self.tools_for(agent, context.session_id)
        model = self._model()
        # NOTHING-STARTS-WHEN-COVERED: no child session for a turn already stopped.
        context.stop_if_covered()
        child = agent.store.create_session(
            _title(task), parent=(context.session_id, context.tool_call_id)
        )
        result = await agent.run_child(
            context,
            SessionAgentCall(
                child.id,
                task,
                model=model,
                tools=tools,
                only_tools=True,
                system_prompt=self.system_prompt(tools),
            ),
        )
        context.stop_if_covered()  # a Stop of the parent: its call ends canceled, not answered
        metadata = {
            "session_id": child.id,
            "finish_reason": str(result.reason),
            "usage": dataclasses.asdict(result.usage),
            "cost": result.cost,
        }
        if result.reason is not FinishReason.END_TURN:
            detail = f": {result.message}" if result.message else ""
            return ToolResult(
                f"The sub-agent did not finish ({result.reason}{detail})", True, metadata
            )
        answer = _final_answer(agent, child.id)
        if not answer:
            return ToolResult("The sub-agent finished without an answer", True, metadata)
        return ToolResult(answer, metadata=metadata)

    def system_prompt(self, tools: list[Tool]) -> str:
        """The sub-agent's system prompt: the task prompt, then the project's instructions."""
        prompt = TASK_PROMPT.format(
            cwd=self._workspace or Path.cwd(),
            system=platform.system(),
            today=date.today().isoformat(),
            tools=", ".join(tool.name for tool in tools) or "none",
        )
        return self._with_context(prompt)


def _title(task: str) -> str:
    """The sub-agent session's title: the task's first line, marked as a sub-agent's."""
    first = next((line.strip() for line in task.splitlines() if line.strip()), "")
    if len(first) > TITLE_CHARS:
        first = first[: TITLE_CHARS - 1] + "…"
    return f"agent: {first}"


def _final_answer(agent: SessionAgent, session_id: str) -> str:
    """The text of the sub-agent's last answering step (earlier steps led up to it)."""
    for message in reversed(agent.store.list_messages(session_id)):
        if message.role is Role.ASSISTANT and message.text.strip():
            return message.text
    return ""
