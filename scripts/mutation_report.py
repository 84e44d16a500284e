"""Print the score of a mutmut run and every surviving mutant with its diff.

Usage (from scripts/mutation.sh): ``python scripts/mutation_report.py SECONDS PATTERN...``,
in the repository, after ``mutmut run PATTERN...``. Reads mutmut's results in mutants/; a
survivor listed in tests/mutation-survivors.md (by its name in backquotes) is marked as
explained there. Exits 1 when any survivor is not explained or a mutant was not run, so a
rule that loses its test fails the run.
"""

import fnmatch
import json
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

from mutmut.stats import status_by_exit_code

SURVIVORS_FILE = Path("tests/mutation-survivors.md")
KILLED = {"killed", "timeout"}  # a mutant that hangs the tests is caught too
UNRUN = {"not checked", "check was interrupted by user"}  # an interrupted run


def main(seconds: int, patterns: list[str]) -> int:
    """Print the report; 1 if a survivor is not explained or a mutant was not run, else 0."""
    status: dict[str, str] = {}
    for meta in Path("mutants").rglob("*.meta"):
        for name, code in json.loads(meta.read_text())["exit_code_by_key"].items():
            if any(fnmatch.fnmatchcase(name, p) for p in patterns):
                status[name] = status_by_exit_code[code]
    listed = SURVIVORS_FILE.read_text() if SURVIVORS_FILE.exists() else ""
    explained = set(re.findall(r"`([\w.ǁ]+__mutmut_\d+)`", listed))
    survivors = sorted(n for n, s in status.items() if s not in KILLED | UNRUN)
    for name in survivors:
        mark = "explained in " + str(SURVIVORS_FILE) if name in explained else "NOT EXPLAINED"
        print(f"\n=== {name}: {status[name]} ({mark})")
        diff = subprocess.run(
            [sys.executable, "-m", "mutmut", "show", name], capture_output=True, text=True
        )
        print(diff.stdout.strip().split("\n", 1)[-1])
    counts = Counter(status.values())
    killed = sum(counts[s] for s in KILLED)
    total = len(status)
    equivalent = sum(1 for n in survivors if n in explained)
    print(f"\nmutants: {total}  " + "  ".join(f"{s}: {c}" for s, c in counts.most_common()))
    print(f"score: {killed}/{total} killed ({100 * killed / max(total, 1):.1f}%)")
    print(
        f"non-equivalent: {killed}/{total - equivalent} killed "
        f"({100 * killed / max(total - equivalent, 1):.1f}%), {equivalent} survivors explained"
    )
    # The machine may be shared: the load says how much of the time was others' work.
    load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"time: {seconds // 60} min {seconds % 60} s (load average 1/5/15 min: {load})")
    stale = sorted(explained - set(survivors))
    if stale:
        print("listed as survivors but now killed or gone: " + ", ".join(stale))
    unexplained = [n for n in survivors if n not in explained]
    unrun = sum(counts[s] for s in UNRUN)
    if unexplained or unrun or not total:
        print(
            f"FAILED: {len(unexplained)} survivors not explained, {unrun} mutants not run, "
            f"{total} mutants in all: pin each survivor's rule with a test, or explain it in "
            f"{SURVIVORS_FILE} if it cannot change behaviour",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1]), sys.argv[2:]))
