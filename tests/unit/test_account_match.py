"""alertTargetIDs → the configured account: by the first label of the URL host, a lone emulator for any name."""

from __future__ import annotations

import pytest

from shared.contract.errors import AlertRejected
from shared.rules.accounts import account_for, alias_for, batch_account_names, terminate_request

EU = "https://contosoeu.westeurope.batch.azure.com"
US = "https://contosous.eastus.batch.azure.com"
SUB = "/subscriptions/11111111-1111-1111-1111-111111111111/resourceGroups/rg-batch/providers"


def test_batch_account_names_are_read_case_insensitively_without_duplicates() -> None:
    targets = [
        f"{SUB}/Microsoft.Batch/batchAccounts/ContosoEU",
        f"{SUB.lower()}/microsoft.batch/batchaccounts/contosoeu/pools/render",
        f"{SUB}/Microsoft.Compute/virtualMachines/vm1",
        f"{SUB}/Microsoft.Batch/batchAccountsX/not-this",
        42,
    ]

    assert batch_account_names(targets) == ["contosoeu"]


@pytest.mark.parametrize("targets", [None, "x", [], [f"{SUB}/Microsoft.Storage/storageAccounts/s"]])
def test_no_batch_account_means_none(targets: object) -> None:
    assert batch_account_names(targets) == []


def test_no_batch_account_in_the_alert_is_the_default() -> None:
    assert account_for([], {"default": EU, "us": US}) == "default"


def test_the_account_is_the_one_whose_host_starts_with_the_name() -> None:
    accounts = {"default": EU, "us": US}

    assert account_for(["contosous"], accounts) == "us"
    assert account_for(["contosoeu"], accounts) == "default"


def test_an_account_that_is_not_configured_is_400_unknown_account() -> None:
    with pytest.raises(AlertRejected) as caught:
        account_for(["fabrikam"], {"default": EU, "us": US})

    assert (caught.value.status, caught.value.code) == (400, "UnknownAccount")
    assert [(v.key, v.value) for v in caught.value.values] == [("batchAccount", "fabrikam")]


def test_a_lone_loopback_account_stands_for_any_name() -> None:
    assert account_for(["fabrikam"], {"default": "http://127.0.0.1:8045"}) == "default"
    assert account_for(["fabrikam"], {"default": "http://localhost:8045"}) == "default"


def test_a_loopback_account_among_others_stands_for_nothing() -> None:
    with pytest.raises(AlertRejected) as caught:
        account_for(["fabrikam"], {"default": "http://127.0.0.1:8045", "us": US})

    assert caught.value.code == "UnknownAccount"


def test_two_batch_accounts_in_one_alert_are_refused() -> None:
    with pytest.raises(AlertRejected) as caught:
        account_for(["contosoeu", "contosous"], {"default": EU, "us": US})

    assert (caught.value.status, caught.value.code) == (400, "AmbiguousAccount")


def test_a_plain_body_account_is_an_alias_case_insensitively() -> None:
    accounts = {"default": EU, "us": US}

    assert alias_for("US", accounts) == "us"
    assert alias_for(None, accounts) == "default"
    for bad in ("eu", 3, ""):
        with pytest.raises(AlertRejected) as caught:
            alias_for(bad, accounts)
        assert caught.value.code == "UnknownAccount"


def test_terminate_requests_name_their_account_unless_default() -> None:
    assert "account" not in terminate_request("job-1", "r", "default").to_message()
    assert terminate_request("job-1", "r", "us").to_message()["account"] == "us"
