package fanout_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/EventStore/EventStore-Client-Go/v4/esdb"
	"github.com/google/uuid"
	"github.com/rs/zerolog"

	"github.com/ditto-replicator/ditto/internal/esdbconn"
	"github.com/ditto-replicator/ditto/internal/esdbtest"
	"github.com/ditto-replicator/ditto/internal/testutil"
	"github.com/ditto-replicator/ditto/sinks"
	"github.com/ditto-replicator/ditto/sinks/eventstore"
	"github.com/ditto-replicator/ditto/sinks/fanout"
	"github.com/ditto-replicator/ditto/sinks/stdout"
)

// dest is an eventstore destination whose appends are counted.
type dest struct {
	name    string
	cs      string
	sink    sinks.Sink
	appends atomic.Int64
}

func openDest(t *testing.T, name, cs string) *dest {
	t.Helper()
	p, _ := sinks.Lookup("eventstore")
	d := &dest{name: name, cs: cs}
	s, err := p.Open(context.Background(), &eventstore.Settings{DestinationConnectionString: cs, BatchAppend: true}, sinks.Env{
		Log: zerolog.Nop(),
		Observe: func(op string, _ time.Duration) {
			if op == "append_to_stream" {
				d.appends.Add(1)
			}
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	d.sink = s
	t.Cleanup(func() { s.Close() })
	return d
}

func newFanout(t *testing.T, opts fanout.Options, ds ...*dest) *fanout.Sink {
	t.Helper()
	var list []fanout.Destination
	for _, d := range ds {
		list = append(list, fanout.Destination{Name: d.name, Sink: d.sink})
	}
	// Not closed: the destinations close themselves at cleanup, and some
	// tests share them between fan-outs.
	return fanout.New(list, opts)
}

func events(stream string, from, n int) []sinks.Event {
	out := make([]sinks.Event, n)
	for i := range out {
		out[i] = sinks.Event{Stream: stream, Number: uint64(from + i), Seq: uint64(from + i), ID: uuid.New(), Type: "t", ContentType: "application/json",
			Data: []byte(fmt.Sprintf(`{"n":%d}`, from+i)), Created: time.Now()}
	}
	return out
}

// ids reads the event ids of stream on the server at cs.
func ids(t *testing.T, cs, stream string) []uuid.UUID {
	t.Helper()
	c, err := esdbconn.NewClient(cs, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	rs, err := c.ReadStream(context.Background(), stream, esdb.ReadStreamOptions{From: esdb.Start{}}, 1000)
	if err != nil {
		t.Fatal(err)
	}
	defer rs.Close()
	var out []uuid.UUID
	for {
		ev, err := rs.Recv()
		if errors.Is(err, io.EOF) {
			return out
		}
		var e *esdb.Error
		if errors.As(err, &e) && e.Code() == esdb.ErrorCodeResourceNotFound {
			return nil
		}
		if err != nil {
			t.Fatalf("reading %s: %v", stream, err)
		}
		out = append(out, ev.Event.EventID)
	}
}

func sameIDs(t *testing.T, cs, stream string, evs []sinks.Event) {
	t.Helper()
	got := ids(t, cs, stream)
	if len(got) != len(evs) {
		t.Fatalf("%s on %s holds %d events, want %d", stream, cs, len(got), len(evs))
	}
	for i := range evs {
		if got[i] != evs[i].ID {
			t.Fatalf("%s on %s: event %d is %s, want %s", stream, cs, i, got[i], evs[i].ID)
		}
	}
}

func writeErr(t *testing.T, err error) *sinks.WriteError {
	t.Helper()
	var we *sinks.WriteError
	if !errors.As(err, &we) {
		t.Fatalf("error %v is not a *sinks.WriteError", err)
	}
	return we
}

func ctxFor(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func TestWritesEveryDestination(t *testing.T) {
	a := openDest(t, "a", esdbtest.Start(t, esdbtest.Options{Insecure: true}).ConnectionString())
	b := openDest(t, "b", esdbtest.Start(t, esdbtest.Options{Insecure: true}).ConnectionString())
	s := newFanout(t, fanout.Options{}, a, b)
	evs := events("customer-1", 0, 5)
	if err := s.Write(ctxFor(t, 30*time.Second), "customer-1", evs); err != nil {
		t.Fatal(err)
	}
	sameIDs(t, a.cs, "customer-1", evs)
	sameIDs(t, b.cs, "customer-1", evs)
	if n := s.Streams(); n != 0 {
		t.Fatalf("%d streams remembered after a write every destination took", n)
	}
}

// A destination that is away fails the write, naming it; the other keeps
// what it took, and retries go only to the destination without the events
// until it is back. Nothing is written twice.
func TestRetryGoesOnlyToTheDestinationWithoutTheEvents(t *testing.T) {
	a := openDest(t, "a", esdbtest.Start(t, esdbtest.Options{Insecure: true}).ConnectionString())
	bAddr := testutil.FreeAddr(t)
	b := openDest(t, "b", "esdb://"+bAddr+"?tls=false")
	s := newFanout(t, fanout.Options{}, a, b)
	evs := events("customer-1", 0, 5)

	we := writeErr(t, s.Write(ctxFor(t, 10*time.Second), "customer-1", evs))
	if we.Kind != sinks.Transient || we.Written != 0 || !strings.HasPrefix(we.Reason, "destination b: ") {
		t.Fatalf("write with b away: %+v", we)
	}
	sameIDs(t, a.cs, "customer-1", evs)
	appends := a.appends.Load()
	if s.Streams() != 1 {
		t.Fatalf("%d streams remembered, want 1", s.Streams())
	}
	// A retry, with one more event that has joined the lane since.
	evs = append(evs, events("customer-1", 5, 1)...)
	we = writeErr(t, s.Write(ctxFor(t, 10*time.Second), "customer-1", evs))
	if we.Written != 0 || a.appends.Load() != appends+1 {
		t.Fatalf("retry: %+v; a appended %d times, want once more (the new event only)", we, a.appends.Load()-appends)
	}
	sameIDs(t, a.cs, "customer-1", evs)
	appends = a.appends.Load()

	esdbtest.Start(t, esdbtest.Options{Insecure: true, Addr: bAddr})
	testutil.Eventually(t, 60*time.Second, "the write succeeds once b is back", func() bool {
		return s.Write(ctxFor(t, 10*time.Second), "customer-1", evs) == nil
	})
	if a.appends.Load() != appends {
		t.Fatalf("a was written %d more times, though it had every event", a.appends.Load()-appends)
	}
	sameIDs(t, a.cs, "customer-1", evs)
	sameIDs(t, b.cs, "customer-1", evs)
	if n := s.Streams(); n != 0 {
		t.Fatalf("%d streams remembered once the destinations agree", n)
	}
}

// A destination that refuses an event (its stream is tombstoned there)
// makes the write permanent, naming it; one that can still take the event
// speaks first, so the event is not parked before every destination had
// its chance.
func TestPermanentOnOneDestination(t *testing.T) {
	srvB := esdbtest.Start(t, esdbtest.Options{Insecure: true})
	a := openDest(t, "a", esdbtest.Start(t, esdbtest.Options{Insecure: true}).ConnectionString())
	b := openDest(t, "b", srvB.ConnectionString())
	c, err := esdbconn.NewClient(srvB.ConnectionString(), zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.TombstoneStream(context.Background(), "customer-gone", esdb.TombstoneStreamOptions{ExpectedRevision: esdb.Any{}}); err != nil {
		t.Fatal(err)
	}
	s := newFanout(t, fanout.Options{}, a, b)
	evs := events("customer-gone", 0, 2)
	we := writeErr(t, s.Write(ctxFor(t, 30*time.Second), "customer-gone", evs))
	if we.Kind != sinks.Permanent || we.Written != 0 || we.Reason != "destination b: destination stream customer-gone is deleted" {
		t.Fatalf("write: %+v", we)
	}
	sameIDs(t, a.cs, "customer-gone", evs)

	// With a third destination away, the same event is transient: it waits.
	away := openDest(t, "c", "esdb://"+testutil.FreeAddr(t)+"?tls=false")
	s3 := newFanout(t, fanout.Options{}, a, b, away)
	evs = events("customer-gone2", 0, 1)
	if _, err := c.TombstoneStream(context.Background(), "customer-gone2", esdb.TombstoneStreamOptions{ExpectedRevision: esdb.Any{}}); err != nil {
		t.Fatal(err)
	}
	we = writeErr(t, s3.Write(ctxFor(t, 10*time.Second), "customer-gone2", evs))
	if we.Kind != sinks.Transient || !strings.HasPrefix(we.Reason, "destination c: ") {
		t.Fatalf("write with c away and b refusing: %+v", we)
	}
}

// Only MaxStreams streams are remembered; a forgotten stream's retry goes to
// every destination again, and an eventstore destination recognises the
// events it holds.
func TestForgetsBeyondMaxStreams(t *testing.T) {
	a := openDest(t, "a", esdbtest.Start(t, esdbtest.Options{Insecure: true}).ConnectionString())
	b := openDest(t, "b", "esdb://"+testutil.FreeAddr(t)+"?tls=false")
	s := newFanout(t, fanout.Options{MaxStreams: 2}, a, b)
	batches := map[string][]sinks.Event{}
	for _, stream := range []string{"customer-1", "customer-2", "customer-3"} {
		batches[stream] = events(stream, 0, 3)
		writeErr(t, s.Write(ctxFor(t, 10*time.Second), stream, batches[stream]))
	}
	if n := s.Streams(); n != 2 {
		t.Fatalf("%d streams remembered, want the cap of 2", n)
	}
	before := a.appends.Load()
	writeErr(t, s.Write(ctxFor(t, 10*time.Second), "customer-3", batches["customer-3"]))
	if a.appends.Load() != before {
		t.Fatal("a remembered stream's retry went to the destination that has it")
	}
	writeErr(t, s.Write(ctxFor(t, 10*time.Second), "customer-1", batches["customer-1"]))
	if a.appends.Load() == before {
		t.Fatal("the forgotten stream's retry did not go to every destination")
	}
	sameIDs(t, a.cs, "customer-1", batches["customer-1"])
}

// Any mix of sinks: a stdout destination beside an eventstore one that is
// away gets each line once, however often the write is retried.
func TestMixedSinks(t *testing.T) {
	var out syncBuffer
	away := openDest(t, "dr", "esdb://"+testutil.FreeAddr(t)+"?tls=false")
	s := fanout.New([]fanout.Destination{{Name: "feed", Sink: stdout.New(&out)}, {Name: "dr", Sink: away.sink}}, fanout.Options{})
	evs := events("customer-1", 0, 3)
	for i := 0; i < 3; i++ {
		we := writeErr(t, s.Write(ctxFor(t, 10*time.Second), "customer-1", evs))
		if !strings.HasPrefix(we.Reason, "destination dr: ") {
			t.Fatalf("reason %q", we.Reason)
		}
	}
	if n := strings.Count(out.String(), "\n"); n != 3 {
		t.Fatalf("stdout got %d lines, want 3:\n%s", n, out.String())
	}
}

// Readiness names the destination that does not answer, and a fatal answer
// of one is fatal for all, with its variables renamed.
func TestReadyNamesTheDestination(t *testing.T) {
	a := openDest(t, "a", esdbtest.Start(t, esdbtest.Options{Insecure: true}).ConnectionString())
	b := openDest(t, "b", "esdb://"+testutil.FreeAddr(t)+"?tls=false")
	s := newFanout(t, fanout.Options{}, a, b)
	err := s.Ready(ctxFor(t, 10*time.Second))
	if err == nil || !strings.HasPrefix(err.Error(), "destination b: destination not reachable") || strings.Contains(err.Error(), "destination a") || sinks.IsFatal(err) {
		t.Fatalf("ready with b away: %v", err)
	}

	tls := esdbtest.Start(t, esdbtest.Options{})
	wrong := openDest(t, "west", "esdb://admin:Wr0ng-Pa55@"+tls.Addr()+"?tls=true&tlsCAFile="+tls.CAFile())
	rename := strings.NewReplacer("DITTO_DESTINATION_", "DITTO_WEST_DESTINATION_").Replace
	s2 := fanout.New([]fanout.Destination{{Name: "a", Sink: a.sink}, {Name: "west", Sink: wrong.sink, Rename: rename}}, fanout.Options{})
	err = s2.Ready(ctxFor(t, 10*time.Second))
	if !sinks.IsFatal(err) || !strings.Contains(err.Error(), "destination west: DITTO_WEST_DESTINATION_CONNECTION_STRING: the destination rejected the credentials") {
		t.Fatalf("ready with a wrong password on west: %v", err)
	}
	if strings.Contains(err.Error(), "Wr0ng-Pa55") {
		t.Fatalf("the password leaked: %v", err)
	}
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

// What every destination holds is the least of what each holds; a
// destination that cannot tell makes the answer unknown, naming it.
func TestHeldIsTheLeastOfTheDestinations(t *testing.T) {
	a := openDest(t, "a", esdbtest.Start(t, esdbtest.Options{Insecure: true}).ConnectionString())
	b := openDest(t, "b", esdbtest.Start(t, esdbtest.Options{Insecure: true}).ConnectionString())
	ctx := ctxFor(t, 30*time.Second)
	one, two := events("customer-1", 0, 5), events("customer-2", 0, 2)
	for _, w := range []struct {
		d      *dest
		stream string
		evs    []sinks.Event
	}{{a, "customer-1", one}, {b, "customer-1", one[:3]}, {a, "customer-2", two}} {
		if err := w.d.sink.Write(ctx, w.stream, w.evs); err != nil {
			t.Fatal(err)
		}
	}
	s := newFanout(t, fanout.Options{}, a, b)
	held, err := s.Held(ctx, []string{"customer-1", "customer-2", "customer-3"})
	if err != nil {
		t.Fatal(err)
	}
	if held["customer-1"] != 2 || held["customer-2"] != -1 || held["customer-3"] != -1 {
		t.Fatalf("held %v; want customer-1 at 2, the others at -1", held)
	}
	mixed := fanout.New([]fanout.Destination{{Name: "a", Sink: a.sink}, {Name: "feed", Sink: stdout.New(io.Discard)}}, fanout.Options{})
	if _, err := mixed.Held(ctx, []string{"customer-1"}); err == nil || !strings.Contains(err.Error(), "destination feed cannot tell what it holds") {
		t.Fatalf("held with a stdout destination: %v", err)
	}
}

// Regression: a retry smaller than what a destination holds (the
// replicator writes one event at a time to isolate a refused one) must not
// make the fan-out forget the rest: the stdout destination holding 0..4
// was sent 1..4 again after a retry of 0 alone.
func TestShortRetryKeepsWhatADestinationHolds(t *testing.T) {
	var out syncBuffer
	addr := testutil.FreeAddr(t)
	dr := openDest(t, "dr", "esdb://"+addr+"?tls=false")
	s := fanout.New([]fanout.Destination{{Name: "feed", Sink: stdout.New(&out)}, {Name: "dr", Sink: dr.sink}}, fanout.Options{})
	evs := events("customer-1", 0, 5)
	for _, batch := range [][]sinks.Event{evs, evs[:1], evs[1:]} {
		writeErr(t, s.Write(ctxFor(t, 10*time.Second), "customer-1", batch))
	}
	esdbtest.Start(t, esdbtest.Options{Insecure: true, Addr: addr})
	testutil.Eventually(t, 60*time.Second, "event 0 written to dr", func() bool {
		return s.Write(ctxFor(t, 10*time.Second), "customer-1", evs[:1]) == nil
	})
	if s.Streams() != 1 {
		t.Fatal("the stream was forgotten while feed holds more than dr")
	}
	if err := s.Write(ctxFor(t, 10*time.Second), "customer-1", evs[1:]); err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(out.String(), "\n"); n != 5 {
		t.Fatalf("feed got %d lines, want each of the 5 events once", n)
	}
	sameIDs(t, dr.cs, "customer-1", evs)
	if s.Streams() != 0 {
		t.Fatal("the stream is still remembered once both hold all of it")
	}
}
