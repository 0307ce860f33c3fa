"""The order ``make test`` starts its modules in: the longest first, which only holds while the named files exist and
pytest-xdist keeps the collection order."""
from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _conftest():
    spec = importlib.util.spec_from_file_location("tests_conftest", ROOT / "tests" / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_longest_modules_exist_and_make_test_keeps_their_order():
    longest = _conftest().LONGEST_FIRST
    assert longest and all((ROOT / path).is_file() for path in longest), longest
    recipe = (ROOT / "Makefile").read_text().split("\ntest: ", 1)[1].split("\n\n", 1)[0]
    assert "--dist loadscope --no-loadscope-reorder" in recipe  # xdist would otherwise sort scopes by test count


def test_items_of_the_longest_modules_sort_first_and_the_rest_keep_their_order():
    conftest = _conftest()

    class Item:
        def __init__(self, nodeid: str):
            self.nodeid = nodeid

    names = ["tests/a.py::x", conftest.LONGEST_FIRST[1] + "::Cell 0", "tests/b.py::y",
             conftest.LONGEST_FIRST[0] + "::Cell 0", "tests/a.py::z"]
    ordered = [i.nodeid for i in sorted(map(Item, names), key=conftest._start_rank)]
    assert ordered == [names[3], names[1], names[0], names[2], names[4]]
