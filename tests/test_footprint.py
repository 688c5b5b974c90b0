"""What each user script drags with it: the project files it imports, transitively, and their lines (wc -l).

`python tests/test_footprint.py` prints the README's "What each script needs" table. Imports at a module's top
level are always needed; imports inside a function (e.g. compute_fid.py for train_*.py --eval-every, demo.py for
demo: data) only when that feature is used, and are listed apart.
"""
import ast
import itertools
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROJECT = {f[:-3] for f in os.listdir(ROOT) if f.endswith(".py")}
USER_SCRIPTS = ["train_wgan", "train_transfer", "train_kd", "createsamples", "compute_fid", "report", "data"]


def lines(module):
    with open(os.path.join(ROOT, module + ".py"), encoding="utf-8") as f:
        return sum(1 for _ in f)


def imports(module):
    """(top-level project imports, project imports inside functions) of one module."""
    with open(os.path.join(ROOT, module + ".py"), encoding="utf-8") as f:
        tree = ast.parse(f.read())
    top, lazy = set(), set()

    def visit(node, in_function):
        for child in ast.iter_child_nodes(node):
            names = []
            if isinstance(child, ast.Import):
                names = [a.name.split(".")[0] for a in child.names]
            elif isinstance(child, ast.ImportFrom) and child.module and not child.level:
                names = [child.module.split(".")[0]]
            (lazy if in_function else top).update(n for n in names if n in PROJECT and n != module)
            visit(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))
    visit(tree, False)
    return top, lazy


def closure(module):
    """(modules always needed, including itself; modules needed only by some features)."""
    always, todo = {module}, [module]
    while todo:
        top, _ = imports(todo.pop())
        for m in top - always:
            always.add(m)
            todo.append(m)
    optional = set()
    for m in always:
        optional |= imports(m)[1]
    todo = list(optional - always)
    while todo:
        m = todo.pop()
        for n in set().union(*imports(m)) - always - optional:
            optional.add(n)
            todo.append(n)
    return always, optional - always


def table():
    rows = ["| script | needs (always) | lines | only for some features |", "|---|---|---|---|"]
    for s in USER_SCRIPTS:
        always, optional = closure(s)
        names = " + ".join(f"{m}.py" for m in [s] + sorted(always - {s}))
        extra = ", ".join(f"{m}.py ({lines(m):,})" for m in sorted(optional)) or "-"
        rows.append(f"| {s}.py | {names} | {sum(map(lines, always)):,} | {extra} |")
    return "\n".join(rows)


def test_compute_fid_needs_nothing_of_ours():
    assert closure("compute_fid") == ({"compute_fid"}, set())


def test_createsamples_needs_only_arch():
    assert closure("createsamples")[0] == {"createsamples", "arch"}


def test_report_needs_nothing_of_ours_and_no_torch():
    assert closure("report")[0] == {"report"}
    with open(os.path.join(ROOT, "report.py"), encoding="utf-8") as f:
        tree = ast.parse(f.read())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert not imported & {"torch", "torchvision", "numpy", "scipy"}


@pytest.mark.parametrize("script", ["train_wgan", "train_kd", "train_transfer"])
def test_training_scripts_need_arch_data_and_the_harness_at_most(script):
    always, optional = closure(script)
    allowed = {script, "arch", "data", "harness"} | ({"train_wgan"} if script == "train_transfer" else set())
    assert always <= allowed, always - allowed
    assert optional <= {"compute_fid", "report", "demo"}, optional  # --eval-every, quality.png, demo: data


def test_harness_is_short_functions():
    """No function or method of harness.py is longer than 40 lines (the loops call each one visibly)."""
    with open(os.path.join(ROOT, "harness.py"), encoding="utf-8") as f:
        tree = ast.parse(f.read())
    long = {n.name: n.end_lineno - n.lineno + 1 for n in ast.walk(tree)
            if isinstance(n, ast.FunctionDef) and n.end_lineno - n.lineno + 1 > 40}
    assert not long, long


def test_a_copy_without_demo_py_says_it_needs_it_for_demo_data(tmp_path):
    for name in ("train_wgan.py", "arch.py", "data.py", "harness.py"):  # the README's row, demo.py left out
        shutil.copy(os.path.join(ROOT, name), tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    res = subprocess.run([sys.executable, "train_wgan.py", "--data", "demo:cats", "--device", "cpu", "--out", "run"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 2 and res.stderr.count("\n") == 1, res.stderr
    assert "demo data needs demo.py" in res.stderr and not (tmp_path / "run").exists()


def readme_table():
    """The "What each script needs" table of README.md, as printed there."""
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    lines = readme.split("### What each script needs", 1)[1].splitlines()
    first = next(i for i, ln in enumerate(lines) if ln.startswith("|"))
    rows = itertools.takewhile(lambda ln: ln.startswith("|"), lines[first:])
    return "\n".join(rows)


def test_the_readme_table_is_the_computed_one():
    assert readme_table() == table(), "README.md is out of date: paste `python tests/test_footprint.py` over its table"


if __name__ == "__main__":
    sys.exit(print(table()))
