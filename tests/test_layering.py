"""The package DAG, checked on every import in diffrl/ (function-level imports included), and Ray's confinement to
the runtime and cluster code."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "diffrl"

# What each top-level part of diffrl may import (besides itself). Bottom to top: algorithms and utils; envs;
# models; rewards; the runtime (platform); workers; job kinds; cluster jobs and templates; the CLI.
ALLOWED = {
    "algorithms": set(),
    "utils": set(),
    "envs": {"utils"},
    "models": {"algorithms", "envs", "utils"},
    "rewards": {"algorithms", "envs", "models", "utils"},
    "platform": {"utils"},
    "workers": {"algorithms", "envs", "models", "rewards", "platform", "utils"},
    "kinds": {"algorithms", "envs", "models", "rewards", "platform", "workers", "utils"},
    "cluster": {"kinds", "platform", "rewards", "utils"},
    "cli": {"kinds", "platform", "cluster", "rewards", "utils"},
}
RAY_ALLOWED = {"platform", "cluster"}


def imports_of(path: Path, root: Path = PACKAGE.parent) -> list[tuple[int, str]]:
    """(line, dotted module) of every import statement in `path` (below `root`), at any depth; relative imports
    resolved."""
    tree = ast.parse(path.read_text())
    package = ".".join(path.relative_to(root).with_suffix("").parts[:-1])
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.append((node.lineno, module))
            if module == "diffrl":  # `from diffrl import kinds`
                found += [(node.lineno, f"diffrl.{alias.name}") for alias in node.names]
    return found


def part_of(path: Path) -> str:
    relative = path.relative_to(PACKAGE)
    return relative.parts[0] if len(relative.parts) > 1 else relative.stem


def test_the_import_checker_sees_function_level_and_relative_imports(tmp_path):
    probe = tmp_path / "diffrl" / "algorithms" / "probe.py"
    probe.parent.mkdir(parents=True)
    probe.write_text("def f():\n    from diffrl.platform import worker\n    from ..kinds import rl\n    import ray\n")
    assert [m for _, m in imports_of(probe, tmp_path)] == ["diffrl.platform", "diffrl.kinds", "ray"]


def test_packages_import_each_other_as_a_dag():
    violations = []
    for path in sorted(PACKAGE.rglob("*.py")):
        part = part_of(path)
        if part == "__init__":
            continue
        assert part in ALLOWED, f"{path}: top-level part {part!r} has no layer in ALLOWED"
        for line, module in imports_of(path):
            if not module.startswith("diffrl."):
                continue
            target = module.split(".")[1]
            if target != part and target not in ALLOWED[part]:
                violations.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {part} imports {module}")
    assert not violations, "\n".join(violations)


def test_the_allowed_graph_is_acyclic():
    visiting, done = set(), set()

    def visit(node: str, trail: list[str]) -> None:
        assert node not in visiting, f"cycle: {' -> '.join(trail + [node])}"
        if node in done:
            return
        visiting.add(node)
        for child in ALLOWED[node]:
            visit(child, trail + [node])
        visiting.discard(node)
        done.add(node)

    for node in ALLOWED:
        visit(node, [])


def test_ray_is_imported_only_by_the_runtime_and_cluster_code():
    offenders = [f"{path.relative_to(PACKAGE.parent)}:{line}"
                 for path in sorted(PACKAGE.rglob("*.py")) if part_of(path) not in RAY_ALLOWED
                 for line, module in imports_of(path) if module == "ray" or module.startswith("ray.")]
    assert not offenders, offenders


def test_no_module_is_over_400_lines():
    long = {str(p.relative_to(PACKAGE.parent)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 400}
    assert not long, long
