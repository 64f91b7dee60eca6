#!/usr/bin/env bash
# The one test command (README): installs what the tests need on a fresh machine, then runs
# the format check, clippy with warnings denied, and every test, including the end-to-end
# tests against a real Prometheus and real Python services, then builds the pip wheel and runs
# the agent from a fresh venv.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '==> %s\n' "$*"; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    echo "need root (or sudo) to run: $*" >&2; return 1; fi
}

# 1. System packages: Prometheus and promtool (`prometheus`), Alertmanager
#    (`prometheus-alertmanager`, for the Alertmanager -> incidents recipe), systemd-analyze
#    (`systemd`), kubectl (its built-in kustomize renders deploy/kubernetes/ in tests/tests/deploy.rs).
need_apt=()
{ command -v prometheus && command -v promtool; } >/dev/null || need_apt+=(prometheus)
command -v prometheus-alertmanager >/dev/null || need_apt+=(prometheus-alertmanager)
command -v systemd-analyze >/dev/null || need_apt+=(systemd)
command -v kubectl >/dev/null || need_apt+=(kubectl)
if [ ${#need_apt[@]} -gt 0 ]; then
  log "installing Debian packages: ${need_apt[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

# 2. Python test peers in a venv, from the pinned requirements (re-installed when they change).
req=tests/python/requirements.txt
stamp=.venv/.requirements.sha256
want=$(sha256sum "$req" | cut -d' ' -f1)
if [ ! -x .venv/bin/python ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  log "creating the Python venv from $req"
  rm -rf .venv
  python3 -m venv .venv
  .venv/bin/pip install --quiet --disable-pip-version-check -r "$req"
  echo "$want" > "$stamp"
fi
export SIDELIGHT_TEST_PYTHON="$PWD/.venv/bin/python"

# 3. Node test peers (tests/node/): Microsoft's adaptivecards library and Ajv validate the Teams
#    cards the agent posts; installed from the lock file (re-installed when it changes).
if ! command -v npm >/dev/null; then
  log "installing Debian packages: nodejs npm"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
fi
lock=tests/node/package-lock.json
nstamp=tests/node/node_modules/.lock.sha256
nwant=$(sha256sum "$lock" | cut -d' ' -f1)
if [ "$(cat "$nstamp" 2>/dev/null)" != "$nwant" ]; then
  log "installing the Node test peers from $lock"
  npm ci --prefix tests/node --no-audit --no-fund --silent
  echo "$nwant" > "$nstamp"
fi

# 4. Rust checks and tests.
log "cargo fmt --check"
cargo fmt --all -- --check
# Supply chain (deny.toml): licences, banned crates, sources, and advisories when the RustSec
# database on GitHub can be fetched. SIDELIGHT_DENY_ADVISORIES: auto (default: checked when
# github.com answers within 10 s, skipped with a notice otherwise), 1 (always; fails without
# the network), 0 (never).
if ! command -v cargo-deny >/dev/null; then
  log "installing cargo-deny 0.20.2 (once per machine)"
  cargo install --locked --quiet cargo-deny@0.20.2
fi
log "cargo deny check"
deny_checks=(licenses bans sources)
case "${SIDELIGHT_DENY_ADVISORIES:-auto}" in
  1) deny_checks+=(advisories) ;;
  0) ;;
  *)
    if timeout 10 git ls-remote --exit-code https://github.com/rustsec/advisory-db HEAD >/dev/null 2>&1; then
      deny_checks+=(advisories)
    else
      log "advisories skipped: the RustSec database (github.com/rustsec/advisory-db) cannot be reached from here"
    fi ;;
esac
cargo deny --log-level error check "${deny_checks[@]}"
log "cargo clippy -D warnings"
cargo clippy --workspace --all-targets --quiet -- -D warnings
log "cargo test --workspace"
out=$(mktemp)
trap 'rm -f "$out"' EXIT
# --workspace: every member, including the end-to-end tests (`tests`), which are not among the
# default members (a bare `cargo test` needs only the Rust toolchain and skips them).
cargo test --workspace --quiet 2>&1 | tee "$out"
# One closing line over every test binary (cargo prints one summary per binary).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($i ~ /^passed/) p += $(i-1); if ($i ~ /^failed/) f += $(i-1) } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$out"

# 4. The pip wheel: built with maturin (dev profile), installed into a fresh venv, run from there.
log "the pip wheel (scripts/test-wheel.sh)"
bash scripts/test-wheel.sh
