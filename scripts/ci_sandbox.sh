#!/usr/bin/env bash
# bubblewrap, the sandbox patched experiments run in (harness/sandbox.py; tests/test_sealed.py and the patch tests).
#
#   source scripts/ci_sandbox.sh   # CI: installs Debian's `bubblewrap` if missing, exports NANORESEARCH_REQUIRE_SANDBOX=1
#   bash scripts/ci_sandbox.sh     # by hand: just installs it
#
# With NANORESEARCH_REQUIRE_SANDBOX=1 a test that needs the sandbox fails instead of skipping when it is missing.

_nanoresearch_sandbox_main() {
    if command -v bwrap >/dev/null 2>&1; then
        echo "ci_sandbox: found $(command -v bwrap)" >&2
        return 0
    fi
    if [ "$(id -u)" != 0 ]; then
        echo "ci_sandbox: bwrap not found and not root: install Debian's bubblewrap" >&2
        return 1
    fi
    echo "ci_sandbox: installing bubblewrap (apt-get)" >&2
    { apt-get install -y -qq --no-install-recommends bubblewrap >/dev/null 2>&1 ||
      { apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        bubblewrap >/dev/null; }; } || { echo "ci_sandbox: apt-get install bubblewrap failed" >&2; return 1; }
    command -v bwrap >/dev/null 2>&1 || { echo "ci_sandbox: bwrap still not on PATH after install" >&2; return 1; }
    echo "ci_sandbox: installed $(bwrap --version 2>/dev/null)" >&2
}

if [[ "${BASH_SOURCE[0]}" != "$0" ]]; then
    _nanoresearch_sandbox_main || return 1
    export NANORESEARCH_REQUIRE_SANDBOX=1
else
    _nanoresearch_sandbox_main || exit 1
fi
