#!/usr/bin/env bash
# Mutation testing of the cancel rules, in two passes, from scratch
# (a fresh mutants/ copy; the repository's files are never changed):
# - mutmut (configured in pyproject.toml) changes operators, names and literals, runs the
#   quick tests that reach each mutant, and mutation_report.py prints the score and every
#   survivor with its diff;
# - scripts/statement_mutation.py deletes each statement and changes each boolean and number
#   constant (mutmut has no statement deletion), over the cancel rules' core.
#   bash scripts/mutation.sh   (MUTATION_CHILDREN=N: mutmut's mutants at once, 4;
#                               MUTATION_WORKERS=N: the statement pass's, 3)
# Survivors that cannot change behaviour are listed, with the reason, in
# tests/mutation-survivors.md; any other survivor is a rule no test pins, and fails the run.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test,mutation
# What is mutated: a module of jupyter_crush (every function in it), or one function in it
# (MODULE:function, MODULE:Class.method). The dispatch state machine and a turn's records;
# the agent's code around them, its tool start and the permission policy in front of it;
# the magic's accept path, %crush cancel and the kernel's cancel_all; the summary's stop
# checks; the store's pending writes and retry timer; the Stop click (click, cancel,
# "Stopping…"); title cancellation.
targets=(
  agent.dispatch agent.calls:AcceptedRun.__init__ agent.calls:AcceptedRun.close
  agent.records kernel.prepare:prepare tools.permissions
  kernel.submit:submit kernel.crush:Crush.keep_run kernel.crush:Crush.cancel
  kernel.crush:Crush.cancel_all kernel.crush:Crush.ensure_interrupt_handler
  kernel.crush:Crush._task_done commands.session:cancel_command
  agent.compaction:RequestShaper._keep agent.compaction:RequestShaper._stream_text
  view.delta:DeltaRunView._on_message view.delta:DeltaRunView._show_stopping
  view.comm:take_clicks_where_sent view.base:RunView.request_stop view.base:RunView._draw_stopping
)
# The store's pending writes and their one retry timer; a fallback journal's fold as well.
for method in pending_writes write _refused _arm_timer _flush_due _flush_due_locked \
  _fold_session; do
  targets+=("store.pending:Writer.${method}")
done
targets+=("store.pending:PendingWrites.__str__")
for method in start cancel cancel_all _forget _title; do
  targets+=("agent.titles:Titler.${method}")
done
for method in begin_accepted cancel cancel_all is_session_busy queued_prompts status \
  add_status_listener run _drive _call_tool _fold_queued _finish shutdown _emit _status_changed; do
  targets+=("agent.session:SessionAgent.${method}")
done
# The same targets as mutmut names its mutants.
patterns=()
for target in "${targets[@]}"; do
  module="jupyter_crush.${target%%:*}" name="${target#*:}"
  case $target in
    *:*.*) patterns+=("${module}.xǁ${name%%.*}ǁ${name#*.}__mutmut_*") ;;
    *:*) patterns+=("${module}.x_${name}__mutmut_*") ;;
    *) patterns+=("${module}.*") ;;
  esac
done
rm -rf mutants && mkdir mutants
start=$(date +%s)
# mutmut draws a progress line many times a second: keep it in a log, print the outcome.
# Four children: each mostly waits on its tests' timers, so two cores keep four busy.
if ! .venv/bin/mutmut run --max-children "${MUTATION_CHILDREN:-4}" "${patterns[@]}" >mutants/run.log 2>&1; then
  tail -n 40 mutants/run.log
  echo "mutmut failed; its output is in mutants/run.log" >&2
  exit 1
fi
failed=0
.venv/bin/python scripts/mutation_report.py "$(($(date +%s) - start))" "${patterns[@]}" || failed=1
# Statement deletion covers the cancel rules' core: the dispatch state machine, a turn's
# records and the accept handle. Each of its mutants starts pytest afresh (~2 s), so the
# whole set above would cost CI about an hour more.
.venv/bin/python scripts/statement_mutation.py --workers "${MUTATION_WORKERS:-3}" \
  agent.dispatch agent.records agent.calls || failed=1
exit "$failed"
