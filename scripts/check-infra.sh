#!/usr/bin/env bash
# Static checks of the Bicep templates in infra/ with checkov (the Bicep compiler is not available here).
# checkov lives in its own virtualenv, .venv-infra, so its many pinned dependencies never meet the app's.
# Skipped checks are listed, each with its reason, in .checkov.yaml; a skip that concerns one resource only may
# instead sit in that resource as "// checkov:skip=CKV_...:<reason>" (tests/repo/test_infra.py checks both kinds).
# Exits non-zero when a check fails or when a template cannot be parsed (checkov itself would silently
# leave an unparseable file out of the scan).
set -euo pipefail

cd "$(dirname "$0")/.."

venv=.venv-infra
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
# Reinstall only when requirements-infra.txt changed (same stamp scheme as ./dev setup).
stamp="$venv/.requirements-infra.sha"
want=$(sha256sum requirements-infra.txt | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r requirements-infra.txt
    echo "$want" > "$stamp"
fi

# Every template must parse with checkov's own Bicep parser, or its checks would not run at all.
"$venv/bin/python" - <<'PY'
import sys
from pathlib import Path

from checkov.bicep.parser import Parser

files = sorted(Path("infra").rglob("*.bicep"))
if not files:
    sys.exit("check-infra: no .bicep files under infra/")
parser = Parser()
bad = [str(f) for f in files if parser.parse(f)[0] is None]
if bad:
    sys.exit("check-infra: checkov cannot parse: " + ", ".join(bad))
print(f"check-infra: {len(files)} Bicep files parsed")
PY

exec "$venv/bin/checkov" -d infra --framework bicep --quiet --compact \
    --config-file .checkov.yaml --skip-download
