#!/usr/bin/env bash
# Vendor the playground's terminal emulator (xterm.js and its fit addon, MIT) into
# src/server/playground/vendor/, from npm, at the pinned versions. The files are committed and
# embedded in the server binary: the page fetches nothing from elsewhere at run time. Run it to
# update them, then review and commit the diff.
set -euo pipefail
XTERM_VERSION=5.5.0
FIT_VERSION=0.11.0
repo=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d /tmp/crs-vendor-xterm.XXXXXX)
trap 'rm -rf "$work"' EXIT
cd "$work"
npm init -y >/dev/null
npm install --no-audit --no-fund "@xterm/xterm@$XTERM_VERSION" "@xterm/addon-fit@$FIT_VERSION" >/dev/null
vendor="$repo/src/server/playground/vendor"
mkdir -p "$vendor"
cp node_modules/@xterm/xterm/lib/xterm.js "$vendor/xterm.js"
cp node_modules/@xterm/xterm/css/xterm.css "$vendor/xterm.css"
cp node_modules/@xterm/addon-fit/lib/addon-fit.js "$vendor/addon-fit.js"
cp node_modules/@xterm/xterm/LICENSE "$vendor/LICENSE-xterm"
# The source maps are not vendored: no reference to a file the server does not serve.
sed -i '/^\/\/# sourceMappingURL=/d' "$vendor/xterm.js" "$vendor/addon-fit.js"
echo "vendored @xterm/xterm $XTERM_VERSION and @xterm/addon-fit $FIT_VERSION into $vendor"
