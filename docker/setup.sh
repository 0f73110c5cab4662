#!/bin/sh
# Creates the $ce-customer subscription groups on the source through the HTTP
# API, seeds SEED_CUSTOMERS customer streams, like benfoster/ditto's docker
# setup, and, when KINESIS_URL is set, creates the Kinesis stream that
# ditto-kinesis writes to (on kinesalite or LocalStack, which check that a
# request is signed but not the signature). Bounded: gives up after 60
# attempts at each wait.
set -eu
SOURCE_URL=${SOURCE_URL:-http://127.0.0.1:2113}
SEED_CUSTOMERS=${SEED_CUSTOMERS:-10}
SUBSCRIPTION_GROUPS=${SUBSCRIPTION_GROUPS:-ditto-customer}
AUTH=${AUTH:-admin:changeit}
KINESIS_URL=${KINESIS_URL:-}
KINESIS_STREAM=${KINESIS_STREAM:-ditto-customer}
KINESIS_SHARDS=${KINESIS_SHARDS:-2}
AWS_REGION=${AWS_REGION:-us-east-1}

tries=0
until curl -sf "$SOURCE_URL/health/live" >/dev/null; do
  tries=$((tries + 1))
  [ "$tries" -ge 60 ] && { echo "source not reachable at $SOURCE_URL" >&2; exit 1; }
  sleep 1
done

for group in $SUBSCRIPTION_GROUPS; do
  status=$(curl -s -o /dev/null -w '%{http_code}' -X PUT -u "$AUTH" \
    -H 'Content-Type: application/json' \
    --data-binary "@$(dirname "$0")/subscription.json" \
    "$SOURCE_URL/subscriptions/%24ce-customer/$group")
  case "$status" in
    201|409) echo "subscription \$ce-customer::$group ready ($status)" ;;
    *) echo "creating the subscription \$ce-customer::$group failed: HTTP $status" >&2; exit 1 ;;
  esac
done

i=0
while [ "$i" -lt "$SEED_CUSTOMERS" ]; do
  id=$(cat /proc/sys/kernel/random/uuid)
  curl -sf -X POST -u "$AUTH" "$SOURCE_URL/streams/customer-$id" \
    -H 'Content-Type: application/vnd.eventstore.events+json' \
    --data-raw "[
      {\"eventId\":\"$(cat /proc/sys/kernel/random/uuid)\",\"eventType\":\"customer_registered\",\"data\":{\"customer_id\":\"$id\",\"name\":\"Customer $i\"},\"metadata\":{\"source\":\"ditto-setup\"}},
      {\"eventId\":\"$(cat /proc/sys/kernel/random/uuid)\",\"eventType\":\"customer_email_changed\",\"data\":{\"customer_id\":\"$id\",\"email\":\"customer$i@example.com\"},\"metadata\":{\"source\":\"ditto-setup\"}}
    ]" >/dev/null
  i=$((i + 1))
done
echo "seeded $SEED_CUSTOMERS customer streams"

[ -n "$KINESIS_URL" ] || exit 0

# kinesis ACTION BODY: one Kinesis API call; prints the HTTP status (000
# when nothing answered) and leaves the answer in $answer.
answer=$(mktemp)
trap 'rm -f "$answer"' EXIT
kinesis() {
  curl -s -o "$answer" -w '%{http_code}' -X POST "$KINESIS_URL/" \
    -H "X-Amz-Target: Kinesis_20131202.$1" \
    -H 'Content-Type: application/x-amz-json-1.1' \
    -H 'X-Amz-Date: 20000101T000000Z' \
    -H "Authorization: AWS4-HMAC-SHA256 Credential=local/20000101/$AWS_REGION/kinesis/aws4_request, SignedHeaders=host;x-amz-date, Signature=0" \
    --data-raw "$2" || true
}

tries=0
until status=$(kinesis CreateStream "{\"StreamName\":\"$KINESIS_STREAM\",\"ShardCount\":$KINESIS_SHARDS}") &&
  { [ "$status" = 200 ] || grep -q ResourceInUseException "$answer"; }; do
  tries=$((tries + 1))
  [ "$tries" -ge 60 ] && { echo "creating the Kinesis stream $KINESIS_STREAM at $KINESIS_URL failed: HTTP $status $(cat "$answer")" >&2; exit 1; }
  sleep 1
done

tries=0
until kinesis DescribeStreamSummary "{\"StreamName\":\"$KINESIS_STREAM\"}" >/dev/null &&
  grep -q '"StreamStatus":"ACTIVE"' "$answer"; do
  tries=$((tries + 1))
  [ "$tries" -ge 60 ] && { echo "the Kinesis stream $KINESIS_STREAM did not become active: $(cat "$answer")" >&2; exit 1; }
  sleep 1
done
echo "Kinesis stream $KINESIS_STREAM active ($KINESIS_SHARDS shards)"
