"""Statement-deletion and constant-change mutation testing, beside mutmut.

mutmut changes operators, names and literals inside expressions, but never deletes a
statement, and it leaves decorated functions (``@command``) alone. This pass makes one
mutant per statement of the target functions (the statement replaced by ``pass``, so the
module still compiles) and one per boolean or number constant in them, their parameter
defaults included (``True`` and ``False`` swapped, a number ``n`` made ``n + 1``); debug
logging is left alone. Each mutant runs the quick tests that run its statement (a constant:
the statement holding it), found by running those tests once on a copy of the unchanged
package whose target statements note the test that reaches them; in parallel workers, each
on a copy of the package: the repository's own files are never changed. A mutant is
killed when a test fails (or the tests hang past their limit); a survivor is a rule no test
pins, unless tests/mutation-survivors.md explains it.

Usage (from scripts/mutation.sh, in the repository)::

    python scripts/statement_mutation.py [--workers N] TARGET...

TARGET names a module of jupyter_crush (``agent.dispatch``, ``tools.permissions``: every
function in it) or one function in it (``kernel.submit:submit``,
``commands.session:cancel_command``).
Exits 1 when a survivor is not explained or a mutant could not be run.
"""

from __future__ import annotations

import argparse
import ast
import concurrent.futures
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

PACKAGE = "jupyter_crush"
WORK = Path("mutants/statements")
SURVIVORS_FILE = Path("tests/mutation-survivors.md")
#: How the explanations name a mutant of this pass: ``module.Qualname: line → change``.
EXPLAINED = re.compile(r"`([^`\n]+ → [^`\n]+)`")
#: The quick tests, bounded (tests/support/bounded.py); --timeout fails a %%crush cell a mutant
#: keeps blocked. Unlike mutmut, no test needs leaving out: nothing here traces calls per mutant.
PYTEST_ARGS = ["-m", "not slow", "-p", "no:cacheprovider", "--timeout=10", "-q", "-x"]


@dataclass(frozen=True)
class Mutant:
    name: str  # stable across edits elsewhere: no line numbers
    path: str  # relative to the repository
    function: str  # the target function's qualified name
    line: int
    reach: str  # the probe a test must pass to reach the change (see probes())
    source: str  # the whole mutated module


# -- making mutants ---------------------------------------------------------------------------


def parse_targets(targets: list[str]) -> dict[str, set[str] | None]:
    """Module path -> the qualified names to mutate in it (None: every function)."""
    wanted: dict[str, set[str] | None] = {}
    for target in targets:
        module, _, function = target.partition(":")
        path = f"{PACKAGE}/{module.replace('.', '/')}.py"
        if not Path(path).exists():
            raise SystemExit(f"no module {path} for target {target!r}")
        if not function:
            wanted[path] = None
        elif wanted.get(path, set()) is not None:
            wanted.setdefault(path, set()).add(function)  # type: ignore[union-attr]
    return wanted


def functions(tree: ast.Module) -> list[tuple[str, ast.FunctionDef | ast.AsyncFunctionDef]]:
    """The module's functions and methods by qualified name (nested ones belong to theirs)."""
    found = []

    def visit(body: list[ast.stmt], prefix: str) -> None:
        for node in body:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                found.append((prefix + node.name, node))
            elif isinstance(node, ast.ClassDef):
                visit(node.body, f"{prefix}{node.name}.")

    visit(tree.body, "")
    return found


def _is_inert(node: ast.stmt) -> bool:
    """A docstring, or the ``...`` body of a protocol's method: nothing to delete."""
    return (
        isinstance(node, ast.Expr)
        and isinstance(node.value, ast.Constant)
        and (isinstance(node.value.value, str) or node.value.value is Ellipsis)
    )


def _is_debug_log(node: ast.stmt) -> bool:
    """``log.debug(...)``: a line only a developer turning on debug logging sees."""
    call = node.value if isinstance(node, ast.Expr) else None
    return (
        isinstance(call, ast.Call)
        and isinstance(call.func, ast.Attribute)
        and call.func.attr == "debug"
        and isinstance(call.func.value, ast.Name)
        and call.func.value.id == "log"
    )


def _statements(function: ast.FunctionDef | ast.AsyncFunctionDef) -> list[ast.stmt]:
    """Every statement inside ``function``, nested ones too, but docstrings, ``...``, ``pass`` and
    debug logging."""
    found = []
    for node in ast.walk(function):
        if node is function or not isinstance(node, ast.stmt):
            continue
        if isinstance(node, ast.Pass) or _is_inert(node) or _is_debug_log(node):
            continue
        found.append(node)
    return found


def _constants(function: ast.FunctionDef | ast.AsyncFunctionDef) -> list[ast.Constant]:
    """The boolean and number constants of ``function``: its defaults and its body, not its
    decorators, annotations, debug logging or f-strings (whose parts have no reliable
    positions on 3.11)."""
    skip = {id(n) for decorator in function.decorator_list for n in ast.walk(decorator)}
    for node in ast.walk(function):
        if isinstance(node, ast.JoinedStr) or (isinstance(node, ast.stmt) and _is_debug_log(node)):
            skip.update(id(n) for n in ast.walk(node))
        for annotation in (getattr(node, "annotation", None), getattr(node, "returns", None)):
            if isinstance(annotation, ast.AST):
                skip.update(id(n) for n in ast.walk(annotation))
    return [
        node
        for node in ast.walk(function)
        if isinstance(node, ast.Constant)
        and type(node.value) in (bool, int, float)
        and id(node) not in skip
    ]


def _offset(lines: list[str], line: int, col: int) -> int:
    """Character offset of (1-based line, UTF-8 byte column) in the module's text."""
    text = lines[line - 1]
    return sum(len(x) for x in lines[: line - 1]) + len(text.encode()[:col].decode())


def _replace(source: str, node: ast.AST, text: str) -> str:
    lines = source.splitlines(keepends=True)
    start = _offset(lines, node.lineno, node.col_offset)
    end = _offset(lines, node.end_lineno, node.end_col_offset)  # type: ignore[arg-type]
    return source[:start] + text + source[end:]


def make_mutants(wanted: dict[str, set[str] | None]) -> tuple[list[Mutant], int]:
    """The mutants of the targets, and how many would not compile (left out)."""
    mutants: list[Mutant] = []
    invalid = 0
    for path, names in wanted.items():
        source = Path(path).read_text(encoding="utf-8")
        module = path.removeprefix(f"{PACKAGE}/").removesuffix(".py").replace("/", ".")
        tree = ast.parse(source)
        chosen = [(q, f) for q, f in functions(tree) if names is None or q in names]
        missing = (names or set()) - {q for q, _ in chosen}
        if missing:
            raise SystemExit(f"{path} has no function {', '.join(sorted(missing))}")
        for qualname, function in chosen:
            points = probes(source, path, qualname, function)
            seen: Counter[str] = Counter()
            changes: list[tuple[ast.AST, str, str]] = []
            for statement in _statements(function):
                first = ast.get_source_segment(source, statement).splitlines()[0].strip()
                more = " …" if statement.end_lineno != statement.lineno else ""
                changes.append((statement, "pass", f"{first}{more} → pass"))
            for constant in _constants(function):
                old = constant.value
                new = (not old) if isinstance(old, bool) else old + 1
                line = source.splitlines()[constant.lineno - 1].strip()
                changes.append((constant, repr(new), f"{line} ({old!r} → {new!r})"))
            for node, text, change in changes:
                mutated = _replace(source, node, text)
                try:
                    compile(mutated, path, "exec")
                except SyntaxError:
                    invalid += 1
                    continue
                name = f"{module}.{qualname}: {change}"
                seen[name] += 1
                if seen[name] > 1:
                    name += f" #{seen[name]}"
                reach = _reach(node, points, f"{path}:{qualname}")
                mutants.append(Mutant(name, path, qualname, node.lineno, reach, mutated))
    return mutants, invalid


# -- which tests reach which function ---------------------------------------------------------


PROBE = '''"""Notes which test reaches which statement (scripts/statement_mutation.py)."""
current = ""
reached = {}


def hit(function):
    reached.setdefault(function, set()).add(current)
'''


def probes(
    source: str, path: str, qualname: str, function: ast.FunctionDef | ast.AsyncFunctionDef
) -> dict[str, tuple[int, int, int]]:
    """Where to note that a test reached a statement of ``function``: probe key -> (line,
    column, last line). The function's entry, and each statement that begins its line
    (a test that never runs a statement cannot tell its deletion apart)."""
    lines = source.splitlines()
    body = [node for node in function.body if not _is_inert(node)]
    points = {}
    if body and body[0].lineno > function.lineno:
        points[f"{path}:{qualname}"] = (body[0].lineno, body[0].col_offset, function.end_lineno)
    for node in _statements(function):
        text = lines[node.lineno - 1]
        decorated = getattr(node, "decorator_list", None)
        if text[: node.col_offset].strip() or text[node.col_offset :].startswith("elif"):
            continue  # shares its line, or an elif: the probe cannot go before it
        if not decorated:
            points[f"{path}:{node.lineno}"] = (node.lineno, node.col_offset, node.end_lineno)
    return points


def _reach(node: ast.AST, points: dict[str, tuple[int, int, int]], entry: str) -> str:
    """The probe of the innermost probed statement holding ``node``; else the entry's."""
    inside = [
        (last - line, key)
        for key, (line, _, last) in points.items()
        if key != entry and line <= node.lineno and node.end_lineno <= last  # type: ignore[operator]
    ]
    return min(inside)[1] if inside else entry


def probed(source: str, path: str, names: set[str] | None) -> str:
    """``source`` with a call before each probe point of the target functions noting which
    test reached it.

    A call per statement costs the tests next to nothing, where tracing every call
    (settrace, coverage) slowed some of them (the python tool importing matplotlib in its
    worker thread) past any useful bound.
    """
    inserts = []
    for qualname, function in functions(ast.parse(source)):
        if names is None or qualname in names:
            points = probes(source, path, qualname, function)
            inserts += [(line, col, key) for key, (line, col, _) in points.items()]
    lines = source.splitlines(keepends=True)
    for line, col, key in sorted(inserts, reverse=True):
        indent = lines[line - 1][:col]
        lines[line - 1] = f"{indent}__import__('mutation_probe').hit({key!r})\n{lines[line - 1]}"
    return "".join(lines)


class TestNames:
    """A pytest plugin: tells the probe which test runs, and notes how long each test takes
    and which fail on the unchanged package."""

    def __init__(self, probe: object) -> None:
        self.probe = probe
        self.seconds: dict[str, float] = {}
        self.failed: set[str] = set()

    def pytest_runtest_logstart(self, nodeid: str, location: object) -> None:
        self.probe.current = nodeid  # type: ignore[attr-defined]

    def pytest_runtest_logreport(self, report) -> None:
        self.seconds[report.nodeid] = self.seconds.get(report.nodeid, 0.0) + report.duration
        if report.failed:
            self.failed.add(report.nodeid)


def trace_tests(copy: Path, out: Path) -> None:
    """Run in ``copy`` (probed; a fresh interpreter): which selected quick test reaches which
    target function, into ``out``."""
    import pytest

    os.chdir(copy)
    sys.path.insert(0, str(copy))
    import mutation_probe

    names = TestNames(mutation_probe)
    pytest.main([*PYTEST_ARGS[:-1], "--basetemp", "tmp", *selection()], plugins=[names])
    reached = {
        key: sorted(tests - names.failed - {""}) for key, tests in mutation_probe.reached.items()
    }
    out.write_text(json.dumps({"reached": reached, "seconds": names.seconds}))


def selection() -> list[str]:
    """The test files mutmut chooses from (pyproject's [tool.mutmut]), the same here."""
    with open("pyproject.toml", "rb") as file:
        mutmut = tomllib.load(file)["tool"]["mutmut"]
    return list(mutmut["pytest_add_cli_args_test_selection"])


# -- running ----------------------------------------------------------------------------------


def copy_package(to: Path) -> None:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "labextension")
    shutil.copytree(PACKAGE, to / PACKAGE, ignore=ignore)
    shutil.copytree("tests", to / "tests", ignore=ignore)
    shutil.copy2("pyproject.toml", to / "pyproject.toml")
    (to / "tmp").mkdir()


def run_mutant(mutant: Mutant, copy: Path, tests: list[str], limit: float) -> str:
    """Run ``tests`` against ``mutant`` in ``copy``: killed, timeout, survived or an error."""
    target = copy / mutant.path
    original = target.read_text(encoding="utf-8")
    target.write_text(mutant.source, encoding="utf-8")
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "pytest", *PYTEST_ARGS, "--basetemp", "tmp", *tests],
            cwd=copy,
            env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "PYTHONPATH": str(copy)},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            code = process.wait(limit)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            return "timeout"
    finally:
        target.write_text(original, encoding="utf-8")
    # 1: a test failed; 2: interrupted (a KeyboardInterrupt the mutant let through); 3: an
    # error inside pytest. Any of them the unchanged package does not cause.
    if code in (1, 2, 3):
        return "killed"
    return "survived" if code == 0 else f"error (pytest exit {code})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=3, help="mutants run at once (3)")
    parser.add_argument("targets", nargs="+", metavar="TARGET")
    options = parser.parse_args()
    start = time.monotonic()
    wanted = parse_targets(options.targets)
    mutants, invalid = make_mutants(wanted)
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    base = WORK / "base"
    copy_package(base)
    # Byte-compile the unchanged copy once; each mutant's own module is compiled afresh.
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(base / PACKAGE)], check=True)
    probe = WORK / "probe"
    shutil.copytree(base, probe)
    (probe / "mutation_probe.py").write_text(PROBE)
    for path, names in wanted.items():
        (probe / path).write_text(probed(Path(path).read_text(encoding="utf-8"), path, names))
        for cached in (probe / Path(path).parent / "__pycache__").glob(Path(path).stem + ".*"):
            cached.unlink()
    traced = WORK / "traced.json"
    subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; sys.path.insert(0, 'scripts'); import statement_mutation as s; "
            f"s.trace_tests(s.Path({str(probe.resolve())!r}), s.Path({str(traced.resolve())!r}))",
        ],
        stdout=subprocess.DEVNULL,
        check=False,
    )
    found = json.loads(traced.read_text())
    reached, seconds = found["reached"], found["seconds"]
    traced_at = time.monotonic()
    copies: queue.Queue[Path] = queue.Queue()
    for n in range(options.workers):
        copy = WORK / f"worker-{n}"
        shutil.copytree(base, copy)
        copies.put(copy.resolve())

    def test(mutant: Mutant) -> str:
        tests = sorted(reached.get(mutant.reach, ()), key=seconds.get)
        if not tests:
            return "no tests"
        limit = 2 * sum(seconds[t] for t in tests) + 30  # pytest's start and collection
        copy = copies.get()
        try:
            # A stale byte-compiled module of the same size and second would be taken.
            for cached in (copy / Path(mutant.path).parent / "__pycache__").glob(
                Path(mutant.path).stem + ".*"
            ):
                cached.unlink()
            return run_mutant(mutant, copy, tests, limit)
        finally:
            copies.put(copy)

    # Each outcome as it comes, for a run stopped before its end.
    with (
        (WORK / "results.txt").open("w") as log,
        concurrent.futures.ThreadPoolExecutor(options.workers) as pool,
    ):
        status = {}
        for mutant, outcome in zip(mutants, pool.map(test, mutants), strict=True):
            status[mutant] = outcome
            log.write(f"{outcome}\t{mutant.name}\n")
            log.flush()
    return report(status, invalid, time.monotonic() - start, traced_at - start)


def report(status: dict[Mutant, str], invalid: int, seconds: float, tracing: float) -> int:
    listed = SURVIVORS_FILE.read_text() if SURVIVORS_FILE.exists() else ""
    explained = set(EXPLAINED.findall(listed))
    survivors = [m for m, s in status.items() if s not in ("killed", "timeout")]
    for mutant in survivors:
        mark = f"explained in {SURVIVORS_FILE}" if mutant.name in explained else "NOT EXPLAINED"
        print(f"\n=== {mutant.name}: {status[mutant]} ({mark})")
        print(f"    {mutant.path}:{mutant.line}")
    counts = Counter(status.values())
    total = len(status)
    killed = counts["killed"] + counts["timeout"]
    equivalent = sum(1 for m in survivors if m.name in explained)
    print(
        f"\nstatement and constant mutants: {total}  "
        + "  ".join(f"{s}: {c}" for s, c in counts.most_common())
        + f"  (left out, not compiling: {invalid})"
    )
    print(f"score: {killed}/{total} killed ({100 * killed / max(total, 1):.1f}%)")
    print(
        f"non-equivalent: {killed}/{total - equivalent} killed "
        f"({100 * killed / max(total - equivalent, 1):.1f}%), {equivalent} survivors explained"
    )
    load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    print(
        f"time: {int(seconds) // 60} min {int(seconds) % 60} s, tracing {int(tracing)} s "
        f"(load average 1/5/15 min: {load})"
    )
    stale = sorted(explained - {m.name for m in survivors})
    if stale:
        print("listed as survivors but now killed or gone: " + "; ".join(stale))
    unexplained = [m for m in survivors if m.name not in explained]
    if unexplained or not total:
        print(
            f"FAILED: {len(unexplained)} statement or constant survivors not explained: pin "
            f"each one's rule with a test, or explain it in {SURVIVORS_FILE} if it cannot "
            "change behaviour",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
