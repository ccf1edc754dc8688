from engine.extract import extract


def test_extract_collapses_spaces():
    assert extract("  padel   club ") == "Padel Club"


def test_extract_titles():
    assert extract("the meadows") == "The Meadows"
