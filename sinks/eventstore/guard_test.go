package eventstore

import (
	"context"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/EventStore/EventStore-Client-Go/v4/esdb"

	"github.com/ditto-replicator/ditto/internal/esdbconn"
	"github.com/ditto-replicator/ditto/internal/esdbtest"
	"github.com/ditto-replicator/ditto/policy"
	"github.com/ditto-replicator/ditto/sinks"
)

// guardedPair is a source and a destination that takes writes of its own
// (DITTO_DESTINATION_NAME set), with a sink writing plain copies from one
// to the other.
type guardedPair struct {
	srcC, dstC *esdb.Client
	sink       *Sink
	reads      atomic.Int64 // destination reads of the sink
}

func newGuardedPair(t *testing.T, guarded bool) *guardedPair {
	t.Helper()
	src := esdbtest.Start(t, esdbtest.Options{Insecure: true})
	dst := esdbtest.Start(t, esdbtest.Options{Insecure: true})
	g := &guardedPair{
		srcC: esdbtest.Connect(t, esdbtest.Config(t, src.ConnectionString())),
		dstC: esdbtest.Connect(t, esdbtest.Config(t, dst.ConnectionString())),
	}
	spec := policy.Spec{Provenance: true, OriginName: "a"}
	if guarded {
		spec.DestinationName = "b"
	}
	pol, problems := policy.Compile(spec)
	if len(problems) > 0 {
		t.Fatal(problems)
	}
	reads := esdbconn.New(g.srcC, nil)
	call := func(ctx context.Context, fn func(*esdb.Client) error) error {
		_, err := esdbconn.Call(ctx, reads, func(c *esdb.Client, _ func() bool) (struct{}, error) { return struct{}{}, fn(c) })
		return err
	}
	c := esdbtest.Connect(t, esdbtest.Config(t, dst.ConnectionString()))
	g.sink = New(c, Options{Source: policy.NewSource(pol, policy.ClientReader(call, nil), false, false),
		Observe: func(op string, _ time.Duration) {
			if op == "read_stream" {
				g.reads.Add(1)
			}
		}})
	return g
}

// appendTo appends evs to stream on c at their numbers.
func appendTo(t *testing.T, c *esdb.Client, stream string, evs []sinks.Event) {
	t.Helper()
	var exp esdb.ExpectedRevision = esdb.Revision(evs[0].Number - 1)
	if evs[0].Number == 0 {
		exp = esdb.NoStream{}
	}
	if _, err := c.AppendToStream(context.Background(), stream, esdb.AppendToStreamOptions{ExpectedRevision: exp}, toData(evs)...); err != nil {
		t.Fatal(err)
	}
}

// The hazard the check closes: the destination stream holds a foreign event
// at 0 (written on both sides), so the source's event 0 was refused as a
// conflict; its event 1 fits expected revision 0 and, unchecked, would be
// appended after the foreign event. Checked, it is a conflict too, however
// long after, in any process; a source event whose predecessor the
// destination holds is appended.
func TestGuardedAppendAfterForeignEventIsConflict(t *testing.T) {
	ctx := context.Background()
	for _, guarded := range []bool{false, true} {
		g := newGuardedPair(t, guarded)
		src := events("x-1", 0, 3)
		appendTo(t, g.srcC, "x-1", src)
		appendTo(t, g.dstC, "x-1", events("x-1", 0, 1)) // foreign
		if err := g.sink.Write(ctx, "x-1", src[:1]); kind(err) != sinks.Conflict {
			t.Fatalf("guarded %v: event 0 over a foreign event 0: %v", guarded, err)
		}
		err := g.sink.Write(ctx, "x-1", src[1:])
		if !guarded {
			if err != nil {
				t.Fatalf("unguarded: %v", err)
			}
			if got := ids(t, g.dstC, "x-1"); len(got) != 3 || got[1] != src[1].ID {
				t.Fatalf("unguarded: destination %v", got)
			}
			continue
		}
		we := sinks.Classify(err)
		if we.Kind != sinks.Conflict || we.Written != 0 || !strings.Contains(we.Reason, "destination stream x-1 diverged at 0: it holds event") {
			t.Fatalf("guarded: events 1..2 after a foreign event 0: %v", err)
		}
		if got := ids(t, g.dstC, "x-1"); len(got) != 1 {
			t.Fatalf("guarded: destination holds %d events, want the foreign one alone", len(got))
		}
	}
}

// A destination that ends before the batch is behind if what it holds is
// the source's (an earlier event is on its way), and diverged if not.
func TestGuardedBehindOrDiverged(t *testing.T) {
	ctx := context.Background()
	g := newGuardedPair(t, true)
	src := events("x-2", 0, 5)
	appendTo(t, g.srcC, "x-2", src)
	appendTo(t, g.dstC, "x-2", src[:1])
	if err := g.sink.Write(ctx, "x-2", src[3:]); kind(err) != sinks.Behind {
		t.Fatalf("destination holding the source's event 0: %v, want behind", err)
	}
	appendTo(t, g.srcC, "y-2", src)
	appendTo(t, g.dstC, "y-2", events("y-2", 0, 1))
	if err := g.sink.Write(ctx, "y-2", src[3:]); kind(err) != sinks.Conflict || !strings.Contains(err.Error(), "diverged at 0") {
		t.Fatalf("destination holding a foreign event 0: %v, want conflict", err)
	}
}

// Active/active in a plain copy: the destination's events 0..1 are its own,
// copied to the source (the same ids at the same numbers), and the source's
// event 2 goes after them. Streams the sink keeps writing are checked once.
func TestGuardedAppendsAfterTheDestinationsOwnEvents(t *testing.T) {
	ctx := context.Background()
	g := newGuardedPair(t, true)
	evs := events("x-3", 0, 6)
	appendTo(t, g.dstC, "x-3", evs[:2])
	appendTo(t, g.srcC, "x-3", evs[:3])
	if err := g.sink.Write(ctx, "x-3", evs[2:3]); err != nil {
		t.Fatal(err)
	}
	appendTo(t, g.srcC, "x-3", evs[3:])
	before := g.reads.Load()
	if err := g.sink.Write(ctx, "x-3", evs[3:4]); err != nil {
		t.Fatal(err)
	}
	if err := g.sink.Write(ctx, "x-3", evs[4:]); err != nil {
		t.Fatal(err)
	}
	if n := g.reads.Load() - before; n != 0 {
		t.Fatalf("%d destination reads for writes after the sink's own", n)
	}
	wantIDs(t, g.dstC, "x-3", evs)
}

// Records (sinks.Event.AtEnd) go to the end of their stream, whatever their
// numbers, and a record written again is recognised.
func TestRecordsAreAppendedAtTheEnd(t *testing.T) {
	ctx := context.Background()
	s, c := newSink(t, Options{})
	recs := append(events("x-4", 7, 2), events("y-4", 3, 1)...)
	for i := range recs {
		recs[i].AtEnd = true
	}
	if err := s.Write(ctx, "conflicts", recs[:2]); err != nil {
		t.Fatal(err)
	}
	for _, b := range [][]sinks.Event{recs[:2], recs[1:], recs} {
		if err := s.Write(ctx, "conflicts", b); err != nil {
			t.Fatal(err)
		}
	}
	wantIDs(t, c, "conflicts", recs)
}
