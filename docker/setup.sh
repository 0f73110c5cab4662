#!/bin/sh
# Creates the $ce-customer::ditto-customer subscription group on the source
# through the HTTP API and seeds SEED_CUSTOMERS customer streams, like
# benfoster/ditto's docker setup. Bounded: gives up after 60 attempts.
set -eu
SOURCE_URL=${SOURCE_URL:-http://127.0.0.1:2113}
SEED_CUSTOMERS=${SEED_CUSTOMERS:-10}
AUTH=${AUTH:-admin:changeit}

tries=0
until curl -sf "$SOURCE_URL/health/live" >/dev/null; do
  tries=$((tries + 1))
  [ "$tries" -ge 60 ] && { echo "source not reachable at $SOURCE_URL" >&2; exit 1; }
  sleep 1
done

status=$(curl -s -o /dev/null -w '%{http_code}' -X PUT -u "$AUTH" \
  -H 'Content-Type: application/json' \
  --data-binary "@$(dirname "$0")/subscription.json" \
  "$SOURCE_URL/subscriptions/%24ce-customer/ditto-customer")
case "$status" in
  201|409) echo "subscription \$ce-customer::ditto-customer ready ($status)" ;;
  *) echo "creating the subscription failed: HTTP $status" >&2; exit 1 ;;
esac

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
