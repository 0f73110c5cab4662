package main

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/EventStore/EventStore-Client-Go/v4/esdb"

	"github.com/ditto-replicator/ditto/internal/testutil"
	"github.com/ditto-replicator/ditto/verify"
)

func TestDemoReplicatesAndCompares(t *testing.T) {
	var out, errs syncBuffer
	code := run([]string{"demo", "--exit", "--source", "127.0.0.1:0", "--destination", "127.0.0.1:0", "--customers", "12"}, &out, &errs)
	if code != 0 {
		t.Fatalf("demo exited %d\nstdout:\n%s\nstderr:\n%s", code, out.String(), errs.String())
	}
	for _, want := range []string{"seeded 30 events in 12 customer streams", "replicated 30/30 events", "IDENTICAL"} {
		if !strings.Contains(out.String(), want) {
			t.Fatalf("demo output lacks %q:\n%s", want, out.String())
		}
	}
}

func TestHealthAndMetricsEndpoints(t *testing.T) {
	e := newEnv(t)
	e.createGroup(t, "$ce-customer", "ditto", esdb.ConsumerStrategyPinned)
	streams := e.seed(t, "customer", 3, 4)
	e.createGroup(t, "$ce-order", "later", esdb.ConsumerStrategyPinned)
	r := startDitto(t, e, map[string]string{"DITTO_SUBSCRIPTIONS": "$ce-customer:ditto,$ce-order:later"})
	base := "http://" + r.svc.listener.Addr().String()
	if code, _ := get(t, base+"/health/live"); code != http.StatusOK {
		t.Fatalf("/health/live = %d", code)
	}
	e.waitIdentical(t, verify.Options{Streams: streams})
	testutil.Eventually(t, 30*time.Second, "ready", func() bool {
		code, _ := get(t, base+"/health/ready")
		return code == http.StatusOK
	})
	// A group deleted under a running ditto: live, not ready, and ready
	// again once the group is back.
	if err := e.srcC.DeletePersistentSubscription(context.Background(), "$ce-order", "later", esdb.DeletePersistentSubscriptionOptions{}); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 30*time.Second, "not ready while a group is missing", func() bool {
		code, body := get(t, base+"/health/ready")
		return code == http.StatusServiceUnavailable && strings.Contains(body, "not every subscription is connected")
	})
	e.createGroup(t, "$ce-order", "later", esdb.ConsumerStrategyPinned)
	testutil.Eventually(t, 60*time.Second, "ready once the group is back", func() bool {
		code, _ := get(t, base+"/health/ready")
		return code == http.StatusOK
	})
	_, metrics := get(t, base+"/metrics")
	for _, want := range []string{
		`ditto_events_received_total{app="ditto",group="ditto",stream="$ce-customer"} 12`,
		`ditto_events_processed_total{app="ditto",group="ditto",stream="$ce-customer"} 12`,
		`ditto_subscription_connected{app="ditto",group="later",stream="$ce-order"} 1`,
		`ditto_io_duration_seconds_count{app="ditto",operation="append_to_stream",system="eventstore",target="destination"}`,
		"ditto_replication_delay_seconds_bucket", "ditto_batch_size_bucket", "ditto_events_in_flight 0",
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
}
