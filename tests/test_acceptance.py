"""The README's first command, as a test: the default search meets the skeleton's bar."""

from __future__ import annotations

import pytest

from slimtune.search import SearchConfig, search


@pytest.mark.slow
def test_default_search_finds_a_10x_smaller_student_keeping_95_percent(ray_session, tmp_path):
    defaults = SearchConfig()
    result = search(SearchConfig(run_dir=tmp_path / "run"))
    c = result.counts  # every trial finished: trained to the end, or stopped early
    assert c["done"] + c["pruned"] == defaults.trials and c["failed"] == 0
    warm = result.run.meta["population"]  # uniform + guided plans, enqueued first
    trials = sorted(result.run.study.trials, key=lambda t: t.number)
    assert warm >= 10 and all(t.user_attrs["status"] == "complete" for t in trials[:warm])
    teacher = result.run.teacher
    front = result.front
    assert len(front) >= 3
    good = [p for p in front
            if teacher["size_bytes"] / p.size_bytes >= 10
            and p.accuracy >= 0.95 * teacher["accuracy"]]
    assert good, f"no point >= 10x smaller with >= 95 % of {teacher['accuracy']:.4f}: {front}"
