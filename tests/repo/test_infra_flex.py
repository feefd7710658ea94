"""The Flex Consumption app carries none of the site properties and app settings Flex deprecates.

Flex rejects some of them outright (a site with `siteConfig.ftpsState` fails to deploy: "...site configuration
properties (Site.SiteConfig.FtpsState, ...) for Flex Consumption sites is invalid") and ignores or overrides the
others. The list is Microsoft's table "Flex Consumption plan deprecations" in the Azure Functions app settings
reference (https://learn.microsoft.com/azure/azure-functions/functions-app-settings#flex-consumption-plan-deprecations,
articles/azure-functions/functions-app-settings.md, ms.date 12/22/2025), copied here name for name.
"""

from __future__ import annotations

import re

from .test_infra import _all_bicep, _app_settings, _block, _resources

# "Setting/property" column, app settings part (the replacement is in functionAppConfig or gone).
FLEX_DEPRECATED_APP_SETTINGS = {
    "ENABLE_ORYX_BUILD",  # replaced by the remoteBuild parameter of a Flex deployment
    "FUNCTIONS_EXTENSION_VERSION",  # set by the backend
    "FUNCTIONS_WORKER_RUNTIME",  # functionAppConfig.runtime.name
    "FUNCTIONS_WORKER_RUNTIME_VERSION",  # functionAppConfig.runtime.version
    "FUNCTIONS_MAX_HTTP_CONCURRENCY",  # scaleAndConcurrency.triggers
    "FUNCTIONS_WORKER_PROCESS_COUNT",  # not valid
    "FUNCTIONS_WORKER_DYNAMIC_CONCURRENCY_ENABLED",  # not valid
    "SCM_DO_BUILD_DURING_DEPLOYMENT",  # remoteBuild
    "WEBSITE_CONTENTAZUREFILECONNECTIONSTRING",  # functionAppConfig.deployment
    "WEBSITE_CONTENTOVERVNET",  # not used for networking
    "WEBSITE_CONTENTSHARE",  # functionAppConfig.deployment
    "WEBSITE_DNS_SERVER",  # inherited from the integrated virtual network
    "WEBSITE_MAX_DYNAMIC_APPLICATION_SCALE_OUT",  # scaleAndConcurrency.maximumInstanceCount
    "WEBSITE_NODE_DEFAULT_VERSION",  # functionAppConfig.runtime.version
    "WEBSITE_RUN_FROM_PACKAGE",  # not used for Flex deployments
    "WEBSITE_SKIP_CONTENTSHARE_VALIDATION",  # no content share
    "WEBSITE_VNET_ROUTE_ALL",  # not used for networking
}

# The same table, site properties part ("properties.X" / "properties.siteConfig.X"); compared case-insensitively
# with every key of the Microsoft.Web/sites resources and their config resources.
FLEX_DEPRECATED_SITE_PROPERTIES = {
    "alwaysOn",
    "containerSize",  # renamed instanceMemoryMB
    "dnsConfiguration",
    "ftpsState",  # "FTPS not supported"
    "isReserved",
    "IsXenon",
    "javaVersion",
    "LinuxFxVersion",
    "netFrameworkVersion",
    "powerShellVersion",
    "functionAppScaleLimit",  # renamed maximumInstanceCount
    "preWarmedInstanceCount",  # renamed alwaysReadyInstances
    "use32BitWorkerProcess",
    "vnetBackupRestoreEnabled",
    "vnetContentShareEnabled",
    "vnetImagePullEnabled",
    "vnetRouteAllEnabled",
    "windowsFxVersion",
}


def _site_bodies() -> list[tuple[str, str]]:
    """(file, body) of every Microsoft.Web/sites resource and every resource below it (config, policies, ...)."""
    bodies = []
    for path, text in _all_bicep().items():
        bodies += [(path, body) for _symbol, body in _resources(text, "Microsoft.Web/sites")]
    assert bodies, "no Microsoft.Web/sites resource in infra/"
    return bodies


def _keys(body: str) -> set[str]:
    """Every `key:` of an object body, at any depth (quoted keys too)."""
    return set(re.findall(r"^\s*'?([A-Za-z_][A-Za-z0-9_]*)'?\s*:", body, re.M))


def test_no_flex_deprecated_site_property_is_set() -> None:
    deprecated = {name.lower() for name in FLEX_DEPRECATED_SITE_PROPERTIES}
    for path, body in _site_bodies():
        found = sorted(key for key in _keys(body) if key.lower() in deprecated)
        assert not found, f"{path}: Flex Consumption deprecates (or rejects) the site properties {found}"


def test_no_flex_deprecated_app_setting_is_set() -> None:
    deprecated = {name.lower() for name in FLEX_DEPRECATED_APP_SETTINGS}
    found = sorted(name for name in _app_settings() if name.lower() in deprecated)
    assert not found, f"Flex Consumption deprecates the app settings {found}"
    # ... nor anywhere else, e.g. an inline siteConfig.appSettings list.
    for path, body in _site_bodies():
        named = set(re.findall(r"name:\s*'([A-Za-z_][A-Za-z0-9_]*)'", body)) | _keys(body)
        found = sorted(name for name in named if name.lower() in deprecated)
        assert not found, f"{path}: Flex Consumption deprecates the app settings {found}"


def test_app_settings_live_in_one_config_resource_not_inline() -> None:
    for path, text in _all_bicep().items():
        for _symbol, body in _resources(text, "Microsoft.Web/sites@"):
            m = re.search(r"^\s*siteConfig:\s*\{", body, re.M)
            if m:
                assert "appSettings" not in _block(body, m.end() - 1), path


def test_the_lists_catch_what_flex_rejected() -> None:
    # The deployment error that started this (issue 22) named Site.SiteConfig.FtpsState.
    assert "ftpsState" in FLEX_DEPRECATED_SITE_PROPERTIES
    fake_site = "  properties: {\n    siteConfig: {\n      ftpsState: 'Disabled'\n    }\n  }\n"
    assert "ftpsState" in _keys(fake_site)
