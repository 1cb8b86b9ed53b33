from actors.engine.ledger import Yields, prompts_wanted

R = Yields(candidates_per_prompt=5.0, keep=0.5, task=0.7)


def test_start_of_run_asks_for_enough_prompts_not_more():
    # 20 tasks wanted, nothing waiting: 20 / (5 * 0.5) = 8 prompts, capped by the limit.
    assert prompts_wanted(R, 20, 0, 0, 0, limit=5) == 5
    assert prompts_wanted(R, 20, 0, 0, 5, limit=5) == 3
    assert prompts_wanted(R, 20, 0, 0, 8, limit=5) == 0


def test_backlog_counts_as_supply():
    assert prompts_wanted(R, 4, 0, 8, 0, limit=5) == 0      # 8 waiting * 0.5 >= 4
    assert prompts_wanted(R, 4, 0, 2, 0, limit=5) == 2      # (4 - 1) / 2.5 -> 2


def test_expected_failures_keep_a_little_supply_coming():
    # No room now, 10 admitted in flight, 30% expected to fail: 3 more admissions to plan for.
    assert prompts_wanted(R, 0, 10, 0, 0, limit=5) == 2
    assert prompts_wanted(Yields(5.0, 0.5, 1.0), 0, 10, 0, 0, limit=5) == 0


def test_nothing_when_done():
    assert prompts_wanted(R, 0, 0, 0, 0, limit=5) == 0


def test_a_run_with_no_yield_yet_still_asks_up_to_the_limit():
    # Nothing kept so far: each prompt counts as 0.05 of a task, never as none.
    assert prompts_wanted(Yields(0.0, 0.0, 0.7), 1, 0, 0, 0, limit=5) == 5
    assert prompts_wanted(Yields(0.0, 0.0, 0.7), 1, 0, 0, 19, limit=5) == 1
