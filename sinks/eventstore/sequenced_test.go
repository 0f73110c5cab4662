package eventstore

import (
	"context"
	"encoding/json"
	"strings"
	"testing"

	"github.com/EventStore/EventStore-Client-Go/v4/esdb"
	"github.com/google/uuid"

	"github.com/ditto-replicator/ditto/internal/esdbconn"
	"github.com/ditto-replicator/ditto/internal/esdbtest"
	"github.com/ditto-replicator/ditto/policy"
	"github.com/ditto-replicator/ditto/sinks"
)

// filtered is a source stream and the destination that a policy dropping
// the "Drop" events of it writes to; sinks writing there play ditto
// processes.
type filtered struct {
	src, dst   *esdbtest.Server
	srcC, dstC *esdb.Client
	source     sinks.Source
	stream     string
	// source events by number, and their annotated copies as the
	// replicator hands them over
	recorded []*esdb.RecordedEvent
	events   []sinks.Event
}

// types of the source stream, in order: events 1 and 4 are dropped.
var filteredTypes = []string{"Keep", "Drop", "Keep", "Keep", "Drop", "Keep", "Keep"}

func newFiltered(t *testing.T) *filtered {
	t.Helper()
	f := &filtered{
		src:    esdbtest.Start(t, esdbtest.Options{Insecure: true}),
		dst:    esdbtest.Start(t, esdbtest.Options{Insecure: true}),
		stream: "order-1",
	}
	f.srcC = esdbtest.Connect(t, esdbtest.Config(t, f.src.ConnectionString()))
	f.dstC = esdbtest.Connect(t, esdbtest.Config(t, f.dst.ConnectionString()))
	pol, problems := policy.Compile(policy.Spec{ExcludeEventTypes: "Drop"})
	if len(problems) > 0 {
		t.Fatal(problems)
	}
	reads := esdbconn.New(f.srcC, nil)
	call := func(ctx context.Context, fn func(*esdb.Client) error) error {
		_, err := esdbconn.Call(ctx, reads, func(c *esdb.Client, _ func() bool) (struct{}, error) { return struct{}{}, fn(c) })
		return err
	}
	f.source = policy.NewSource(pol, policy.ClientReader(call, nil), false, false)
	var data []esdb.EventData
	for i, typ := range filteredTypes {
		md, _ := json.Marshal(map[string]any{"n": i})
		data = append(data, esdb.EventData{EventID: uuid.New(), EventType: typ, ContentType: esdb.ContentTypeJson, Data: []byte(`{}`), Metadata: md})
	}
	if _, err := f.srcC.AppendToStream(context.Background(), f.stream, esdb.AppendToStreamOptions{ExpectedRevision: esdb.NoStream{}}, data...); err != nil {
		t.Fatal(err)
	}
	f.recorded = readAllEvents(t, f.srcC, f.stream)
	for _, rec := range f.recorded {
		md, err := pol.Annotate(rec.EventType, rec.Data, rec.UserMetadata, policy.Coordinates{Stream: rec.StreamID, Number: rec.EventNumber, Created: rec.CreatedDate})
		if err != nil {
			t.Fatal(err)
		}
		f.events = append(f.events, sinks.Event{Stream: rec.StreamID, Number: rec.EventNumber, Seq: rec.EventNumber, SeqFrom: rec.EventNumber,
			ID: rec.EventID, Type: rec.EventType, ContentType: rec.ContentType, Data: rec.Data, Metadata: md, Created: rec.CreatedDate})
	}
	return f
}

// sink is one more ditto process writing to the destination.
func (f *filtered) sink(t *testing.T) *Sink {
	t.Helper()
	c := esdbtest.Connect(t, esdbtest.Config(t, f.dst.ConnectionString()))
	return New(c, Options{Source: f.source})
}

// batch returns the events of numbers, with SeqFrom set as the replicator
// sets it for a run starting at from.
func (f *filtered) batch(from uint64, numbers ...uint64) []sinks.Event {
	var out []sinks.Event
	for _, n := range numbers {
		ev := f.events[n]
		ev.SeqFrom = from
		out = append(out, ev)
		from = n + 1
	}
	return out
}

// holds checks that the destination holds the source events of numbers, in
// order, at its own numbers.
func (f *filtered) holds(t *testing.T, numbers ...uint64) {
	t.Helper()
	got := readAllEvents(t, f.dstC, f.stream)
	var gotN []uint64
	for i, ev := range got {
		prov, _ := policy.ParseProvenance(ev.UserMetadata)
		gotN = append(gotN, prov.OriginalEventNumber)
		if ev.EventNumber != uint64(i) {
			t.Fatalf("destination event %d has number %d", i, ev.EventNumber)
		}
	}
	if len(gotN) != len(numbers) {
		t.Fatalf("destination holds source events %v, want %v", gotN, numbers)
	}
	for i, n := range numbers {
		if gotN[i] != n || got[i].EventID != f.recorded[n].EventID {
			t.Fatalf("destination holds source events %v, want %v", gotN, numbers)
		}
	}
}

func readAllEvents(t *testing.T, c *esdb.Client, stream string) []*esdb.RecordedEvent {
	t.Helper()
	rs, err := c.ReadStream(context.Background(), stream, esdb.ReadStreamOptions{From: esdb.Start{}}, 1000)
	if err != nil {
		t.Fatal(err)
	}
	defer rs.Close()
	var out []*esdb.RecordedEvent
	for {
		ev, err := rs.Recv()
		if err != nil {
			return out
		}
		out = append(out, ev.Event)
	}
}

// A batch that comes again, whole or in part, after a crash (a new process
// with nothing cached) is recognised by the provenance of the destination's
// last event: nothing is written twice.
func TestSequencedWritesEachEventOnce(t *testing.T) {
	f := newFiltered(t)
	ctx := context.Background()
	a := f.sink(t)
	if err := a.Write(ctx, f.stream, f.batch(0, 0, 2, 3)); err != nil {
		t.Fatal(err)
	}
	f.holds(t, 0, 2, 3)
	b := f.sink(t) // a restart
	for _, batch := range [][]sinks.Event{f.batch(0, 0, 2, 3), f.batch(2, 2, 3, 5), f.batch(0, 0)} {
		if err := b.Write(ctx, f.stream, batch); err != nil {
			t.Fatal(err)
		}
	}
	f.holds(t, 0, 2, 3, 5)
	if err := b.Write(ctx, f.stream, f.batch(6, 6)); err != nil {
		t.Fatal(err)
	}
	f.holds(t, 0, 2, 3, 5, 6)
}

// A batch that fails after events already on the destination says so:
// Written counts them, and they are acked.
func TestSequencedWrittenCountsEventsAlreadyThere(t *testing.T) {
	f := newFiltered(t)
	ctx := context.Background()
	if err := f.sink(t).Write(ctx, f.stream, f.batch(0, 0, 2, 3)); err != nil {
		t.Fatal(err)
	}
	// 2 and 3 are there; 6 waits for 5, which is kept and not written.
	err := f.sink(t).Write(ctx, f.stream, append(f.batch(2, 2, 3), f.batch(6, 6)...))
	if we := sinks.Classify(err); we.Kind != sinks.Behind || we.Written != 2 {
		t.Fatalf("want Behind with 2 written, got %v (written %d)", err, we.Written)
	}
	f.holds(t, 0, 2, 3)
}

// An event whose predecessors are neither on the destination nor dropped
// waits (Behind); once they are written, the dropped ones between are
// recognised by reading the source, and it goes.
func TestSequencedGapWaitsForEarlierEvents(t *testing.T) {
	f := newFiltered(t)
	ctx := context.Background()
	s := f.sink(t)
	err := s.Write(ctx, f.stream, f.batch(5, 5, 6))
	if we := sinks.Classify(err); we.Kind != sinks.Behind || we.Written != 0 {
		t.Fatalf("want Behind with nothing written, got %v", err)
	}
	f.holds(t)
	if err := s.Write(ctx, f.stream, f.batch(0, 0, 2, 3)); err != nil {
		t.Fatal(err)
	}
	// 5 is kept and not there: 6 alone waits.
	if err := s.Write(ctx, f.stream, f.batch(6, 6)); sinks.Classify(err).Kind != sinks.Behind {
		t.Fatalf("want Behind, got %v", err)
	}
	// Seq 4 is dropped: the source says so.
	if err := s.Write(ctx, f.stream, f.batch(5, 5, 6)); err != nil {
		t.Fatal(err)
	}
	f.holds(t, 0, 2, 3, 5, 6)
}

// Two processes writing the same destination stream: the one whose
// position is stale fails on the expected revision, learns the stream's
// end again, and writes only what is not there.
func TestSequencedConcurrentWritersWriteOnce(t *testing.T) {
	f := newFiltered(t)
	ctx := context.Background()
	a, b := f.sink(t), f.sink(t)
	if err := a.Write(ctx, f.stream, f.batch(0, 0)); err != nil {
		t.Fatal(err)
	}
	if err := b.Write(ctx, f.stream, f.batch(0, 0)); err != nil { // b learns (0, 0)
		t.Fatal(err)
	}
	if err := a.Write(ctx, f.stream, f.batch(1, 2)); err != nil {
		t.Fatal(err)
	}
	// b's cached position is stale now.
	if err := b.Write(ctx, f.stream, f.batch(1, 2, 3)); err != nil {
		t.Fatal(err)
	}
	f.holds(t, 0, 2, 3)
}

// A destination stream whose last event ditto did not write (no
// provenance), or wrote from another source stream, has diverged.
func TestSequencedForeignDestinationIsConflict(t *testing.T) {
	f := newFiltered(t)
	ctx := context.Background()
	if _, err := f.dstC.AppendToStream(ctx, f.stream, esdb.AppendToStreamOptions{},
		esdb.EventData{EventID: uuid.New(), EventType: "Foreign", ContentType: esdb.ContentTypeJson, Data: []byte(`{}`)}); err != nil {
		t.Fatal(err)
	}
	err := f.sink(t).Write(ctx, f.stream, f.batch(0, 0))
	we := sinks.Classify(err)
	if we.Kind != sinks.Conflict || !strings.Contains(we.Reason, "carries no provenance") {
		t.Fatalf("want a conflict naming the missing provenance, got %v", err)
	}
	other := f.events[0]
	md, _ := json.Marshal(map[string]any{policy.KeyOriginalStreamID: "order-2", policy.KeyOriginalEventNumber: 0})
	if _, err := f.dstC.AppendToStream(ctx, f.stream, esdb.AppendToStreamOptions{},
		esdb.EventData{EventID: uuid.New(), EventType: "Keep", ContentType: esdb.ContentTypeJson, Data: []byte(`{}`), Metadata: md}); err != nil {
		t.Fatal(err)
	}
	err = f.sink(t).Write(ctx, f.stream, []sinks.Event{other})
	if we := sinks.Classify(err); we.Kind != sinks.Conflict || !strings.Contains(we.Reason, `comes from source stream "order-2"`) {
		t.Fatalf("want a conflict naming the other source stream, got %v", err)
	}
}
