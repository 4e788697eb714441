"""errors.first_line: the one-line form of an exception's message that error reports use."""

from __future__ import annotations

from simexplain import zoo
from simexplain.errors import first_line
from simexplain.evaluation import common


def test_first_line_takes_the_first_non_blank_line_and_cuts_it():
    exc = ValueError("\n  bad header  \nsecond line")
    assert first_line(exc) == "bad header"
    assert first_line(exc, 3) == "bad"


def test_an_empty_message_is_named_by_the_type_or_the_given_word():
    assert first_line(RuntimeError()) == "RuntimeError"
    assert first_line(OSError("  \n")) == "OSError"
    assert first_line(KeyError(), empty="unreadable") == "unreadable"


def test_a_model_that_fails_without_a_message_is_reported_not_raised(monkeypatch):
    # `str(exc).splitlines()[0]` raised IndexError here on an exception without a message
    def fails(name, *args, **kwargs):
        raise RuntimeError()
    monkeypatch.setattr(zoo, "model", fails)
    name = common.MODELS[0]
    monkeypatch.setattr(zoo, "list", lambda: [name])
    ok, skipped = common.available_models([name])
    assert ok == [] and skipped == {name: "cannot be loaded: RuntimeError"}
