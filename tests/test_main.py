"""``python -m bulkreset`` is the same command as ``bulkreset``."""

from __future__ import annotations

import runpy

import pytest


def test_python_m_bulkreset_runs_the_command(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The module entry point parses arguments and exits with the command's status."""
    monkeypatch.setattr("sys.argv", ["bulkreset", "--help"])
    with pytest.raises(SystemExit) as caught:
        runpy.run_module("bulkreset", run_name="__main__")
    assert 0 == caught.value.code
    assert "demo" in capsys.readouterr().out
