#!/usr/bin/env bash
# Headless Chromium for the dashboard's browser test (tests/test_dashboard_browser.py).
#
#   source scripts/ci_chromium.sh   # CI: installs Debian's `chromium` if missing, exports NANORESEARCH_REQUIRE_BROWSER=1
#   bash scripts/ci_chromium.sh     # by hand: just installs it
#
# The test drives Chromium through the DevTools protocol over a pipe (--remote-debugging-pipe), so no
# chromedriver or Python browser package is needed. apt-get is slow: skipped when a browser is found.

_nanoresearch_chromium_main() {
    local candidate
    for candidate in chromium chromium-browser; do
        if command -v "$candidate" >/dev/null 2>&1; then
            echo "ci_chromium: found $(command -v "$candidate")" >&2
            return 0
        fi
    done
    if [ "$(id -u)" != 0 ]; then
        echo "ci_chromium: chromium not found and not root: install Debian's chromium" >&2
        return 1
    fi
    echo "ci_chromium: installing chromium (apt-get; a few minutes)" >&2
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        chromium fonts-dejavu-core >/dev/null || {
        echo "ci_chromium: apt-get install chromium failed" >&2; return 1; }
    command -v chromium >/dev/null 2>&1 || { echo "ci_chromium: chromium still not on PATH after install" >&2; return 1; }
    echo "ci_chromium: installed $(chromium --version 2>/dev/null)" >&2
}

if [[ "${BASH_SOURCE[0]}" != "$0" ]]; then
    _nanoresearch_chromium_main || return 1
    export NANORESEARCH_REQUIRE_BROWSER=1
else
    _nanoresearch_chromium_main || exit 1
fi
