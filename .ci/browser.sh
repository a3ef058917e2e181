#!/usr/bin/env bash
# Install what the browser tests (tests/test_webclient.py) need, on Debian bookworm:
#  - Chromium, from Debian (Playwright's own browser downloads are not used),
#  - node and npm, from Debian, only if no node is on PATH,
#  - playwright-core into tests/browser/node_modules, exactly as locked in
#    tests/browser/package-lock.json.
# Idempotent: what is already there is left alone, so running it again costs a second or two.
# Run as root (apt-get); prints what it does on stderr and nothing on stdout.
#
# Afterwards:  trial tests.test_webclient     (CI=true makes missing tools a failure, not a skip)

set -euo pipefail
exec 1>&2

cd "$(dirname "${BASH_SOURCE[0]}")/.."
BROWSER_DIR=tests/browser

log() { echo "browser.sh: $*"; }

apt_install() {
    if [ "$(id -u)" != 0 ]; then
        log "need root to apt-get install $*"
        exit 1
    fi
    # The package lists may be missing or stale on a fresh machine.
    if [ -z "${APT_UPDATED:-}" ]; then
        apt-get update -qq
        APT_UPDATED=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

if [ -x /usr/bin/chromium ] || [ -n "${CHROMIUM:-}" ]; then
    log "chromium: already installed"
else
    log "installing chromium from Debian"
    apt_install chromium
fi

if command -v node >/dev/null && command -v npm >/dev/null; then
    log "node $(node --version): already installed"
else
    log "installing nodejs and npm from Debian"
    apt_install nodejs npm
fi

cd "$BROWSER_DIR"
# 'npm ls' succeeds only when node_modules holds what package.json asks for.
if [ -d node_modules ] && npm ls --depth=0 >/dev/null 2>&1 \
        && [ node_modules/.package-lock.json -nt package-lock.json ]; then
    log "playwright-core: already installed in $BROWSER_DIR/node_modules"
else
    log "npm ci in $BROWSER_DIR"
    # playwright-core downloads no browser, but say so in case a future version would.
    PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error
fi
log "ready"
