#!/usr/bin/env bash
# Lint, type-check and test the Python client (clients/python).
#
#   clients/python/run-tests.sh [pytest args...]
#
# Creates or reuses the venv clients/python/.venv and installs the package editable with
# its dev extra (again only when pyproject.toml changed). Integration tests run against
# the live server without persistence at $SANDBOX_TEST_URL (e.g. ws://127.0.0.1:8080);
# the checkpoint and snapshot tests against the two instances sharing their directories at
# $SANDBOX_TEST_PERSISTENT_URL and $SANDBOX_TEST_PERSISTENT_URL_2; the API key tests against
# the server at $SANDBOX_TEST_AUTH_URL started with SANDBOX_API_KEYS, one of whose keys is
# $SANDBOX_TEST_API_KEY (scripts/test.sh starts all four). Each set is skipped when its
# variables are unset. Exits non-zero if any step
# fails; every step runs regardless.
set -uo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
cd "$here"

python="${PYTHON:-python3}"
venv="$here/.venv"
if [ ! -x "$venv/bin/python" ]; then
    echo "==> creating $venv"
    "$python" -m venv "$venv" || exit 1
fi
stamp="$venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)"
if [ ! -e "$stamp" ]; then
    echo "==> installing codesandbox[dev] (editable)"
    "$venv/bin/python" -m pip install --quiet --upgrade pip || exit 1
    "$venv/bin/python" -m pip install --quiet -e "$here[dev]" || exit 1
    rm -f "$venv"/.installed-*
    touch "$stamp"
fi

examples=()
for f in client_example.py checkpoint.py filesystem_snapshot.py third_party_libraries.py code_interpreter.py files.py web_app.py mcp_client.py terminal.py; do
    [ -e "$repo/example/$f" ] && examples+=("$repo/example/$f")
done

status=0
step() {
    echo "==> $*"
    "$@" || status=1
}
step "$venv/bin/ruff" check --config pyproject.toml src tests "${examples[@]}"
step "$venv/bin/ruff" format --check --config pyproject.toml src tests "${examples[@]}"
step "$venv/bin/mypy" --strict src/codesandbox "${examples[@]}"
echo "==> pytest (SANDBOX_TEST_URL=${SANDBOX_TEST_URL:-unset}," \
    "SANDBOX_TEST_PERSISTENT_URL=${SANDBOX_TEST_PERSISTENT_URL:-unset}," \
    "SANDBOX_TEST_PERSISTENT_URL_2=${SANDBOX_TEST_PERSISTENT_URL_2:-unset}," \
    "SANDBOX_TEST_AUTH_URL=${SANDBOX_TEST_AUTH_URL:-unset})"
"$venv/bin/python" -m pytest "$@" || status=1
if [ -n "${SANDBOX_TEST_AUTH_URL:-}" ]; then
    # The example as a user runs it against a server that requires an API key.
    step env SANDBOX_API_KEY="$SANDBOX_TEST_API_KEY" "$venv/bin/python" \
        "$repo/example/client_example.py" "$SANDBOX_TEST_AUTH_URL"
    # The terminal example (a shell on a pseudo-terminal), with the key.
    step env SANDBOX_API_KEY="$SANDBOX_TEST_API_KEY" "$venv/bin/python" \
        "$repo/example/terminal.py" "$SANDBOX_TEST_AUTH_URL"
    # The MCP example, through /mcp of the same server, with the key.
    mcp_url="${SANDBOX_TEST_AUTH_URL/#ws:/http:}"
    step env SANDBOX_API_KEY="$SANDBOX_TEST_API_KEY" "$venv/bin/python" \
        "$repo/example/mcp_client.py" "${mcp_url%/}/mcp"
fi
exit "$status"
