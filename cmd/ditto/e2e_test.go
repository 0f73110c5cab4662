package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/EventStore/EventStore-Client-Go/v4/esdb"
	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/rs/zerolog"

	"github.com/ditto-replicator/ditto/internal/esdbtest"
	"github.com/ditto-replicator/ditto/internal/faultproxy"
	"github.com/ditto-replicator/ditto/internal/metrics"
	"github.com/ditto-replicator/ditto/internal/testutil"
	"github.com/ditto-replicator/ditto/verify"
)

// env is a source and a destination test server with clients.
type env struct {
	src, dst   *esdbtest.Server
	srcC, dstC *esdb.Client
}

func newEnv(t *testing.T) *env {
	t.Helper()
	e := &env{
		src: esdbtest.Start(t, esdbtest.Options{Insecure: true}),
		dst: esdbtest.Start(t, esdbtest.Options{Insecure: true}),
	}
	e.srcC = mustClient(t, e.src.ConnectionString())
	e.dstC = mustClient(t, e.dst.ConnectionString())
	return e
}

func mustClient(t *testing.T, cs string) *esdb.Client {
	t.Helper()
	c, err := newClient(cs, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// createGroup creates stream::group from the start with links resolved.
func (e *env) createGroup(t *testing.T, stream, group string, strategy esdb.ConsumerStrategy) {
	t.Helper()
	s := esdb.SubscriptionSettingsDefault()
	s.ResolveLinkTos = true
	s.ConsumerStrategyName = strategy
	if err := e.srcC.CreatePersistentSubscription(context.Background(), stream, group,
		esdb.PersistentStreamSubscriptionOptions{Settings: &s, StartFrom: esdb.Start{}}); err != nil {
		t.Fatalf("creating %s::%s: %v", stream, group, err)
	}
}

// testEvents makes n events of varied shape: JSON, binary data, empty data,
// binary metadata, unicode.
func testEvents(stream string, from, n int) []esdb.EventData {
	evs := make([]esdb.EventData, n)
	for i := range evs {
		num := from + i
		ev := esdb.EventData{EventID: uuid.New(), EventType: fmt.Sprintf("customer_event_%d", num%3), ContentType: esdb.ContentTypeJson}
		ev.Data, _ = json.Marshal(map[string]any{"stream": stream, "n": num, "name": "Zoë ✓"})
		ev.Metadata, _ = json.Marshal(map[string]any{"$correlationId": stream, "n": num})
		switch num % 7 {
		case 3:
			ev.ContentType = esdb.ContentTypeBinary
			ev.Data = []byte{0, 1, 2, 0xff, 0xfe, byte(num)}
			ev.Metadata = []byte{0xc3, 0x28, byte(num)}
		case 5:
			ev.Data = nil
			ev.Metadata = nil
		}
		evs[i] = ev
	}
	return evs
}

// seed appends events events to each of streams new streams "<category>-<i>-<uuid>".
func (e *env) seed(t *testing.T, category string, streams, events int) []string {
	t.Helper()
	names := make([]string, streams)
	for i := range names {
		names[i] = fmt.Sprintf("%s-%d%s", category, i, uuid.NewString()[:8])
		e.append(t, names[i], 0, events)
	}
	return names
}

// append appends testEvents from number from on to stream on the source.
func (e *env) append(t *testing.T, stream string, from, n int) {
	t.Helper()
	appendEvents(t, e.srcC, stream, testutil.ExpectedAt(from), testEvents(stream, from, n)...)
}

// running is a ditto service running in this process.
type running struct {
	svc    *service
	cancel context.CancelFunc
	done   chan error
	logs   *syncBuffer
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// startDitto runs ditto in this process against e with the given settings
// on top of test defaults, and stops it at cleanup.
func startDitto(t *testing.T, e *env, settings map[string]string) *running {
	t.Helper()
	base := map[string]string{
		"DITTO_SOURCE_CONNECTION_STRING":      e.src.ConnectionString(),
		"DITTO_DESTINATION_CONNECTION_STRING": e.dst.ConnectionString(),
		"DITTO_SUBSCRIPTIONS":                 "$ce-customer:ditto",
		"DITTO_METRICS_ADDRESS":               "127.0.0.1:0",
		"DITTO_LOG_LEVEL":                     "debug",
		"DITTO_RETRY_BACKOFF_MAX":             "200ms",
	}
	cfg, err := testutil.LoadConfig(t, base, settings)
	if err != nil {
		t.Fatal(err)
	}
	logs := &syncBuffer{}
	svc, err := newService(context.Background(), cfg, newLogger(cfg, logs), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{svc: svc, cancel: cancel, done: make(chan error, 1), logs: logs}
	go func() { r.done <- svc.run(ctx) }()
	t.Cleanup(func() { r.stop(t) })
	return r
}

func (r *running) stop(t *testing.T) {
	r.cancel()
	select {
	case err := <-r.done:
		if err != nil {
			t.Errorf("ditto stopped with %v", err)
		}
		r.done <- nil
	case <-time.After(60 * time.Second):
		t.Error("ditto did not stop within 60s")
	}
}

// metric reads one of ditto's per-subscription counters for $ce-customer:ditto.
func (r *running) metric(name string) float64 {
	m := r.svc.metrics
	vec := map[string]*prometheus.CounterVec{
		"processed": m.Processed, "parked": m.Parked, "unresolved": m.Unresolved, "skipped": m.Skipped,
	}[name]
	return counterValue(vec.WithLabelValues(metrics.App, "$ce-customer", "ditto"))
}

// compare runs the verifier over $ce-customer.
func (e *env) compare(t *testing.T, opts verify.Options) *verify.Report {
	t.Helper()
	if opts.Categories == nil && opts.Streams == nil {
		opts.Categories = []string{"$ce-customer"}
	}
	rep, err := verify.Compare(context.Background(), e.srcC, e.dstC, opts)
	if err != nil {
		t.Fatalf("verify: %v", err)
	}
	return rep
}

// waitIdentical waits until the destination matches the source.
func (e *env) waitIdentical(t *testing.T, opts verify.Options) {
	t.Helper()
	var last *verify.Report
	testutil.Eventually(t, 90*time.Second, "destination identical to source", func() bool {
		last = e.compare(t, opts)
		return last.OK()
	})
	if last != nil && !last.OK() {
		var b strings.Builder
		last.WriteText(&b)
		t.Log(b.String())
	}
}

// TestOverlappingSubscriptionsCountEachDelivery: an event that two groups
// deliver (its category's and its type's) is written once and counted as
// processed for each group.
func TestOverlappingSubscriptionsCountEachDelivery(t *testing.T) {
	e := newEnv(t)
	e.createGroup(t, "$ce-customer", "ditto", esdb.ConsumerStrategyPinned)
	e.createGroup(t, "$et-customer_event_0", "ditto", esdb.ConsumerStrategyPinned)
	e.seed(t, "customer", 10, 30) // types customer_event_0..2 in turn: 100 of type 0
	r := startDitto(t, e, map[string]string{"DITTO_SUBSCRIPTIONS": "$ce-customer:ditto,$et-customer_event_0:ditto"})
	e.waitIdentical(t, verify.Options{})
	processed := func(stream string) float64 {
		return counterValue(r.svc.metrics.Processed.WithLabelValues(metrics.App, stream, "ditto"))
	}
	testutil.Eventually(t, 10*time.Second, "300 and 100 events processed", func() bool {
		return processed("$ce-customer") == 300 && processed("$et-customer_event_0") == 100
	})
}

func TestReplicatesCategoryByteIdentical(t *testing.T) {
	e := newEnv(t)
	e.createGroup(t, "$ce-customer", "ditto", esdb.ConsumerStrategyPinned)
	streams := e.seed(t, "customer", 50, 20)
	r := startDitto(t, e, nil)
	e.waitIdentical(t, verify.Options{})
	rep := e.compare(t, verify.Options{Streams: streams})
	if !rep.OK() || rep.Streams != 50 || rep.SourceEvents != 1000 || rep.DestinationEvents != 1000 {
		t.Fatalf("report: %+v", rep)
	}
	testutil.Eventually(t, 10*time.Second, "1000 events processed", func() bool { return r.metric("processed") == 1000 })
	// Events written later, while ditto runs, arrive too.
	e.append(t, streams[0], 20, 5)
	e.waitIdentical(t, verify.Options{Streams: streams[:1]})
}

func TestThreeInstancesRoundRobinKeepOrder(t *testing.T) {
	e := newEnv(t)
	e.createGroup(t, "$ce-customer", "ditto", esdb.ConsumerStrategyRoundRobin)
	streams := e.seed(t, "customer", 50, 20)
	for i := 0; i < 3; i++ {
		startDitto(t, e, map[string]string{"DITTO_BUFFER_SIZE": "20"})
	}
	e.waitIdentical(t, verify.Options{Streams: streams})
}

func TestSkipVersionCheck(t *testing.T) {
	e := newEnv(t)
	e.createGroup(t, "$ce-customer", "ditto", esdb.ConsumerStrategyPinned)
	streams := e.seed(t, "customer", 10, 20)
	startDitto(t, e, map[string]string{"DITTO_SKIP_VERSION_CHECK": "true"})
	e.waitIdentical(t, verify.Options{Streams: streams})
}

func TestTimeToLiveSetsMaxAge(t *testing.T) {
	e := newEnv(t)
	e.createGroup(t, "$ce-customer", "ditto", esdb.ConsumerStrategyPinned)
	streams := e.seed(t, "customer", 5, 3)
	startDitto(t, e, map[string]string{"DITTO_TIME_TO_LIVE": "1h"})
	e.waitIdentical(t, verify.Options{Streams: streams})
	for _, s := range streams {
		md, err := e.dstC.GetStreamMetadata(context.Background(), s, esdb.ReadStreamOptions{})
		if err != nil {
			t.Fatalf("metadata of %s: %v", s, err)
		}
		if md.MaxAge() == nil || *md.MaxAge() != time.Hour {
			t.Fatalf("%s: $maxAge = %v, want 1h", s, md.MaxAge())
		}
	}
}

func TestReadOnlyWritesNothing(t *testing.T) {
	e := newEnv(t)
	e.createGroup(t, "$ce-customer", "ditto", esdb.ConsumerStrategyPinned)
	e.seed(t, "customer", 5, 4)
	r := startDitto(t, e, map[string]string{"DITTO_READ_ONLY": "true", "DITTO_DESTINATION_CONNECTION_STRING": ""})
	testutil.Eventually(t, 30*time.Second, "20 events received and acked", func() bool { return r.metric("skipped") == 20 })
	rs, err := e.dstC.ReadAll(context.Background(), esdb.ReadAllOptions{From: esdb.Start{}}, 10000)
	if err != nil {
		t.Fatal(err)
	}
	defer rs.Close()
	for {
		ev, err := rs.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if strings.HasPrefix(ev.OriginalEvent().StreamID, "customer-") {
			t.Fatalf("read-only ditto wrote %s to the destination", ev.OriginalEvent().StreamID)
		}
	}
}

func TestUnresolvedLinksAreSkipped(t *testing.T) {
	e := newEnv(t)
	streams := e.seed(t, "customer", 3, 4)
	if _, err := e.srcC.DeleteStream(context.Background(), streams[0], esdb.DeleteStreamOptions{}); err != nil {
		t.Fatal(err)
	}
	// Created after the delete, so the group reads the links from history
	// and resolves them now.
	e.createGroup(t, "$ce-customer", "ditto", esdb.ConsumerStrategyPinned)
	r := startDitto(t, e, nil)
	e.waitIdentical(t, verify.Options{Streams: streams[1:]})
	testutil.Eventually(t, 30*time.Second, "4 unresolved links counted", func() bool { return r.metric("unresolved") == 4 })
	testutil.Eventually(t, 30*time.Second, "the deletion marker skipped", func() bool { return r.metric("skipped") == 1 })
	rs, err := e.dstC.ReadStream(context.Background(), streams[0], esdb.ReadStreamOptions{}, 1)
	if err != nil {
		t.Fatal(err)
	}
	defer rs.Close()
	if _, err := rs.Recv(); err == nil {
		t.Fatalf("deleted source stream %s was replicated", streams[0])
	}
}

func TestDivergedDestinationStreamIsParked(t *testing.T) {
	e := newEnv(t)
	e.createGroup(t, "$ce-customer", "ditto", esdb.ConsumerStrategyPinned)
	streams := e.seed(t, "customer", 4, 5)
	// The destination already holds other events in streams[1].
	if _, err := e.dstC.AppendToStream(context.Background(), streams[1], esdb.AppendToStreamOptions{ExpectedRevision: esdb.NoStream{}},
		testEvents(streams[1], 0, 2)...); err != nil {
		t.Fatal(err)
	}
	r := startDitto(t, e, nil)
	others := []string{streams[0], streams[2], streams[3]}
	e.waitIdentical(t, verify.Options{Streams: others})
	testutil.Eventually(t, 30*time.Second, "5 events parked", func() bool {
		if r.metric("parked") != 5 {
			t.Log(r.metric("parked"))
		}
		return r.metric("parked") == 5
	})

	parked := readAll(t, e.srcC, "$persistentsubscription-$ce-customer::ditto-parked")
	if len(parked) != 5 {
		t.Fatalf("parked stream holds %d events, want 5", len(parked))
	}
	var meta struct{ Reason string }
	if err := json.Unmarshal(parked[0].UserMetadata, &meta); err != nil {
		t.Fatalf("parked metadata %q: %v", parked[0].UserMetadata, err)
	}
	if !strings.Contains(meta.Reason, "destination stream "+streams[1]+" diverged at 0") {
		t.Fatalf("park reason %q does not name the divergence", meta.Reason)
	}
}

// sourceEvents reads streams from the source.
func (e *env) sourceEvents(t *testing.T, streams []string) map[string][]*esdb.RecordedEvent {
	t.Helper()
	out := map[string][]*esdb.RecordedEvent{}
	for _, s := range streams {
		out[s] = readAll(t, e.srcC, s)
	}
	return out
}

// readAll reads stream on c, links not resolved.
func readAll(t *testing.T, c *esdb.Client, stream string) []*esdb.RecordedEvent {
	t.Helper()
	return readStream(t, c, stream, false)
}

// readIfAny is readAll of a stream that may not exist: nil then.
func readIfAny(t *testing.T, c *esdb.Client, stream string) []*esdb.RecordedEvent {
	t.Helper()
	return readStream(t, c, stream, true)
}

func readStream(t *testing.T, c *esdb.Client, stream string, mayBeMissing bool) []*esdb.RecordedEvent {
	t.Helper()
	missing := func(err error) bool {
		var e *esdb.Error
		return mayBeMissing && errors.As(err, &e) && e.Code() == esdb.ErrorCodeResourceNotFound
	}
	rs, err := c.ReadStream(context.Background(), stream, esdb.ReadStreamOptions{From: esdb.Start{}}, 100000)
	if missing(err) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	defer rs.Close()
	var out []*esdb.RecordedEvent
	for {
		ev, err := rs.Recv()
		if errors.Is(err, io.EOF) {
			return out
		}
		if missing(err) {
			return nil
		}
		if err != nil {
			t.Fatalf("reading %s: %v", stream, err)
		}
		out = append(out, ev.Event)
	}
}

// Bounded memory: a destination that accepts nothing holds ditto at the
// subscription's buffer size; nothing is acked, so the source sends no more
// and no queue grows inside ditto.
func TestStalledDestinationHoldsBackTheSource(t *testing.T) {
	e := newEnv(t)
	e.createGroup(t, "$ce-customer", "ditto", esdb.ConsumerStrategyRoundRobin)
	e.seed(t, "customer", 50, 10)
	proxy, err := faultproxy.Start(e.dst.Addr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { proxy.Close() })
	proxy.SetBlackhole(true)
	r := startDitto(t, e, map[string]string{
		"DITTO_BUFFER_SIZE":                   "20",
		"DITTO_DESTINATION_CONNECTION_STRING": "esdb://" + proxy.Addr() + "?tls=false",
	})
	var info *esdb.PersistentSubscriptionInfo
	testutil.Eventually(t, 30*time.Second, "the consumer's buffer is full", func() bool {
		info, err = e.srcC.GetPersistentSubscriptionInfo(context.Background(), "$ce-customer", "ditto", esdb.GetPersistentSubscriptionOptions{})
		return err == nil && len(info.Connections) == 1 && info.Connections[0].InFlightMessages == 20
	})
	if c := info.Connections[0]; c.AvailableSlots != 0 {
		t.Fatalf("connection has %d free slots with 20 in flight", c.AvailableSlots)
	}
	if inFlight := gaugeValue(r.svc.metrics.InFlight); inFlight > 20 {
		t.Fatalf("ditto holds %v events, more than its buffer of 20", inFlight)
	}
	if n := r.metric("processed"); n != 0 {
		t.Fatalf("%v events acked as written to a destination that accepts nothing", n)
	}
	// Once the destination answers, everything arrives.
	proxy.SetBlackhole(false)
	e.waitIdentical(t, verify.Options{})
}

// TestStopsWhileEventsFlow: a stop takes effect while deliveries keep
// coming (it is not held up until the backlog is copied), and a restart
// completes the copy. The first run is throttled (at most 10 events per
// millisecond), so that copying the whole backlog would take it seconds.
func TestStopsWhileEventsFlow(t *testing.T) {
	e := newEnv(t)
	e.createGroup(t, "$ce-customer", "ditto", esdb.ConsumerStrategyPinned)
	const streams, perStream = 40, 500
	e.seed(t, "customer", streams, perStream)
	r := startDitto(t, e, map[string]string{"DITTO_REPLICATION_THROTTLE_INTERVAL": "1ms", "DITTO_BATCH_MAX_EVENTS": "10"})
	testutil.Eventually(t, 60*time.Second, "replication under way", func() bool { return r.metric("processed") >= 200 })
	r.stop(t)
	// Only the writes in flight at the stop finish after it.
	if n := r.metric("processed"); n >= streams*perStream {
		t.Fatalf("the whole backlog (%v events) was copied before the stop took effect", n)
	}
	startDitto(t, e, nil)
	e.waitIdentical(t, verify.Options{})
}

func gaugeValue(g prometheus.Gauge) float64 {
	var m dto.Metric
	if err := g.Write(&m); err != nil {
		return 0
	}
	return m.GetGauge().GetValue()
}
