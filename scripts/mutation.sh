#!/usr/bin/env bash
# Mutation testing of the cancel rules: mutmut (configured in pyproject.toml) mutates the
# dispatch state machine, a turn's records and how they are closed, the agent's glue around
# them and the magic's accept path, runs the quick tests that reach each mutant, and this
# prints the score and every survivor with its diff. From scratch: a fresh mutants/ copy.
#   bash scripts/mutation.sh             (MUTATION_CHILDREN=N: mutants tested at once, 4)
# Survivors that cannot change behaviour are listed, with the reason, in
# tests/mutation-survivors.md; any other survivor is a rule no test pins.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test,mutation
targets=(
  'jupyter_crush.agent.dispatch.*'
  'jupyter_crush.agent.calls.xǁAcceptedRunǁ*'
  'jupyter_crush.agent.records.*'
  'jupyter_crush.kernel.submit.x_submit__mutmut_*'
  'jupyter_crush.kernel.crush.xǁCrushǁkeep_run__mutmut_*'
  'jupyter_crush.kernel.prepare.x_prepare__mutmut_*'
)
for method in begin_accepted cancel cancel_all is_session_busy queued_prompts status \
  add_status_listener run _drive _fold_queued _finish shutdown _emit _status_changed; do
  targets+=("jupyter_crush.agent.session.xǁSessionAgentǁ${method}__mutmut_*")
done
rm -rf mutants && mkdir mutants
start=$(date +%s)
# mutmut draws a progress line many times a second: keep it in a log, print the outcome.
# Four children: each mostly waits on its tests' timers, so two cores keep four busy.
if ! .venv/bin/mutmut run --max-children "${MUTATION_CHILDREN:-4}" "${targets[@]}" >mutants/run.log 2>&1; then
  tail -n 40 mutants/run.log
  echo "mutmut failed; its output is in mutants/run.log" >&2
  exit 1
fi
.venv/bin/python scripts/mutation_report.py "$(($(date +%s) - start))" "${targets[@]}"
