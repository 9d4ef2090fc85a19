"""How make test splits the suite into shards (tests/shards.py)."""

from __future__ import annotations

import pathlib

import pytest

import shards

TESTS = pathlib.Path(__file__).resolve().parents[1]


def modules() -> list[str]:
    return sorted(p.relative_to(TESTS).as_posix() for p in TESTS.glob("*/test_*.py"))


@pytest.mark.parametrize("n", [1, 2, 3])
def test_every_module_but_the_lone_one_runs_in_exactly_one_shard(n: int) -> None:
    placed = shards.assign(modules(), shards=n)
    assert set(placed) == set(modules()) - shards.ALONE
    assert set(placed.values()) == set(range(1, n + 1))
    assert "integration/test_node_teardown.py" in modules()
    assert "integration/test_node_teardown.py" not in placed


def test_the_assignment_is_the_same_whatever_the_order() -> None:
    assert shards.assign(modules(), shards=2) == shards.assign(reversed(modules()), shards=2)


def test_a_group_stays_together_and_the_load_is_balanced() -> None:
    placed = shards.assign(modules(), shards=2)
    for group in shards.GROUPS:
        present = [m for m in group if m in placed]
        assert len({placed[m] for m in present}) <= 1, present
    loads = [0.0, 0.0]
    for module, shard in placed.items():
        loads[shard - 1] += shards.SECONDS.get(module, shards.default_seconds(module))
    heaviest = max(shards.SECONDS.values())
    assert abs(loads[0] - loads[1]) <= heaviest, loads


def test_largest_first_to_the_least_loaded() -> None:
    many = [f"integration/test_{i}.py" for i in range(4)]
    weights = dict(zip(many, [10.0, 7.0, 6.0, 3.0], strict=True))
    placed = shards.assign(many, shards=2, seconds=weights, groups=())
    # 10 -> 1; 7 -> 2; 6 -> 2 (7 < 10); 3 -> 1 (10 < 13)
    assert placed == {many[0]: 1, many[1]: 2, many[2]: 2, many[3]: 1}


@pytest.mark.parametrize("value", ["", "2", "0/2", "3/2", "a/b", "1/0"])
def test_a_bad_shard_is_refused_with_what_is_expected(value: str) -> None:
    with pytest.raises(ValueError, match="expected K/N with 1 <= K <= N"):
        shards.parse(value)


def test_a_good_shard_parses() -> None:
    assert shards.parse("2/2") == (2, 2)
