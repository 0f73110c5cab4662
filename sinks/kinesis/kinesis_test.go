package kinesis

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws/ratelimit"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	"github.com/aws/aws-sdk-go-v2/service/kinesis"
	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/rs/zerolog"

	"github.com/ditto-replicator/ditto/internal/kinesalite"
	dittotest "github.com/ditto-replicator/ditto/internal/testutil"
	"github.com/ditto-replicator/ditto/sinks"
)

// fixture is kinesalite with a stream, a fault proxy in front of it and a
// sink writing through the proxy.
type fixture struct {
	server *kinesalite.Server
	proxy  *kinesalite.Proxy
	direct *kinesis.Client // to kinesalite, for reading back
	stream string
	sink   *Sink
	reg    *prometheus.Registry
}

// testRetryer is the SDK's standard retryer with short pauses and no retry
// quota, so that throttled calls are retried quickly and always.
func testRetryer(o *kinesis.Options) {
	o.Retryer = retry.NewStandard(func(so *retry.StandardOptions) {
		so.MaxAttempts = 5
		so.MaxBackoff = 20 * time.Millisecond
		so.RateLimiter = ratelimit.None
	})
}

func newFixture(t *testing.T, shards int32, opts Options) *fixture {
	t.Helper()
	f := &fixture{server: kinesalite.Start(t), stream: "ditto-test", reg: prometheus.NewRegistry()}
	f.direct = kinesalite.NewClient(f.server.Endpoint())
	if err := kinesalite.CreateStream(context.Background(), f.direct, f.stream, shards); err != nil {
		t.Fatal(err)
	}
	p, err := kinesalite.StartProxy(f.server.Endpoint())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	f.proxy = p
	if opts.Stream == "" {
		opts.Stream = f.stream
	}
	if opts.RecordBackoff == 0 {
		opts.RecordBackoff, opts.RecordBackoffMax = 5*time.Millisecond, 20*time.Millisecond
	}
	opts.Metrics = f.reg
	opts.Log = zerolog.Nop()
	f.sink, err = New(kinesalite.NewClient(p.Endpoint(), testRetryer), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.sink.Close() })
	return f
}

// events makes n events of stream from number from: JSON mostly, some
// binary, some with empty or non-JSON metadata.
func events(stream string, from, n int) []sinks.Event {
	evs := make([]sinks.Event, n)
	for i := range evs {
		num := from + i
		e := sinks.Event{Stream: stream, Number: uint64(num), Seq: uint64(num), ID: uuid.New(), Type: fmt.Sprintf("type-%d", num%3),
			ContentType: "application/json", Created: time.Date(2024, 5, 6, 7, 8, 9, num*1000, time.UTC)}
		e.Data = fmt.Appendf(nil, `{ "stream": %q, "n": %d, "name": "Zoë ✓" }`, stream, num)
		e.Metadata = fmt.Appendf(nil, `{"$correlationId":%q}`, stream)
		switch num % 5 {
		case 2:
			e.ContentType = "application/octet-stream"
			e.Data = []byte{0, 1, 0xff, 0xfe, byte(num)}
			e.Metadata = []byte{0xc3, 0x28}
		case 4:
			e.Data, e.Metadata = nil, nil
		}
		evs[i] = e
	}
	return evs
}

// envelope is the part of a record's JSON the checks read.
type envelope struct {
	StreamID     string `json:"stream_id"`
	EventID      string `json:"event_id"`
	EventNumber  uint64 `json:"event_number"`
	ReplicatedOn string `json:"replicated_on"`
}

// checkStream reads the stream back and checks that it holds exactly want
// (by stream), each record byte for byte the envelope of its event, and the
// records of each partition key in event-number order.
func (f *fixture) checkStream(t *testing.T, want map[string][]sinks.Event) {
	t.Helper()
	recs, err := kinesalite.ReadAll(context.Background(), f.direct, f.stream)
	if err != nil {
		t.Fatal(err)
	}
	byID := map[string]*sinks.Event{}
	index := map[string]int{} // event id → its place in want
	total := 0
	for s := range want {
		for i := range want[s] {
			byID[want[s][i].ID.String()] = &want[s][i]
			index[want[s][i].ID.String()] = i
			total++
		}
	}
	if len(recs) != total {
		t.Fatalf("%d records, want %d", len(recs), total)
	}
	next := map[string]int{}
	for _, r := range recs {
		var env envelope
		if err := json.Unmarshal(r.Data, &env); err != nil {
			t.Fatalf("record %s is not JSON: %v: %q", r.SequenceNumber, err, r.Data)
		}
		e := byID[env.EventID]
		if e == nil {
			t.Fatalf("record of unknown event %s", env.EventID)
		}
		on, err := time.Parse(time.RFC3339Nano, env.ReplicatedOn)
		if err != nil {
			t.Fatal(err)
		}
		if exp := sinks.AppendEnvelope(nil, e, on); !bytes.Equal(r.Data, exp) {
			t.Fatalf("record of %s@%d:\n got %s\nwant %s", e.Stream, e.Number, r.Data, exp)
		}
		if r.PartitionKey != e.Stream {
			t.Fatalf("partition key %q, want %q", r.PartitionKey, e.Stream)
		}
		if i := index[env.EventID]; i != next[e.Stream] {
			t.Fatalf("stream %s: event %d out of order (expected %d)", e.Stream, e.Number, want[e.Stream][next[e.Stream]].Number)
		}
		next[e.Stream]++
	}
}

// checkCalls checks that no call held two records of one partition key.
func checkCalls(t *testing.T, calls []kinesalite.Call) {
	t.Helper()
	for i, c := range calls {
		seen := map[string]bool{}
		for _, r := range c.Records {
			if seen[r.PartitionKey] {
				t.Fatalf("call %d holds two records of %s", i, r.PartitionKey)
			}
			seen[r.PartitionKey] = true
		}
		if len(c.Records) > maxCallRecords {
			t.Fatalf("call %d holds %d records", i, len(c.Records))
		}
	}
}

// writeAll writes every stream's events concurrently, one goroutine per
// stream, in batches of batch events, retrying transient failures as the
// replicator does (bounded), and returns the first other error.
func writeAll(ctx context.Context, s *Sink, want map[string][]sinks.Event, batch int) error {
	var wg sync.WaitGroup
	errs := make(chan error, len(want))
	for stream, evs := range want {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i, tries := 0, 0; i < len(evs); {
				err := s.Write(ctx, stream, evs[i:min(i+batch, len(evs))])
				if err == nil {
					i += min(batch, len(evs)-i)
					continue
				}
				we := sinks.Classify(err)
				i += we.Written
				if tries++; tries > 50 || (we.Kind != sinks.Transient && we.Kind != sinks.Behind) {
					errs <- fmt.Errorf("%s at %d: %w", stream, i, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	return <-errs
}

func manyStreams(streams, perStream int) map[string][]sinks.Event {
	want := map[string][]sinks.Event{}
	for i := 0; i < streams; i++ {
		s := fmt.Sprintf("customer-%d", i)
		want[s] = events(s, 0, perStream)
	}
	return want
}

func TestWriteRoundTrip(t *testing.T) {
	f := newFixture(t, 4, Options{})
	want := manyStreams(30, 12)
	if err := writeAll(context.Background(), f.sink, want, 5); err != nil {
		t.Fatal(err)
	}
	f.checkStream(t, want)
	checkCalls(t, f.proxy.Calls())
}

// TestCallsGatherRecordsOfManyStreams: while every call slot is busy, the
// records of the other streams wait and go out together in the next call.
func TestCallsGatherRecordsOfManyStreams(t *testing.T) {
	f := newFixture(t, 2, Options{CallsInFlight: 1})
	first, firstEv := f.holdFirstCall(t)
	want := manyStreams(39, 1)
	done := make(chan error, 1)
	go func() { done <- writeAll(context.Background(), f.sink, want, 1) }()
	f.waitQueued(t, 39)
	f.proxy.Resume()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if err := <-first; err != nil {
		t.Fatal(err)
	}
	calls := f.proxy.Calls()
	if len(calls) != 2 || len(calls[1].Records) != 39 {
		sizes := []int{}
		for _, c := range calls {
			sizes = append(sizes, len(c.Records))
		}
		t.Fatalf("call sizes %v, want 1 and 39", sizes)
	}
	want["customer-first"] = firstEv
	f.checkStream(t, want)
}

// holdFirstCall pauses the proxy and writes one event of customer-first,
// whose call the proxy then holds: with one call in flight, every record
// submitted until Resume waits for the next call. It returns a channel for
// the Write's result, and the event.
func (f *fixture) holdFirstCall(t *testing.T) (<-chan error, []sinks.Event) {
	t.Helper()
	f.proxy.Pause()
	ev := events("customer-first", 0, 1)
	done := make(chan error, 1)
	go func() { done <- f.sink.Write(context.Background(), "customer-first", ev) }()
	dittotest.Eventually(t, 30*time.Second, "the first call held", func() bool { return f.proxy.Waiting() == 1 })
	return done, ev
}

// waitQueued waits until n records wait for the next call: in the queue,
// and one taken by the batcher, which waits for a call slot.
func (f *fixture) waitQueued(t *testing.T, n int) {
	t.Helper()
	dittotest.Eventually(t, 30*time.Second, fmt.Sprintf("%d records waiting", n), func() bool {
		return len(f.sink.queue)+1 == n
	})
}

// TestThrottlingAndPartialFailures: whole calls throttled (the SDK
// retries them) and records rejected one by one (the sink puts them again
// before their stream's next event): nothing lost, nothing reordered.
func TestThrottlingAndPartialFailures(t *testing.T) {
	f := newFixture(t, 4, Options{})
	codes := []string{"ProvisionedThroughputExceededException", "InternalFailure", "KMSThrottlingException"}
	rejected := 0
	f.proxy.SetRule(func(n int, recs []kinesalite.Entry) kinesalite.Fault {
		switch {
		case n%4 == 1:
			return kinesalite.Fault{Call: kinesalite.Throttle}
		case n%4 == 2 || n%4 == 3:
			rej := map[int]string{}
			for i := range recs {
				if (i+n)%3 == 0 {
					rej[i] = codes[rejected%len(codes)]
					rejected++
				}
			}
			return kinesalite.Fault{Reject: rej}
		}
		return kinesalite.Fault{}
	})
	want := manyStreams(25, 16)
	if err := writeAll(context.Background(), f.sink, want, 8); err != nil {
		t.Fatal(err)
	}
	f.checkStream(t, want)
	calls := f.proxy.Calls()
	checkCalls(t, calls)
	// A refused record (rejected, or in a throttled call) is the next
	// record its stream sends.
	pending := map[string]string{} // partition key → event id refused last
	refused := 0
	for _, c := range calls {
		for i, r := range c.Records {
			var env envelope
			json.Unmarshal(r.Data, &env)
			if id, ok := pending[r.PartitionKey]; ok && id != env.EventID {
				t.Fatalf("%s sent event %d (%s) before its refused record %s", r.PartitionKey, env.EventNumber, env.EventID, id)
			}
			delete(pending, r.PartitionKey)
			if _, rejected := c.Fault.Reject[i]; rejected || c.Fault.Call != "" {
				pending[r.PartitionKey] = env.EventID
				refused++
			}
		}
	}
	if refused == 0 || len(pending) != 0 {
		t.Fatalf("%d records refused, %d never sent again", refused, len(pending))
	}
	retried := testutil.ToFloat64(f.sink.retried.WithLabelValues("InternalFailure"))
	throttled := testutil.ToFloat64(f.sink.throttled.WithLabelValues("ProvisionedThroughputExceededException"))
	if retried == 0 || throttled == 0 || testutil.ToFloat64(f.sink.throttled.WithLabelValues("KMSThrottlingException")) == 0 {
		t.Fatalf("retried %v, throttled %v: the counters missed the faults", retried, throttled)
	}
	if n, err := testutil.GatherAndCount(f.reg, "ditto_kinesis_records_retried_total", "ditto_kinesis_records_throttled_total"); err != nil || n == 0 {
		t.Fatalf("metrics not registered: %d, %v", n, err)
	}
}

// TestRejectedRecordHoldsItsStream: a record Kinesis keeps rejecting ends
// the Write as Transient with the events before it written; the stream's
// later events then wait (Behind) until it is written, so that nothing
// overtakes it when the replicator hands it back to the source.
func TestRejectedRecordHoldsItsStream(t *testing.T) {
	f := newFixture(t, 1, Options{RecordAttempts: 3})
	const stuck = "customer-stuck"
	var refuse sync.Mutex
	blocked := true
	f.proxy.SetRule(func(n int, recs []kinesalite.Entry) kinesalite.Fault {
		refuse.Lock()
		defer refuse.Unlock()
		rej := map[int]string{}
		for i, r := range recs {
			var env envelope
			json.Unmarshal(r.Data, &env)
			if blocked && r.PartitionKey == stuck && env.EventNumber == 2 {
				rej[i] = "ProvisionedThroughputExceededException"
			}
		}
		return kinesalite.Fault{Reject: rej}
	})
	evs := events(stuck, 0, 6)
	err := f.sink.Write(context.Background(), stuck, evs[:4])
	var we *sinks.WriteError
	if !errors.As(err, &we) || we.Kind != sinks.Transient || we.Written != 2 ||
		!strings.Contains(we.Reason, "rejected the record of event 2 of stream customer-stuck 3 times") {
		t.Fatalf("Write = %v, want transient after 2 events", err)
	}
	// Event 2 was handed back; event 4 arrives first and must wait.
	err = f.sink.Write(context.Background(), stuck, evs[4:])
	if !errors.As(err, &we) || we.Kind != sinks.Behind || we.Written != 0 {
		t.Fatalf("Write of later events = %v, want behind", err)
	}
	// Other streams are not held.
	other := events("customer-other", 0, 2)
	if err := f.sink.Write(context.Background(), "customer-other", other); err != nil {
		t.Fatal(err)
	}
	refuse.Lock()
	blocked = false
	refuse.Unlock()
	if err := f.sink.Write(context.Background(), stuck, evs[2:4]); err != nil {
		t.Fatal(err)
	}
	if err := f.sink.Write(context.Background(), stuck, evs[4:]); err != nil {
		t.Fatal(err)
	}
	f.checkStream(t, map[string][]sinks.Event{stuck: evs, "customer-other": other})
}

func TestRecordTooLargeIsPermanent(t *testing.T) {
	f := newFixture(t, 1, Options{})
	evs := events("customer-big", 0, 3)
	evs[1].ContentType = "application/octet-stream"
	evs[1].Data = make([]byte, 800<<10) // 1.07 MB as base64
	err := f.sink.Write(context.Background(), "customer-big", evs)
	var we *sinks.WriteError
	if !errors.As(err, &we) || we.Kind != sinks.Permanent || we.Written != 1 ||
		!strings.Contains(we.Reason, "over Kinesis's limit of 1048576 bytes (1 MiB)") {
		t.Fatalf("Write = %v, want permanent after 1 event", err)
	}
	// The replicator parks event 1 and goes on with event 2.
	if err := f.sink.Write(context.Background(), "customer-big", evs[2:]); err != nil {
		t.Fatal(err)
	}
	f.checkStream(t, map[string][]sinks.Event{"customer-big": {evs[0], evs[2]}})
}

// TestRefusedCallIsIsolated: a call Kinesis refuses as invalid fails every
// record in it; each is put again alone, so only the record to blame is
// permanent.
func TestRefusedCallIsIsolated(t *testing.T) {
	f := newFixture(t, 2, Options{CallsInFlight: 1})
	f.proxy.SetRule(func(n int, recs []kinesalite.Entry) kinesalite.Fault {
		for _, r := range recs {
			if r.PartitionKey == "customer-bad" {
				return kinesalite.Fault{Call: "InvalidArgumentException"}
			}
		}
		return kinesalite.Fault{}
	})
	want := manyStreams(20, 3)
	bad := events("customer-bad", 0, 1)
	// With the first call held, the bad record waits with the first
	// records of 20 other streams and shares the next call with them.
	first, firstEv := f.holdFirstCall(t)
	done := make(chan error, 1)
	go func() { done <- writeAll(context.Background(), f.sink, want, 3) }()
	badErr := make(chan error, 1)
	go func() { badErr <- f.sink.Write(context.Background(), "customer-bad", bad) }()
	f.waitQueued(t, 21)
	f.proxy.Resume()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if err := <-first; err != nil {
		t.Fatal(err)
	}
	var we *sinks.WriteError
	if err := <-badErr; !errors.As(err, &we) || we.Kind != sinks.Permanent || !strings.Contains(we.Reason, "InvalidArgumentException") {
		t.Fatalf("bad Write = %v, want permanent", err)
	}
	want["customer-first"] = firstEv
	f.checkStream(t, want)
	shared := false
	for _, c := range f.proxy.Calls() {
		if c.Fault.Call != "" && len(c.Records) > 1 {
			shared = true
		}
	}
	if !shared {
		t.Fatal("the bad record never shared a call: the test proves nothing")
	}
}

func TestReady(t *testing.T) {
	f := newFixture(t, 1, Options{})
	ctx := context.Background()
	if err := f.sink.Ready(ctx); err != nil {
		t.Fatalf("Ready = %v", err)
	}
	f.proxy.Refuse(&kinesalite.Refusal{Status: 400, Type: "UnrecognizedClientException", Message: "The security token included in the request is invalid."})
	err := f.sink.Ready(ctx)
	if err == nil || !strings.Contains(err.Error(), "Kinesis refused ditto's credentials") || strings.Contains(err.Error(), kinesalite.SecretKey) {
		t.Fatalf("Ready with refused credentials = %v", err)
	}
	werr := f.sink.Write(ctx, "customer-1", events("customer-1", 0, 1))
	if we := sinks.Classify(werr); werr == nil || we.Kind != sinks.Transient || strings.Contains(werr.Error(), kinesalite.SecretKey) {
		t.Fatalf("Write with refused credentials = %v, want transient", werr)
	}
	f.proxy.Refuse(nil)
	if err := kinesalite.DeleteStream(ctx, f.direct, f.stream); err != nil {
		t.Fatal(err)
	}
	if err := f.sink.Ready(ctx); err == nil || !strings.Contains(err.Error(), "Kinesis stream ditto-test does not exist") {
		t.Fatalf("Ready without the stream = %v", err)
	}
	if err := kinesalite.CreateStream(ctx, f.direct, f.stream, 1); err != nil {
		t.Fatal(err)
	}
	// Describe answers again, but the last call said the credentials were
	// wrong: not ready until a write goes through.
	if err := f.sink.Ready(ctx); err == nil {
		t.Fatal("ready although the last write was refused")
	}
	// The refused event 0 holds its stream: it is written first.
	if err := f.sink.Write(ctx, "customer-1", events("customer-1", 1, 1)); sinks.Classify(err).Kind != sinks.Behind {
		t.Fatalf("Write after the refused event = %v, want behind", err)
	}
	if err := f.sink.Write(ctx, "customer-1", events("customer-1", 0, 2)); err != nil {
		t.Fatal(err)
	}
	if err := f.sink.Ready(ctx); err != nil {
		t.Fatalf("Ready after a write = %v", err)
	}
}

func TestPartitionKey(t *testing.T) {
	long := strings.Repeat("x", 257)
	emoji := strings.Repeat("🦀", 129) // 258 UTF-16 code units
	for _, c := range []struct{ stream, want string }{
		{"customer-1", "customer-1"},
		{strings.Repeat("x", 256), strings.Repeat("x", 256)},
		{long, "sha256:"},
		{strings.Repeat("🦀", 128), strings.Repeat("🦀", 128)},
		{emoji, "sha256:"},
	} {
		got := partitionKey(c.stream)
		if c.want == "sha256:" {
			if !strings.HasPrefix(got, "sha256:") || len(got) != 7+64 || got != partitionKey(c.stream) {
				t.Errorf("partitionKey(%d chars) = %q", len(c.stream), got)
			}
			continue
		}
		if got != c.want {
			t.Errorf("partitionKey(%q) = %q", c.stream, got)
		}
	}
}

// A consolidated stream (DITTO_STREAM_TEMPLATE without {stream}) carries the
// events of several source streams, ordered by Seq, not by their numbers:
// a held record holds every later Seq of the stream, whatever its number.
// (Regression: the hold compared event numbers, so event 1 of another
// source stream overtook a held event 1.)
func TestHoldFollowsSeqInAConsolidatedStream(t *testing.T) {
	f := newFixture(t, 1, Options{RecordAttempts: 2})
	const all = "all-customers"
	var mu sync.Mutex
	blocked := true
	f.proxy.SetRule(func(n int, recs []kinesalite.Entry) kinesalite.Fault {
		mu.Lock()
		defer mu.Unlock()
		rej := map[int]string{}
		for i, r := range recs {
			var env envelope
			json.Unmarshal(r.Data, &env)
			if blocked && env.StreamID == "customer-a" && env.EventNumber == 1 {
				rej[i] = "ProvisionedThroughputExceededException"
			}
		}
		return kinesalite.Fault{Reject: rej}
	})
	// Seq 0..5: customer-a 0, customer-b 0, customer-a 1, customer-b 1, ...
	var evs []sinks.Event
	for seq := 0; seq < 6; seq++ {
		src := []string{"customer-a", "customer-b"}[seq%2]
		e := events(src, seq/2, 1)[0]
		e.Seq, e.SeqFrom = uint64(seq), uint64(seq)
		evs = append(evs, e)
	}
	var we *sinks.WriteError
	if err := f.sink.Write(context.Background(), all, evs[:3]); !errors.As(err, &we) || we.Kind != sinks.Transient || we.Written != 2 {
		t.Fatalf("Write = %v, want transient after 2 events", err)
	}
	// Seq 3 is customer-b's event 1: a later Seq, an equal number.
	if err := f.sink.Write(context.Background(), all, evs[3:]); !errors.As(err, &we) || we.Kind != sinks.Behind {
		t.Fatalf("Write of later Seqs = %v, want behind", err)
	}
	mu.Lock()
	blocked = false
	mu.Unlock()
	if err := f.sink.Write(context.Background(), all, evs[2:]); err != nil {
		t.Fatal(err)
	}
}

// A held event that Kinesis then refuses for good is parked by the
// replicator: its stream's later events go on at once instead of waiting
// for an event that will never be written. (Regression: the hold stayed
// until it expired, and the later events were answered Behind meanwhile.)
func TestParkedHeldRecordReleasesItsStream(t *testing.T) {
	f := newFixture(t, 1, Options{RecordAttempts: 2})
	const stuck = "customer-parked"
	var mu sync.Mutex
	fault := "throttle"
	f.proxy.SetRule(func(n int, recs []kinesalite.Entry) kinesalite.Fault {
		mu.Lock()
		defer mu.Unlock()
		for i, r := range recs {
			var env envelope
			json.Unmarshal(r.Data, &env)
			if env.EventNumber != 1 {
				continue
			}
			if fault == "invalid" {
				return kinesalite.Fault{Call: "InvalidArgumentException"}
			}
			return kinesalite.Fault{Reject: map[int]string{i: "ProvisionedThroughputExceededException"}}
		}
		return kinesalite.Fault{}
	})
	evs := events(stuck, 0, 4)
	var we *sinks.WriteError
	if err := f.sink.Write(context.Background(), stuck, evs[:2]); !errors.As(err, &we) || we.Kind != sinks.Transient || we.Written != 1 {
		t.Fatalf("Write = %v, want transient after 1 event", err)
	}
	mu.Lock()
	fault = "invalid"
	mu.Unlock()
	if err := f.sink.Write(context.Background(), stuck, evs[1:2]); !errors.As(err, &we) || we.Kind != sinks.Permanent || we.Written != 0 {
		t.Fatalf("Write of the held event = %v, want permanent", err)
	}
	if err := f.sink.Write(context.Background(), stuck, evs[2:]); err != nil {
		t.Fatalf("Write after the parked event = %v, want it written", err)
	}
}
