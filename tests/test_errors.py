"""One base for the gateway's own errors (gateway/errors.py): every exception class the gateway
defines derives from `GatewayError`, those that were a `ValueError` still are one, the CLI prints
one that a command let through as a message (no traceback), and a `ProblemError` keeps its status."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

import gateway
from gateway import cli
from gateway.api.body import BadBody
from gateway.api.telephony import Refusal
from gateway.dial.campaigns import CampaignError
from gateway.dial.dialer import DialError, HangupError
from gateway.dial.spec import SpecError
from gateway.errors import GatewayError, ProblemError

# Control flow inside one module, never seen outside it.
PRIVATE = {"gateway.jsontext._Different", "gateway.tunnel.detector._Unreachable"}
PENDING: set[str] = set()  # classes not yet derived from GatewayError (none left)


def _gateway_exceptions() -> dict[str, type[BaseException]]:
    found: dict[str, type[BaseException]] = {}
    for info in pkgutil.walk_packages(gateway.__path__, "gateway."):
        module = importlib.import_module(info.name)
        for name, value in vars(module).items():
            if inspect.isclass(value) and issubclass(value, BaseException) and value.__module__ == info.name:
                found[f"{info.name}.{name}"] = value
    return found


def test_every_gateway_error_derives_from_the_base():
    found = _gateway_exceptions()
    assert "gateway.config.ConfigError" in found and "gateway.providers.rest.ProviderRefused" in found
    outside = sorted(name for name, cls in found.items() if not issubclass(cls, GatewayError))
    assert [name for name in outside if name not in PRIVATE | PENDING] == []
    # A class listed as pending that derives already: take it off the list.
    assert [name for name in PENDING if name in found and issubclass(found[name], GatewayError)] == []


def test_value_errors_stay_value_errors():
    """Parsers and pydantic validators rely on `ValueError`: the new base is added, not swapped."""
    from gateway.providers.base import BadRequest
    from gateway.webhooks.templates import TemplateError

    for cls in (SpecError, BadRequest, TemplateError):
        assert issubclass(cls, GatewayError) and issubclass(cls, ValueError)


@pytest.mark.parametrize("cls", [BadBody, Refusal, CampaignError, DialError, HangupError])
def test_problem_errors_keep_status_and_detail(cls: type[ProblemError]):
    error = cls(409, "the campaign is done")
    assert isinstance(error, ProblemError)
    assert (error.status, error.detail, str(error)) == (409, "the campaign is done", "the campaign is done")


def test_dial_error_keeps_its_record_and_refusal():
    error = DialError(502, "the provider refused")
    assert (error.status, error.detail, error.record, error.refusal) == (502, "the provider refused", None, None)


def test_the_cli_prints_a_gateway_error_a_command_let_through(monkeypatch, capsys):
    def failing(args):
        raise SpecError("to: must be an E.164 number")

    monkeypatch.setattr(cli, "_check_config", failing)
    assert cli.main(["check-config"]) == 1
    err = capsys.readouterr().err
    assert err == "gateway check-config: to: must be an E.164 number\n"


def test_the_cli_lets_other_errors_through(monkeypatch):
    """A bug is not a user's mistake: its traceback stays."""

    def broken(args):
        raise KeyError("bug")

    monkeypatch.setattr(cli, "_check_config", broken)
    with pytest.raises(KeyError):
        cli.main(["check-config"])
