"""The package's one process pool (deepmr_utils._parallel)."""

from deepmr_utils._parallel import map_jobs


def test_map_jobs_gives_the_same_results_in_order_for_any_number_of_processes():
    assert list(map_jobs(abs, [-3, 1, -2], 2)) == list(map_jobs(abs, [-3, 1, -2], 1)) == [3, 1, 2]
    assert list(map_jobs(abs, [], 2)) == []
