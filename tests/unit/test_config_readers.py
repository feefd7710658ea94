"""One grammar per kind of setting (docs/CONTRACT.md §2), read through the declaration of each setting."""

from __future__ import annotations

import pytest

from shared.config import catalog, readers
from shared.contract.errors import ConfigurationError
from shared.rules.sweep_policy import SweepPolicy


class TestBoolean:
    @pytest.mark.parametrize("word", ["true", "TRUE", " yes ", "1", "On"])
    def test_every_true_word_is_true(self, word: str) -> None:
        assert readers.boolean({"TERMINATE_DRY_RUN": word}, catalog.TERMINATE_DRY_RUN) is True

    @pytest.mark.parametrize("word", ["false", "No", "0", "OFF"])
    def test_every_false_word_is_false(self, word: str) -> None:
        assert readers.boolean({"TERMINATE_DRY_RUN": word}, catalog.TERMINATE_DRY_RUN) is False

    def test_unset_or_empty_is_the_declared_default(self) -> None:
        assert readers.boolean({}, catalog.KILL_SWITCH_DISABLE_SCHEDULES) is True
        assert readers.boolean({"KILL_SWITCH_SCALE_POOLS": " "}, catalog.KILL_SWITCH_SCALE_POOLS) is False

    @pytest.mark.parametrize("word", ["y", "2", "enabled", "truthy"])
    def test_another_word_is_an_error_naming_the_setting(self, word: str) -> None:
        with pytest.raises(ConfigurationError) as caught:
            readers.boolean({"CONFIRM_FORCE": word}, catalog.CONFIRM_FORCE)
        assert caught.value.setting == "CONFIRM_FORCE"

    @pytest.mark.parametrize("setting", [s for s in catalog.SETTINGS if s.kind is catalog.Kind.BOOLEAN])
    def test_every_boolean_setting_takes_yes_and_no(self, setting: catalog.Setting) -> None:
        assert readers.boolean({setting.name: "yes"}, setting) is True
        assert readers.boolean({setting.name: "no"}, setting) is False

    def test_the_sweep_and_the_terminator_share_the_grammar(self) -> None:
        assert SweepPolicy.from_env({"SWEEP_DRY_RUN": "on"}).dry_run is True
        with pytest.raises(ConfigurationError) as caught:
            SweepPolicy.from_env({"SWEEP_DRY_RUN": "maybe"})
        assert caught.value.setting == "SWEEP_DRY_RUN"


class TestWhole:
    def test_unset_is_the_declared_default(self) -> None:
        assert readers.whole({}, catalog.ALERT_MAX_JOBS) == 100
        assert readers.whole({"ALERT_MAX_JOBS": " 1000 "}, catalog.ALERT_MAX_JOBS) == 1000

    @pytest.mark.parametrize("bad", ["0", "-1", "ten", "1.5"])
    def test_below_the_bound_or_not_whole_is_named(self, bad: str) -> None:
        with pytest.raises(ConfigurationError) as caught:
            readers.whole({"SWEEP_MAX_JOBS": bad}, catalog.SWEEP_MAX_JOBS)
        assert caught.value.setting == "SWEEP_MAX_JOBS"

    def test_both_bounds_are_held(self) -> None:
        assert readers.whole({"SWEEP_CONCURRENCY": "64"}, catalog.SWEEP_CONCURRENCY) == 64
        with pytest.raises(ConfigurationError, match="between 1 and 64"):
            readers.whole({"SWEEP_CONCURRENCY": "65"}, catalog.SWEEP_CONCURRENCY)


class TestNames:
    @pytest.mark.parametrize("name", ["abc", "a-b-c", "batch-terminate-poison", "a" * 63])
    def test_valid_queue_names(self, name: str) -> None:
        assert readers.is_queue_name(name)

    @pytest.mark.parametrize("name", ["ab", "-ab", "ab-", "a--b", "Abc", "a_bc", "é-queue", "a" * 64, "abc\u0661"])
    def test_invalid_queue_names_ascii_only(self, name: str) -> None:
        assert not readers.is_queue_name(name)

    def test_the_poison_queue_is_spelled_in_one_place(self) -> None:
        assert readers.poison_queue_of("batch-terminate") == "batch-terminate-poison"

    @pytest.mark.parametrize("bad", ["1incidents", "in", "inc-idents", "a" * 64])
    def test_an_invalid_table_name_is_named(self, bad: str) -> None:
        with pytest.raises(ConfigurationError) as caught:
            readers.table_name({"INCIDENT_TABLE_NAME": bad}, catalog.INCIDENT_TABLE_NAME)
        assert caught.value.setting == "INCIDENT_TABLE_NAME"

    def test_the_table_name_defaults_to_the_declared_one(self) -> None:
        assert readers.table_name({}, catalog.INCIDENT_TABLE_NAME) == "batchterminatorincidents"


class TestChoice:
    def test_any_case_is_taken(self) -> None:
        assert readers.choice({"KILL_SWITCH_APPROVAL": " Manual "}, catalog.KILL_SWITCH_APPROVAL) == "manual"
        assert readers.choice({}, catalog.KILL_SWITCH_APPROVAL) == "auto"

    def test_another_value_is_named(self) -> None:
        with pytest.raises(ConfigurationError) as caught:
            readers.choice({"KILL_SWITCH_APPROVAL": "later"}, catalog.KILL_SWITCH_APPROVAL)
        assert caught.value.setting == "KILL_SWITCH_APPROVAL"
