package main

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/EventStore/EventStore-Client-Go/v4/esdb"

	"github.com/ditto-replicator/ditto/internal/esdbtest"
	"github.com/ditto-replicator/ditto/internal/testutil"
	"github.com/ditto-replicator/ditto/verify"
)

// fanOutEnv is the environment of a ditto writing to the destinations
// east and west.
func fanOutEnv(src, east, west, metrics string, extra map[string]string) map[string]string {
	return baseEnv(src, "", map[string]string{
		"DITTO_DESTINATIONS":                       "east=eventstore,west=eventstore",
		"DITTO_EAST_DESTINATION_CONNECTION_STRING": east,
		"DITTO_WEST_DESTINATION_CONNECTION_STRING": west,
		"DITTO_METRICS_ADDRESS":                    metrics,
	}, extra)
}

// TestFanOutToTwoEventStores: one ditto process copies a category to two
// destinations; both end identical to the source, and each destination's
// calls are timed under its own name.
func TestFanOutToTwoEventStores(t *testing.T) {
	e := newEnv(t)
	west := esdbtest.Start(t, esdbtest.Options{Insecure: true})
	w := &env{src: e.src, dst: west, srcC: e.srcC, dstC: mustClient(t, west.ConnectionString())}
	e.createGroup(t, "$ce-customer", "ditto", esdb.ConsumerStrategyPinned)
	streams := e.seed(t, "customer", 20, 10)
	metrics := testutil.FreeAddr(t)
	p := startProcess(t, fanOutEnv(e.src.ConnectionString(), e.dst.ConnectionString(), west.ConnectionString(), metrics, nil))
	e.waitIdentical(t, verify.Options{Streams: streams})
	w.waitIdentical(t, verify.Options{Streams: streams})
	testutil.Eventually(t, 30*time.Second, "200 events processed", func() bool {
		return sample(t, metrics, `ditto_events_processed_total{app="ditto",group="ditto",stream="$ce-customer"}`) == 200
	})
	for _, name := range []string{"east", "west"} {
		prefix := `ditto_io_duration_seconds_count{app="ditto",operation="append_to_stream",system="eventstore",target="` + name + `"}`
		if n := sample(t, metrics, prefix); n <= 0 {
			t.Errorf("no appends timed for %s (%v)", name, n)
		}
	}
	if code, body := readyStatus(metrics); code != http.StatusOK {
		t.Fatalf("/health/ready %d: %s", code, body)
	}
	stopGracefully(t, p)
}

// testFanOutDestinationDown: west (a process) is killed while events keep
// coming. /health/ready answers 503 naming it; east gets the events ditto
// holds, but the source keeps them unacked (ack after all), so ditto holds
// no more than its buffer and reads no further (back-pressure). Once west is
// back both end identical to the source: nothing lost, duplicated or parked.
func testFanOutDestinationDown(t *testing.T) {
	e := newEnv(t)
	west := startEmulator(t)
	e.createGroup(t, "$ce-customer", "ditto", esdb.ConsumerStrategyPinned)
	streams := e.seed(t, "customer", 10, 5)
	metrics := testutil.FreeAddr(t)
	// Enough retries that nothing goes back to the source during the
	// outage: the events stay in flight on ditto's connection.
	p := startProcess(t, fanOutEnv(e.src.ConnectionString(), e.dst.ConnectionString(), west.connectionString(), metrics,
		map[string]string{"DITTO_WRITE_RETRIES": "1000", "DITTO_BUFFER_SIZE": "20"}))
	w := &env{src: e.src, srcC: e.srcC, dstC: mustClient(t, west.connectionString())}
	e.waitIdentical(t, verify.Options{Streams: streams})
	w.waitIdentical(t, verify.Options{Streams: streams})
	processed := `ditto_events_processed_total{app="ditto",group="ditto",stream="$ce-customer"}`
	testutil.Eventually(t, 30*time.Second, "50 events processed", func() bool { return sample(t, metrics, processed) == 50 })

	west.proc.kill()
	for _, s := range streams {
		e.append(t, s, 5, 5)
	}
	testutil.Eventually(t, 30*time.Second, "/health/ready 503 naming west", func() bool {
		code, body := readyStatus(metrics)
		return code == http.StatusServiceUnavailable && strings.Contains(body, "destination west: destination not reachable") &&
			!strings.Contains(body, "destination east")
	})
	// 50 new events; the buffer holds 20 of them, which east gets.
	testutil.Eventually(t, 30*time.Second, "east holds the 20 events in flight, the source holds them unacked", func() bool {
		info, err := e.srcC.GetPersistentSubscriptionInfo(context.Background(), "$ce-customer", "ditto", esdb.GetPersistentSubscriptionOptions{})
		return err == nil && len(info.Connections) == 1 && info.Connections[0].InFlightMessages == 20 &&
			lastNumber(e.dstC, "$ce-customer") == 69
	})
	if n := sample(t, metrics, processed); n != 50 {
		t.Fatalf("%v events acked while west is down, want the 50 from before", n)
	}
	if n := sample(t, metrics, "ditto_events_in_flight "); n != 20 {
		t.Fatalf("ditto holds %v events, want its buffer of 20", n)
	}

	west.start(t)
	w.dstC = mustClient(t, west.connectionString())
	w.waitIdentical(t, verify.Options{Streams: streams})
	e.waitIdentical(t, verify.Options{Streams: streams})
	for _, c := range []*env{e, w} {
		rep := c.compare(t, verify.Options{Streams: streams})
		if !rep.OK() || rep.SourceEvents != 100 || rep.DestinationEvents != 100 {
			t.Fatalf("source %d, destination %d events, want 100 each", rep.SourceEvents, rep.DestinationEvents)
		}
	}
	testutil.Eventually(t, 30*time.Second, "100 events processed and ready", func() bool {
		code, _ := readyStatus(metrics)
		return sample(t, metrics, processed) == 100 && code == http.StatusOK
	})
	if n := len(parked(t, e.srcC, "$ce-customer", "ditto")); n != 0 {
		t.Fatalf("%d events parked during the outage", n)
	}
	stopGracefully(t, p)
}

// testFanOutWrongPassword: rejected credentials on one destination stop
// ditto, naming that destination's variable.
func testFanOutWrongPassword(t *testing.T) {
	e := newEnv(t)
	west := esdbtest.Start(t, esdbtest.Options{})
	e.createGroup(t, "$ce-customer", "ditto", esdb.ConsumerStrategyPinned)
	e.seed(t, "customer", 2, 2)
	cs := "esdb://admin:Wr0ng-Pa55@" + west.Addr() + "?tls=true&tlsCAFile=" + west.CAFile()
	p := startProcess(t, fanOutEnv(e.src.ConnectionString(), e.dst.ConnectionString(), cs, "", nil))
	if code := p.exitCode(t); code != 1 {
		t.Fatalf("exit code %d, want 1:\n%s", code, p.output)
	}
	out := p.output.String()
	if !strings.Contains(out, "destination west: DITTO_WEST_DESTINATION_CONNECTION_STRING: the destination rejected the credentials") {
		t.Fatalf("no clear message:\n%s", out)
	}
	if strings.Contains(out, "Wr0ng-Pa55") {
		t.Fatalf("the output leaks the password:\n%s", out)
	}
	if n := len(parked(t, e.srcC, "$ce-customer", "ditto")); n != 0 {
		t.Fatalf("%d events parked", n)
	}
}

// TestFanOutWithAFilter: where a filter inside streams makes destination
// numbers the destination's own, every destination of a fan-out gets the
// policy's source reads and writes each kept event once. (Regression: the
// destinations were opened without them, so the kept events were written
// and then parked as a divergence.)
func TestFanOutWithAFilter(t *testing.T) {
	e := newEnv(t)
	west := esdbtest.Start(t, esdbtest.Options{Insecure: true})
	w := &env{src: e.src, dst: west, srcC: e.srcC, dstC: mustClient(t, west.ConnectionString())}
	e.createGroup(t, "$ce-customer", "ditto", esdb.ConsumerStrategyPinned)
	var streams []string
	for i := range 4 {
		s := fmt.Sprintf("customer-f%d", i)
		e.appendPolicyEvents(t, s, 0, 20, 0)
		streams = append(streams, s)
	}
	filter := map[string]string{"DITTO_EXCLUDE_EVENT_TYPES": "/^customer_event_1$/"}
	p := startProcess(t, fanOutEnv(e.src.ConnectionString(), e.dst.ConnectionString(), west.ConnectionString(), testutil.FreeAddr(t), filter))
	t.Setenv("DITTO_EXCLUDE_EVENT_TYPES", filter["DITTO_EXCLUDE_EVENT_TYPES"])
	pol := loadedPolicy(t)
	for _, d := range []*env{e, w} {
		d.waitIdentical(t, verify.Options{Streams: streams, Policy: pol})
	}
	if n := len(parked(t, e.srcC, "$ce-customer", "ditto")); n != 0 {
		t.Fatalf("%d events parked", n)
	}
	stopGracefully(t, p)
}
