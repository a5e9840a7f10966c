"""Authentication fails closed at start-up, before Ray or any port: an empty token is an error, and a
non-loopback bind without a token is refused unless --insecure says so."""

from __future__ import annotations

import sys

import pytest
from typer.testing import CliRunner

from sidestep.cli import app
from sidestep.serving.run import InsecureServe, ServeHandle, check_auth

runner = CliRunner()


def test_an_empty_token_is_an_error(monkeypatch):
    monkeypatch.setenv("SIDESTEP_API_TOKEN", "  ")
    with pytest.raises(InsecureServe, match="set but empty"):
        check_auth("127.0.0.1")


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.1.2.3", "example.internal"])
def test_a_non_loopback_bind_needs_a_token_or_insecure(monkeypatch, host):
    monkeypatch.delenv("SIDESTEP_API_TOKEN", raising=False)
    with pytest.raises(InsecureServe, match="without a token"):
        check_auth(host)
    assert check_auth(host, insecure=True) is False  # the operator said so
    monkeypatch.setenv("SIDESTEP_API_TOKEN", "s3cret")
    assert check_auth(host) is True


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
def test_loopback_needs_no_token(monkeypatch, host):
    monkeypatch.delenv("SIDESTEP_API_TOKEN", raising=False)
    assert check_auth(host) is False


def test_the_serve_handle_refuses_before_starting_anything(data_root, monkeypatch):
    monkeypatch.setenv("SIDESTEP_API_TOKEN", "")
    with pytest.raises(InsecureServe):
        ServeHandle(data_root, host="127.0.0.1", port=1).start()  # port 1 would fail later: never reached
    assert "ray" not in sys.modules or not __import__("ray").is_initialized()


def test_sidestep_serve_refuses_an_open_port_without_a_token(data_root, monkeypatch):
    monkeypatch.delenv("SIDESTEP_API_TOKEN", raising=False)
    r = runner.invoke(app, ["serve", "--host", "0.0.0.0", "--port", "1"])
    assert r.exit_code == 2 and "without a token" in r.output and "--insecure" in r.output
    monkeypatch.setenv("SIDESTEP_API_TOKEN", "")
    r = runner.invoke(app, ["serve", "--port", "1"])
    assert r.exit_code == 2 and "set but empty" in r.output
    assert "serving on" not in r.output
