"""The code's shape: one concern per shared module, no import cycles, stages never import each other, and the
grading module light enough for grader worker processes (no torch, transformers or vllm)."""
import ast
import subprocess
import sys

from conftest import ROOT

STAGES = ("sample", "prepare", "train", "evaluate", "rak")
SHARED = ("common", "models", "sources", "grading", "runs", "packing", "judge", "tracking", "backends")
MAX_SHARED_LINES = 600


def local_imports(name: str) -> set[str]:
    """The project's top-level modules that ROOT/name.py imports (anywhere in the file)."""
    tree = ast.parse((ROOT / f"{name}.py").read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module.split(".")[0])
    return out & set(STAGES + SHARED)


def test_stages_never_import_each_other():
    bad = {s: sorted(local_imports(s) & set(STAGES) - {s}) for s in STAGES}
    assert not any(bad.values()), f"stages importing stages: {bad}"


def test_no_import_cycles_among_the_projects_modules():
    graph = {m: local_imports(m) - {m} for m in STAGES + SHARED}
    cycles = []

    def visit(m, path):
        for n in graph.get(m, ()):
            if n in path:
                cycles.append(path[path.index(n):] + [n])
            elif len(path) < len(graph):
                visit(n, path + [n])
    for m in graph:
        visit(m, [m])
    assert not cycles, f"{len(cycles)} import cycles, e.g. {' -> '.join(cycles[0])}"


def test_no_shared_module_over_the_limit():
    sizes = {m: len((ROOT / f"{m}.py").read_text().splitlines()) for m in SHARED}
    big = {m: n for m, n in sizes.items() if n > MAX_SHARED_LINES}
    assert not big, f"shared modules over {MAX_SHARED_LINES} lines: {big}"


def test_grading_imports_no_torch_transformers_or_vllm():
    code = (f"import sys; sys.path.insert(0, {str(ROOT)!r}); import grading; "
            "print(','.join(m for m in ('torch', 'transformers', 'vllm') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"importing grading loaded: {out.stdout.strip()}"


def test_no_helper_script_shadows_a_project_module():
    """bench/ and scripts/ go on sys.path beside the root (gpu_check, the benchmarks): a file there named like a
    root module (bench/grading.py once did) would be imported instead of it."""
    root = {p.stem for p in ROOT.glob("*.py")}
    clash = sorted(f"{d}/{p.name}" for d in ("bench", "scripts", "tests") for p in (ROOT / d).glob("*.py")
                   if p.stem in root)
    assert not clash, f"{len(clash)} helper files shadow root modules: {clash}"
