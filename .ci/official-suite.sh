#!/usr/bin/env bash
# Acceptance: runs the official EventStore-Client-Go v4.2.0 test suite
# (TestStreams and TestPersistentSubscriptions) against esdb-emulator.
#
# The suite normally starts Docker containers; in CLUSTER mode it instead
# connects to esdb://admin:changeit@localhost:2111,localhost:2112,localhost:2113
# with TLS (certificate not verified) and gossip discovery, which is what we
# serve: one emulator on 127.0.0.1:2113 with a self-signed certificate.
# ClusterTests are skipped (they stop and start real cluster nodes).
#
# Exits non-zero if the suite fails or any subtest fails. Usage:
#   .ci/official-suite.sh            # from anywhere inside the repository
#   SUITE_RUN='TestStreams' .ci/official-suite.sh   # narrow the selection
set -euo pipefail
cd "$(dirname "$0")/.."

module=github.com/EventStore/EventStore-Client-Go/v4
version=v4.2.0
run=${SUITE_RUN:-'TestStreams|TestPersistentSubscriptions'}
addr=127.0.0.1:2113

work=$(mktemp -d)
emu_pid=
cleanup() {
  if [ -n "$emu_pid" ]; then
    kill "$emu_pid" 2>/dev/null || true
    wait "$emu_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

echo "== downloading $module@$version"
go mod download "$module@$version"
src="$(go env GOMODCACHE)/github.com/!event!store/!event!store-!client-!go/v4@$version"
# The module cache is read-only and has no go.sum for the test-only
# dependencies (testcontainers, testify, ...): build from a writable copy.
cp -r "$src" "$work/client"
chmod -R u+w "$work/client"

echo "== building the suite"
(cd "$work/client" && GOFLAGS=-mod=mod go test -c ./esdb -o "$work/esdb-suite.test")

echo "== building esdb-emulator"
go build -o "$work/esdb-emulator" ./cmd/esdb-emulator

echo "== starting esdb-emulator on $addr (TLS, self-signed)"
"$work/esdb-emulator" --addr "$addr" >"$work/emulator.log" 2>&1 &
emu_pid=$!
for _ in $(seq 1 300); do
  grep -q "listening on" "$work/emulator.log" && break
  if ! kill -0 "$emu_pid" 2>/dev/null; then
    echo "esdb-emulator exited:" >&2
    cat "$work/emulator.log" >&2
    exit 1
  fi
  sleep 0.1
done
grep -q "listening on" "$work/emulator.log" || { echo "esdb-emulator did not start" >&2; cat "$work/emulator.log" >&2; exit 1; }
cat "$work/emulator.log"

echo "== running the suite: $run"
status=0
(cd "$work/client/esdb" && CLUSTER=true EVENTSTORE_INSECURE=false \
  "$work/esdb-suite.test" -test.run "$run" -test.skip 'TestStreams/ClusterTests' -test.v -test.timeout 20m) \
  >"$work/suite.log" 2>&1 || status=$?
# The client logs every discovery attempt; keep only the test lines.
grep -aE '^\s*(=== RUN|--- (PASS|FAIL|SKIP)|PASS$|FAIL|ok |panic|\s+\S+_test\.go:[0-9]+)' "$work/suite.log" || true

pass=$(grep -acE '^\s*--- PASS' "$work/suite.log" || true)
fail=$(grep -acE '^\s*--- FAIL' "$work/suite.log" || true)
skip=$(grep -acE '^\s*--- SKIP' "$work/suite.log" || true)
echo "== official suite: test binary exit status $status"
echo "official-suite: $pass passed, $fail failed, $skip skipped"
if [ "$fail" -gt 0 ]; then
  echo "failed:"
  grep -aE '^\s*--- FAIL' "$work/suite.log"
fi
if [ "$status" -ne 0 ] || [ "$fail" -gt 0 ]; then
  echo "--- tail of the suite output"
  tail -40 "$work/suite.log"
  exit 1
fi
