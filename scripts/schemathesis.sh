#!/usr/bin/env bash
# Property-based API tests (schemathesis, from PyPI) against a live tickstream on its
# own redis-server, driven by the server's own OpenAPI document
# (/api/v1/openapi.json). Bounded: a fixed number of examples per operation and a
# fixed seed, so a run takes about a minute. Any 5xx fails the run (docs/TESTING.md).
#
#   scripts/schemathesis.sh [path/to/tickstream]     (default target/debug/tickstream)
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-target/debug/tickstream}
version=4.32.5
examples=${SCHEMATHESIS_EXAMPLES:-40}
out=${ARTIFACTS:-target/schemathesis}
mkdir -p "$out"

if ! python3 -c "import schemathesis, sys; sys.exit(schemathesis.__version__ != '$version')" 2>/dev/null; then
  python3 -m pip install -q "schemathesis==$version"
fi

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
redis_port=$(free_port)
port=$(free_port)
dir=$(mktemp -d)
redis-server --port "$redis_port" --bind 127.0.0.1 --dir "$dir" --save '' --appendonly no >"$out/redis.log" 2>&1 &
redis=$!
server=
cleanup() {
  [ -n "$server" ] && kill "$server" 2>/dev/null || true
  kill "$redis" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT
for _ in $(seq 50); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break; sleep 0.1; done

secret=schemathesis-secret-0123456789
# Generous limits: the run is about server errors, not about being throttled. The
# document cannot say "ts at most TICKSTREAM_MAX_FUTURE ahead", and schemathesis dates
# ticks up to year 9999: the allowance is set past that, so schema-valid ticks are
# accepted as the positive-data check expects (tests/tenancy.rs checks the bound).
REDIS_URL=redis://127.0.0.1:$redis_port TICKSTREAM_LISTEN=127.0.0.1:$port \
TICKSTREAM_JWT_SECRET=$secret TICKSTREAM_INGEST_TOKEN=schemathesis-ingest \
TICKSTREAM_MAX_FUTURE=3000000d TICKSTREAM_IP_RATE=off TICKSTREAM_RATE_FREE_API=100000/s:100000 TICKSTREAM_RATE_FREE_INGEST=100000/s:100000 \
TICKSTREAM_LOG=warn "$bin" --demo >"$out/server.log" 2>&1 &
server=$!
for _ in $(seq 100); do curl -fsS "http://127.0.0.1:$port/healthz" >/dev/null 2>&1 && break; sleep 0.1; done

# A token that may read every channel and ingest (HS256, made here with the stdlib).
token=$(SECRET=$secret python3 - <<'PY'
import base64, hashlib, hmac, json, os, time
b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
claims = b64(json.dumps({"sub": "schemathesis", "exp": int(time.time()) + 3600, "channels": ["*"], "scope": ["ingest"]}).encode())
sig = hmac.new(os.environ["SECRET"].encode(), f"{head}.{claims}".encode(), hashlib.sha256).digest()
print(f"{head}.{claims}.{b64(sig)}")
PY
)

st run "http://127.0.0.1:$port/api/v1/openapi.json" \
  --url "http://127.0.0.1:$port" \
  -H "Authorization: Bearer $token" \
  --checks "${SCHEMATHESIS_CHECKS:-all}" \
  --max-examples "$examples" --seed 20261201 \
  --request-timeout 10 \
  --report junit --report-dir "$out" \
  --no-color
