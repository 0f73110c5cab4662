package main

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/EventStore/EventStore-Client-Go/v4/esdb"
	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/ditto-replicator/ditto/config"
	"github.com/ditto-replicator/ditto/internal/metrics"
	"github.com/ditto-replicator/ditto/internal/testutil"
	"github.com/ditto-replicator/ditto/policy"
	"github.com/ditto-replicator/ditto/verify"
)

// Selective replication end to end: ditto under a policy, with ditto verify
// under the same policy as the oracle.

// policyEvents makes n events of stream for the selective-replication tests:
// types customer_event_0..2 in turn, JSON metadata with a tenant ("internal"
// for every fifth event), and, where binaryEvery > 0, binary metadata for
// every binaryEvery-th event (which the modes that need provenance park).
func policyEvents(stream string, from, n, binaryEvery int) []esdb.EventData {
	evs := make([]esdb.EventData, n)
	for i := range evs {
		num := from + i
		tenant := "acme"
		if num%5 == 4 {
			tenant = "internal"
		}
		ev := esdb.EventData{EventID: uuid.New(), EventType: fmt.Sprintf("customer_event_%d", num%3), ContentType: esdb.ContentTypeJson}
		ev.Data, _ = json.Marshal(map[string]any{"stream": stream, "n": num, "name": "Zoë ✓"})
		ev.Metadata, _ = json.Marshal(map[string]any{"$correlationId": stream, "n": num, "tenant": tenant})
		if binaryEvery > 0 && num%binaryEvery == binaryEvery-1 {
			ev.Metadata = []byte{0xc3, 0x28, byte(num)}
		}
		evs[i] = ev
	}
	return evs
}

// appendPolicyEvents appends policyEvents from number from on to stream on
// the source.
func (e *env) appendPolicyEvents(t *testing.T, stream string, from, n, binaryEvery int) {
	t.Helper()
	appendEvents(t, e.srcC, stream, testutil.ExpectedAt(from), policyEvents(stream, from, n, binaryEvery)...)
}

// loadedPolicy is the policy of the variables startDitto has set.
func loadedPolicy(t *testing.T) *policy.Policy {
	t.Helper()
	p, err := config.LoadPolicy()
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func histogramCount(o prometheus.Observer) uint64 {
	m, ok := o.(prometheus.Metric)
	if !ok {
		return 0
	}
	var d dto.Metric
	if m.Write(&d) != nil {
		return 0
	}
	return d.GetHistogram().GetSampleCount()
}

// sourceReads is how many reads ditto has made of the source beside its
// subscriptions (to tell whether the seqs before an event are dropped).
func (r *running) sourceReads() uint64 {
	return histogramCount(r.svc.metrics.IODuration.WithLabelValues(metrics.App, "eventstore", "source", "read_stream"))
}

func (r *running) filtered(reason string) float64 {
	return counterValue(r.svc.metrics.Filtered.WithLabelValues(metrics.App, "$ce-customer", "ditto", reason))
}

// TestFiltersByStreamTypeAndMetadata: whole streams, event types and
// metadata values are filtered, each counted by reason; the kept events of
// each stream are on the destination once, in order, with provenance. A
// single process on a Pinned group needs no read of the source to know
// which events between two kept ones were dropped.
func TestFiltersByStreamTypeAndMetadata(t *testing.T) {
	e := newEnv(t)
	e.createGroup(t, "$ce-customer", "ditto", esdb.ConsumerStrategyPinned)
	var streams []string
	for i := range 8 {
		s := fmt.Sprintf("customer-%d%s", i, uuid.NewString()[:6])
		e.appendPolicyEvents(t, s, 0, 30, 0)
		streams = append(streams, s)
	}
	skipped := "customer-skip" + uuid.NewString()[:6]
	e.appendPolicyEvents(t, skipped, 0, 10, 0)
	r := startDitto(t, e, map[string]string{
		"DITTO_EXCLUDE_STREAMS":     "customer-skip",
		"DITTO_EXCLUDE_EVENT_TYPES": "/^customer_event_1$/",
		"DITTO_EXCLUDE_METADATA":    "tenant=internal",
		"DITTO_BATCH_MAX_EVENTS":    "4",
	})
	pol := loadedPolicy(t)
	e.waitIdentical(t, verify.Options{Policy: pol})
	rep := e.compare(t, verify.Options{Streams: streams, Policy: pol})
	// Of each stream's 30 events, 10 are of type 1 and 4 more are internal
	// (n%5 == 4 and not of type 1): 16 are kept.
	if rep.SourceEvents != 8*16 || rep.DestinationEvents != 8*16 {
		t.Fatalf("source %d kept events, destination %d; want %d", rep.SourceEvents, rep.DestinationEvents, 8*16)
	}
	testutil.Eventually(t, 10*time.Second, "filtered events counted by reason", func() bool {
		return r.filtered("stream") == 10 && r.filtered("event_type") == 8*10 && r.filtered("metadata") == 8*4 && r.metric("processed") == 8*16
	})
	if got := readAll(t, e.dstC, streams[0]); got[1].EventNumber != 1 || !strings.Contains(string(got[1].UserMetadata), `"$originalEventNumber":2`) {
		t.Fatalf("second destination event: #%d %s", got[1].EventNumber, got[1].UserMetadata)
	}
	if lastNumber(e.dstC, skipped) >= 0 {
		t.Fatalf("excluded stream %s was replicated", skipped)
	}
	if n := r.sourceReads(); n != 0 {
		t.Fatalf("%d reads of the source by a single process on a Pinned group", n)
	}
	// Later events, kept and dropped, while ditto runs.
	e.appendPolicyEvents(t, streams[0], 30, 9, 0)
	e.waitIdentical(t, verify.Options{Streams: streams[:1], Policy: pol})
}

// TestMappedStreamsKeepTheirNumbers: a template renames streams; each copy
// is the source stream event for event, number for number.
func TestMappedStreamsKeepTheirNumbers(t *testing.T) {
	e := newEnv(t)
	e.createGroup(t, "$ce-customer", "ditto", esdb.ConsumerStrategyPinned)
	streams := e.seed(t, "customer", 10, 20)
	startDitto(t, e, map[string]string{"DITTO_STREAM_TEMPLATE": "{category}-replica-{id}"})
	pol := loadedPolicy(t)
	e.waitIdentical(t, verify.Options{Policy: pol})
	rep := e.compare(t, verify.Options{Streams: streams, Policy: pol})
	if rep.SourceEvents != 200 || rep.DestinationEvents != 200 {
		t.Fatalf("report %+v", rep)
	}
	id := strings.TrimPrefix(streams[3], "customer-")
	got := readAll(t, e.dstC, "customer-replica-"+id)
	src := readAll(t, e.srcC, streams[3])
	for i := range src {
		if got[i].EventID != src[i].EventID || got[i].EventNumber != src[i].EventNumber || string(got[i].UserMetadata) != string(src[i].UserMetadata) {
			t.Fatalf("event %d of the mapped copy differs", i)
		}
	}
	if lastNumber(e.dstC, streams[3]) >= 0 {
		t.Fatal("the original name was written too")
	}
}

// TestConsolidatesIntoOneStream: all streams into one (but an excluded
// one), in the order the subscription delivered them, with the
// subscription's coordinates.
func TestConsolidatesIntoOneStream(t *testing.T) {
	e := newEnv(t)
	e.createGroup(t, "$ce-customer", "ditto", esdb.ConsumerStrategyPinned)
	var streams []string
	for i := range 10 {
		s := fmt.Sprintf("customer-%d%s", i, uuid.NewString()[:6])
		e.appendPolicyEvents(t, s, 0, 20, 0)
		streams = append(streams, s)
		if i == 4 {
			// Among the subscription's numbers, which order the
			// consolidated stream: dropped as skip items, not gaps.
			e.appendPolicyEvents(t, "customer-test"+uuid.NewString()[:6], 0, 7, 0)
		}
	}
	r := startDitto(t, e, map[string]string{"DITTO_STREAM_TEMPLATE": "all-customers", "DITTO_EXCLUDE_STREAMS": "customer-test"})
	pol := loadedPolicy(t)
	e.waitIdentical(t, verify.Options{Policy: pol})
	if n := lastNumber(e.dstC, "all-customers"); n != 199 {
		t.Fatalf("all-customers ends at %d, want 199", n)
	}
	got := readAll(t, e.dstC, "all-customers")
	prov, _ := policy.ParseProvenance(got[42].UserMetadata)
	if prov.SubscriptionStreamID != "$ce-customer" || prov.SubscriptionEventNumber != 42 || prov.OriginalStreamID == "" {
		t.Fatalf("provenance of event 42: %+v", prov)
	}
	if prov, _ := policy.ParseProvenance(got[100].UserMetadata); prov.SubscriptionEventNumber != 107 {
		t.Fatalf("event 100, after the excluded stream's 7: %+v", prov)
	}
	// Events appended while ditto runs go to the end, in order.
	e.appendPolicyEvents(t, streams[2], 20, 5, 0)
	e.appendPolicyEvents(t, streams[7], 20, 5, 0)
	e.waitIdentical(t, verify.Options{Policy: pol})
	if n := r.sourceReads(); n != 0 {
		t.Fatalf("%d reads of the source by a single process on a Pinned group", n)
	}
}

// TestProvenanceAndSignatures: provenance on a plain copy, with the origin
// chain; an event corrupted at rest on the destination is reported as
// corrupted by ditto verify.
func TestProvenanceAndSignatures(t *testing.T) {
	e := newEnv(t)
	e.createGroup(t, "$ce-customer", "ditto", esdb.ConsumerStrategyPinned)
	streams := e.seed(t, "customer", 3, 10)
	// The destination already holds the first event of streams[0], with the
	// signature ditto gives it but other data: it was altered at rest.
	first := readAll(t, e.srcC, streams[0])[0]
	annotated, _ := policyFor(t, policy.Spec{Provenance: true, OriginName: "eu"}).Annotate(first.EventType, first.Data, first.UserMetadata,
		policy.Coordinates{Stream: first.StreamID, Number: first.EventNumber, Created: first.CreatedDate})
	appendEvents(t, e.dstC, streams[0], esdb.NoStream{}, esdb.EventData{EventID: first.EventID, EventType: first.EventType,
		ContentType: esdb.ContentTypeJson, Data: []byte(`{"altered":true}`), Metadata: annotated})

	startDitto(t, e, map[string]string{"DITTO_PROVENANCE": "true", "DITTO_ORIGIN_NAME": "eu"})
	pol := loadedPolicy(t)
	e.waitIdentical(t, verify.Options{Streams: streams[1:], Policy: pol})
	var rep *verify.Report
	testutil.Eventually(t, 30*time.Second, "streams[0] copied but for its corrupted event", func() bool {
		rep = e.compare(t, verify.Options{Streams: streams[:1], Policy: pol})
		return rep.DestinationEvents == 10
	})
	if rep.Corrupted != 1 || rep.Missing+rep.Extra+rep.Altered+rep.OutOfOrder != 0 || rep.Divergences[0].EventNumber != 0 {
		t.Fatalf("report %+v", rep)
	}
	var text strings.Builder
	rep.WriteText(&text)
	if !strings.Contains(text.String(), "corrupted 1") || !strings.Contains(text.String(), "no longer match its $signature") {
		t.Fatalf("report:\n%s", text.String())
	}
	got := readAll(t, e.dstC, streams[1])
	prov, _ := policy.ParseProvenance(got[4].UserMetadata)
	if len(prov.Origin) != 1 || prov.Origin[0] != "eu" || prov.OriginalEventNumber != 4 || prov.Signature == "" {
		t.Fatalf("provenance %+v", prov)
	}
	// Binary metadata is copied unchanged (no provenance) in a plain copy.
	src := readAll(t, e.srcC, streams[1])
	if string(got[3].UserMetadata) != string(src[3].UserMetadata) {
		t.Fatalf("binary metadata rewritten: %q", got[3].UserMetadata)
	}
}

func policyFor(t *testing.T, spec policy.Spec) *policy.Policy {
	t.Helper()
	p, problems := policy.Compile(spec)
	if len(problems) > 0 {
		t.Fatal(problems)
	}
	return p
}

// testNonObjectMetadataParked is the bad-input case "metadata not a JSON
// object where provenance is required": the event is parked with the rule
// as its reason, and the events after it in its stream are replicated.
func testNonObjectMetadataParked(t *testing.T) {
	e := newEnv(t)
	e.createGroup(t, "$ce-customer", "ditto", esdb.ConsumerStrategyPinned)
	stream := "customer-" + uuid.NewString()[:8]
	e.appendPolicyEvents(t, stream, 0, 12, 4) // events 3, 7 (of type 1) and 11 have binary metadata
	r := startDitto(t, e, map[string]string{"DITTO_EXCLUDE_EVENT_TYPES": "customer_event_1"})
	pol := loadedPolicy(t)
	reasons := waitParked(t, e.srcC, 2, "metadata is not a JSON object, and DITTO_EXCLUDE_EVENT_TYPES needs provenance")
	e.waitIdentical(t, verify.Options{Streams: []string{stream}, Policy: pol})
	t.Logf("park reasons: %q", reasons)
	// 0..11 without type 1 (1, 4, 7, 10) and the binary ones (3, 11): 6 events.
	if got := readAll(t, e.dstC, stream); len(got) != 6 {
		t.Fatalf("destination holds %d events, want 6", len(got))
	}
	testutil.Eventually(t, 10*time.Second, "two parks counted", func() bool { return r.metric("parked") == 2 })
}

// TestKilledMidReplicationPolicyModes is TestKilledMidReplicationLosesAndDuplicatesNothing
// for the mapped, filtered and consolidated modes, and for filtered and
// consolidated copies by two processes on a RoundRobin group (one of them
// killed at a time): each kept event ends on the destination once, in order.
func TestKilledMidReplicationPolicyModes(t *testing.T) {
	for _, tc := range []struct {
		name      string
		settings  map[string]string
		watch     string // destination stream whose growth shows progress
		processes int
		strategy  esdb.ConsumerStrategy
	}{
		{"mapped", map[string]string{"DITTO_STREAM_TEMPLATE": "dr-{stream}"}, "$ce-dr", 1, esdb.ConsumerStrategyPinned},
		{"filtered", map[string]string{"DITTO_EXCLUDE_EVENT_TYPES": "customer_event_1", "DITTO_EXCLUDE_METADATA": "tenant=internal"}, "$ce-customer", 1, esdb.ConsumerStrategyPinned},
		{"consolidated", map[string]string{"DITTO_STREAM_TEMPLATE": "all-customers"}, "all-customers", 1, esdb.ConsumerStrategyPinned},
		{"filtered, two processes, RoundRobin", map[string]string{"DITTO_EXCLUDE_EVENT_TYPES": "customer_event_1"}, "$ce-customer", 2, esdb.ConsumerStrategyRoundRobin},
		{"consolidated, two processes, RoundRobin", map[string]string{"DITTO_STREAM_TEMPLATE": "all-customers"}, "all-customers", 2, esdb.ConsumerStrategyRoundRobin},
	} {
		t.Run(tc.name, func(t *testing.T) {
			killMidRun(t, tc.settings, tc.watch, tc.processes, tc.strategy)
		})
	}
}

func killMidRun(t *testing.T, settings map[string]string, watch string, processes int, strategy esdb.ConsumerStrategy) {
	e := newEnv(t)
	e.createGroup(t, "$ce-customer", "ditto", strategy)
	const streams, perStream, chunk = 30, 40, 5
	// Every seventh event has binary metadata: parked where provenance is
	// required, copied where it is not.
	const binaryEvery = 7
	env := baseEnv(e.src.ConnectionString(), e.dst.ConnectionString(),
		map[string]string{"DITTO_METRICS_ADDRESS": "127.0.0.1:0", "DITTO_BUFFER_SIZE": "50", "DITTO_BATCH_MAX_EVENTS": "7"}, settings)
	spec := policy.Spec{StreamTemplate: settings["DITTO_STREAM_TEMPLATE"], ExcludeEventTypes: settings["DITTO_EXCLUDE_EVENT_TYPES"],
		ExcludeMetadata: settings["DITTO_EXCLUDE_METADATA"], Subscriptions: []string{"$ce-customer"}}
	pol := policyFor(t, spec)
	names, writerDone := writeInChunks(e.srcC, streams, perStream, chunk, func(s string, from, n int) []esdb.EventData {
		return policyEvents(s, from, n, binaryEvery)
	})
	kept := 0
	for _, s := range names {
		for _, ev := range policyEvents(s, 0, perStream, binaryEvery) {
			rec := &esdb.RecordedEvent{StreamID: s, EventType: ev.EventType, UserMetadata: ev.Metadata}
			if pol.Writes(pol.Destination(s), rec) {
				kept++
			}
		}
	}
	ps := make([]*process, processes)
	for i := range ps {
		ps[i] = startProcess(t, env)
	}
	seen := int64(-1)
	for kill := range 3 {
		target := min(seen+60, int64(kept-1))
		testutil.Eventually(t, 60*time.Second, fmt.Sprintf("%s grows to %d", watch, target), func() bool {
			return lastNumber(e.dstC, watch) >= target
		})
		i := kill % processes
		ps[i].kill()
		seen = lastNumber(e.dstC, watch)
		t.Logf("process %d killed with %d of %d kept events on the destination", i, seen+1, kept)
		ps[i] = startProcess(t, env)
	}
	if err := <-writerDone; err != nil {
		t.Fatal(err)
	}
	opts := verify.Options{Policy: pol, Categories: []string{"$ce-customer"}}
	if pol.Mode() != policy.Consolidated {
		opts = verify.Options{Policy: pol, Streams: names}
	}
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		var b strings.Builder
		e.compare(t, opts).WriteText(&b)
		t.Log(b.String())
		for i, p := range ps {
			out := p.output.String()
			t.Logf("process %d's last output:\n%s", i, out[max(0, len(out)-6000):])
		}
	})
	e.waitIdentical(t, opts)
	rep := e.compare(t, opts)
	if rep.SourceEvents != kept || rep.DestinationEvents != kept {
		t.Fatalf("source %d kept events, destination %d, want %d each", rep.SourceEvents, rep.DestinationEvents, kept)
	}
	for _, p := range ps {
		p.cmd.Process.Signal(syscall.SIGTERM)
		if code := p.exitCode(t); code != 0 {
			t.Fatalf("graceful stop exited %d:\n%s", code, p.output)
		}
	}
}

// TestCopiesStreamMetadata: with DITTO_COPY_STREAM_METADATA, each
// destination stream gets its source stream's metadata, without $tb and
// $acl, with DITTO_TIME_TO_LIVE as $maxAge; here through a mapping.
func TestCopiesStreamMetadata(t *testing.T) {
	e := newEnv(t)
	e.createGroup(t, "$ce-customer", "ditto", esdb.ConsumerStrategyPinned)
	streams := e.seed(t, "customer", 3, 5)
	var md esdb.StreamMetadata
	md.SetMaxCount(100)
	md.SetCacheControl(time.Minute)
	md.SetTruncateBefore(0)
	md.AddCustomProperty("owner", "team-a")
	md.SetAcl(esdb.Acl{})
	if _, err := e.srcC.SetStreamMetadata(context.Background(), streams[0], esdb.AppendToStreamOptions{}, md); err != nil {
		t.Fatal(err)
	}
	startDitto(t, e, map[string]string{"DITTO_COPY_STREAM_METADATA": "true", "DITTO_TIME_TO_LIVE": "2h", "DITTO_STREAM_TEMPLATE": "dr-{stream}"})
	e.waitIdentical(t, verify.Options{Policy: loadedPolicy(t)})
	got := readAll(t, e.dstC, "$$dr-"+streams[0])
	if len(got) != 1 {
		t.Fatalf("%d metadata events", len(got))
	}
	var m map[string]any
	if err := json.Unmarshal(got[0].Data, &m); err != nil {
		t.Fatal(err)
	}
	want := map[string]any{"$maxCount": 100.0, "$cacheControl": 60.0, "owner": "team-a", "$maxAge": 7200.0}
	if fmt.Sprint(m) != fmt.Sprint(want) {
		t.Fatalf("destination metadata %v, want %v", m, want)
	}
	// A stream without metadata of its own gets DITTO_TIME_TO_LIVE.
	other, err := e.dstC.GetStreamMetadata(context.Background(), "dr-"+streams[1], esdb.ReadStreamOptions{})
	if err != nil || other.MaxAge() == nil || *other.MaxAge() != 2*time.Hour {
		t.Fatalf("metadata of dr-%s: %+v, %v", streams[1], other, err)
	}
}
