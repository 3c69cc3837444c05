"""docs/benchmarks.md keeps every objective: the method comparison has a measured row for each algorithm the RL
learner accepts, and the benchmark that writes it runs each one's shapes job."""

import re
import sys
import typing
from pathlib import Path

import pytest

from diffrl.kinds.rl.config import LearnerConfig

REPO = Path(__file__).resolve().parents[1]


def section(name: str) -> str:
    text = (REPO / "docs/benchmarks.md").read_text()
    match = re.search(rf"^## {re.escape(name)}\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    assert match, f"docs/benchmarks.md has no section {name!r}"
    return match.group(1)


def algorithms() -> tuple[str, ...]:
    return typing.get_args(LearnerConfig.model_fields["algorithm"].annotation)


def check_measured_row(algorithm: str) -> None:
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        from compare_methods import METHODS
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    assert set(algorithms()) <= set(METHODS) and len(algorithms()) >= 3  # METHODS adds recipes (MixGRPO-Flash, ...)
    rows = {line.split("|")[1].strip(): line for line in section("Method comparison").splitlines()
            if line.startswith("| ") and not line.startswith("| method") and not line.startswith("| ---")}
    assert (REPO / f"configs/shapes_{algorithm}.yaml").is_file()
    assert METHODS[algorithm] in rows, f"docs/benchmarks.md 'Method comparison' has no row for {algorithm}"
    final = rows[METHODS[algorithm]].split("|")[3].strip()
    assert re.fullmatch(r"0\.\d{3}", final), f"{algorithm}'s final held-out reward is not a measured number"


@pytest.mark.parametrize("algorithm", algorithms())
def test_the_method_comparison_has_a_measured_row_for_every_objective(algorithm):
    check_measured_row(algorithm)


def test_readmes_concepts_describe_every_job_kind_as_shipped():
    from diffrl.kinds import KINDS

    readme = (REPO / "README.md").read_text()
    concepts = re.search(r"^## Concepts\n(.*?)(?=^## )", readme, re.S | re.M).group(1)
    kinds_bullet = re.search(r"- \*\*Job kinds\.\*\*(.*?)\n- \*\*", concepts, re.S).group(1)
    shipped = [name for name, kind in KINDS.items() if kind.config.__module__.startswith("diffrl.")]  # not test kinds
    assert len(shipped) >= 5
    for kind in shipped:
        assert f"`{kind}`" in kinds_bullet, f"README's Concepts does not describe the {kind} kind"
    assert "comes next" not in concepts
