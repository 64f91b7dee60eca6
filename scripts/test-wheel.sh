#!/usr/bin/env bash
# The pip wheel, as a user gets it: builds it with maturin (pyproject.toml; the dev profile,
# stripped, so the check takes a minute rather than the release build's fat LTO), installs it
# into a fresh venv with pip and runs the agent from there: `sidelight --version` (on PATH in the
# activated venv), `sidelight check-config` (a valid file: 0; an invalid one: 64) and
# `python -m sidelight`. Called by scripts/test.sh; runs alone too.
#   SIDELIGHT_TEST_PYTHON  the test venv's python, with maturin (default .venv/bin/python)
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '==> %s\n' "$*"; }
fail() { printf 'wheel: FAIL: %s\n' "$*" >&2; exit 1; }

py=${SIDELIGHT_TEST_PYTHON:-.venv/bin/python}
maturin="$(dirname "$py")/maturin"
[ -x "$maturin" ] || fail "no maturin beside $py (pip install -r tests/python/requirements.txt)"
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
log "maturin build (dev profile, stripped)"
"$maturin" build --quiet --profile dev --strip --out "$work/wheels" >/dev/null
wheel=$(ls "$work"/wheels/sidelight-*.whl)
name=$(basename "$wheel")
case "$name" in
  "sidelight-$version-py3-none-manylinux_"*"_x86_64.whl" | "sidelight-$version-py3-none-linux_"*".whl" | "sidelight-$version-py3-none-musllinux_"*".whl") ;;
  *) fail "unexpected wheel name $name (want sidelight-$version-py3-none-<platform>.whl)" ;;
esac
"$py" - "$wheel" <<'PY' || fail "the wheel does not carry the binary as a script"
import sys, zipfile
names = zipfile.ZipFile(sys.argv[1]).namelist()
want = [n for n in names if n.endswith(".data/scripts/sidelight")]
assert want, names
assert "sidelight/__main__.py" in names, names
PY

log "pip install $name into a fresh venv"
python3 -m venv "$work/venv"
"$work/venv/bin/pip" install --quiet --disable-pip-version-check --no-index "$wheel"

# As in an activated venv: the binary is on PATH.
out=$(env PATH="$work/venv/bin:$PATH" sidelight --version)
[ "$out" = "sidelight $version" ] || fail "sidelight --version said: $out"
out=$("$work/venv/bin/python" -m sidelight --version)
[ "$out" = "sidelight $version" ] || fail "python -m sidelight --version said: $out"

cat > "$work/ok.yaml" <<'YAML'
http: { listen: 127.0.0.1:9464 }
host: { interval: 15s }
store: { path: ./sidelight-data }
YAML
env PATH="$work/venv/bin:$PATH" sidelight check-config "$work/ok.yaml" | grep -q ': OK: ' \
  || fail "check-config of a valid file"
printf 'host: { interval: sometimes }\nbogus: 1\n' > "$work/bad.yaml"
set +e
errors=$("$work/venv/bin/python" -m sidelight check-config "$work/bad.yaml" 2>&1)
code=$?
set -e
[ "$code" -eq 64 ] || fail "check-config of an invalid file exited $code (want 64): $errors"
case "$errors" in *"2 errors"*) ;; *) fail "check-config did not report both errors: $errors" ;; esac
printf 'wheel: PASS: %s installs, sidelight --version, check-config (0 and 64), python -m sidelight\n' "$name"
