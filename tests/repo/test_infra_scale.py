"""docs/SCALE.md's arithmetic against host.json and the templates.

On Flex Consumption each non-HTTP function scales on its own instances (per-function scaling), so one instance's
worker serves one queue trigger: it holds at most batchSize + newBatchThreshold messages, and needs that many
threads plus a small margin. The Storage Queues target scaler wants ceil(queue length / (batchSize +
newBatchThreshold)) instances.
"""

from __future__ import annotations

import json
import math
import re

from .test_infra import HOST_JSON, ROOT, _app_settings, _bicep, _main_param_for, _param

SCALE = ROOT / "docs" / "SCALE.md"
DEPLOY = ROOT / "docs" / "DEPLOY.md"
THREAD_MARGIN = 2  # docs/SCALE.md: headroom, not derived


def _queues() -> dict[str, int]:
    return json.loads(HOST_JSON.read_text(encoding="utf-8"))["extensions"]["queues"]


def _held() -> int:
    queues = _queues()
    return queues["batchSize"] + queues["newBatchThreshold"]


def _queue_functions() -> list[str]:
    names = []
    for function_json in sorted(ROOT.glob("*/function.json")):
        bindings = json.loads(function_json.read_text(encoding="utf-8"))["bindings"]
        if any(b["type"] == "queueTrigger" and b.get("direction") == "in" for b in bindings):
            names.append(function_json.parent.name)
    assert {"terminate_job", "confirm_termination"} <= set(names), names
    return names


def test_thread_count_is_one_queue_triggers_held_messages_plus_the_margin() -> None:
    assert _app_settings()["PYTHON_THREADPOOL_THREAD_COUNT"] == "string(pythonThreadpoolThreadCount)"
    assert _main_param_for("pythonThreadpoolThreadCount") == "pythonThreadpoolThreadCount"
    main = _bicep("main.bicep")
    bicep_type, default = _param(main, "pythonThreadpoolThreadCount")
    assert bicep_type == "int"
    assert default is not None
    assert int(default) == _held() + THREAD_MARGIN
    max_value = re.search(r"@maxValue\((\d+)\)[^\n]*\n(?:@[^\n]*\n)*param pythonThreadpoolThreadCount\b", main)
    assert max_value
    assert int(max_value.group(1)) >= int(default)


def test_scale_doc_states_the_numbers_host_json_gives() -> None:
    queues = _queues()
    text = SCALE.read_text(encoding="utf-8")
    batch, threshold = queues["batchSize"], queues["newBatchThreshold"]
    threads = batch + threshold + THREAD_MARGIN
    assert f"= {batch} + {threshold} = {batch + threshold}" in text
    assert f"= {batch} + {threshold} + {THREAD_MARGIN} = {threads}" in text
    # The target scaler: 1,000 queued messages want ceil(1000 / 24) instances, not 1000 / batchSize.
    assert f"| 1,000 | {math.ceil(1000 / (batch + threshold))} " in text
    assert "QueueTargetScaler" in text
    assert "Per-function scaling" in text
    for name in _queue_functions():
        assert f"`function:{name}`" in text, f"docs/SCALE.md does not place {name}"


def test_no_co_location_budget_is_left_in_infra_or_deploy_doc() -> None:
    # The old budget (one worker for every function: 2 x 24 + 3 = 51 threads) does not hold under per-function
    # scaling; docs/SCALE.md is where the arithmetic lives.
    texts = {str(p.relative_to(ROOT)): p.read_text(encoding="utf-8") for p in (ROOT / "infra").rglob("*.bicep")}
    texts["docs/DEPLOY.md"] = DEPLOY.read_text(encoding="utf-8")
    for path, text in texts.items():
        assert not re.search(r"\b51\b", text), path
        assert not re.search("2\\s*[x\u00d7]\\s*24", text), path
    deploy = texts["docs/DEPLOY.md"]
    assert "SCALE.md" in deploy
    assert "batchSize + newBatchThreshold" not in deploy, "docs/DEPLOY.md should point to docs/SCALE.md"


def test_the_local_sample_sizes_one_worker_for_every_function() -> None:
    # Locally every function shares one worker: every queue trigger's held messages, plus timers and HTTP.
    sample = json.loads((ROOT / "local.settings.sample.json").read_text(encoding="utf-8"))["Values"]
    batch, threshold = _queues()["batchSize"], _queues()["newBatchThreshold"]
    queue_functions = len(_queue_functions())
    others = len(list(ROOT.glob("*/function.json"))) - queue_functions
    threads = queue_functions * (batch + threshold) + others
    assert sample["PYTHON_THREADPOOL_THREAD_COUNT"] == str(threads)
    stated = f"= {queue_functions} \u00d7 ({batch} + {threshold}) + {others} = {threads}"
    assert stated in SCALE.read_text(encoding="utf-8")
