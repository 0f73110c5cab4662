package eventstore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"

	"github.com/EventStore/EventStore-Client-Go/v4/esdb"
	"github.com/google/uuid"

	"github.com/ditto-replicator/ditto/internal/esdbconn"
	"github.com/ditto-replicator/ditto/internal/esdbtest"
	"github.com/ditto-replicator/ditto/sinks"
)

// withoutBatchAppend makes newSink's server a pre-21.10 one, without
// BatchAppend, so that the sink appends through the client.
var withoutBatchAppend bool

func newSink(t *testing.T, opts Options) (*Sink, *esdb.Client) {
	t.Helper()
	srv := esdbtest.Start(t, esdbtest.Options{Insecure: true, MaxAppendSize: 64 << 10, DisableBatchAppend: withoutBatchAppend})
	conf := esdbtest.Config(t, srv.ConnectionString())
	c := esdbtest.Connect(t, conf)
	opts.Config = conf
	s := New(c, opts)
	t.Cleanup(func() {
		// Each test runs on both paths (TestWithoutBatchAppend): check that the
		// sink took the one the server offers.
		s.batch.mu.Lock()
		dialled, unsupported := s.batch.checked != nil, s.batch.unsupported
		s.batch.mu.Unlock()
		if dialled && unsupported != withoutBatchAppend {
			t.Errorf("the sink found BatchAppend unsupported = %v on a server with DisableBatchAppend = %v", unsupported, withoutBatchAppend)
		}
		s.batch.close()
	})
	return s, c
}

func events(stream string, from, n int) []sinks.Event {
	evs := make([]sinks.Event, n)
	for i := range evs {
		evs[i] = sinks.Event{Stream: stream, Number: uint64(from + i), ID: uuid.New(), Type: "t",
			ContentType: "application/json", Data: []byte(fmt.Sprintf(`{"n":%d}`, from+i))}
	}
	return evs
}

func ids(t *testing.T, c *esdb.Client, stream string) []uuid.UUID {
	t.Helper()
	rs, err := c.ReadStream(context.Background(), stream, esdb.ReadStreamOptions{From: esdb.Start{}}, 1000)
	if err != nil {
		t.Fatal(err)
	}
	defer rs.Close()
	var out []uuid.UUID
	for {
		ev, err := rs.Recv()
		if errors.Is(err, io.EOF) || hasCode(err, esdb.ErrorCodeResourceNotFound) {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, ev.Event.EventID)
	}
}

func wantIDs(t *testing.T, c *esdb.Client, stream string, evs []sinks.Event) {
	t.Helper()
	got := ids(t, c, stream)
	if len(got) != len(evs) {
		t.Fatalf("%s holds %d events, want %d", stream, len(got), len(evs))
	}
	for i := range evs {
		if got[i] != evs[i].ID {
			t.Fatalf("%s #%d is %s, want %s", stream, i, got[i], evs[i].ID)
		}
	}
}

func kind(err error) sinks.Kind { return sinks.Classify(err).Kind }

func TestRewriteOfWrittenBatchIsAcked(t *testing.T) {
	s, c := newSink(t, Options{})
	ctx := context.Background()
	evs := events("s-1", 0, 10)
	if err := s.Write(ctx, "s-1", evs[:5]); err != nil {
		t.Fatal(err)
	}
	if err := s.Write(ctx, "s-1", evs[5:]); err != nil {
		t.Fatal(err)
	}
	// A crash after the write and before the ack: both batches come again.
	for _, b := range [][]sinks.Event{evs[:5], evs[5:], evs[2:7]} {
		if err := s.Write(ctx, "s-1", b); err != nil {
			t.Fatalf("rewrite of #%d..: %v", b[0].Number, err)
		}
	}
	wantIDs(t, c, "s-1", evs)
}

// Regression: a batch overlapping the end of the destination is not covered
// by the server's idempotency; the written prefix must be trimmed.
func TestBatchOverlappingEndIsTrimmed(t *testing.T) {
	s, c := newSink(t, Options{})
	ctx := context.Background()
	evs := events("s-2", 0, 10)
	if err := s.Write(ctx, "s-2", evs[:6]); err != nil {
		t.Fatal(err)
	}
	if err := s.Write(ctx, "s-2", evs[3:]); err != nil {
		t.Fatal(err)
	}
	wantIDs(t, c, "s-2", evs)
}

func TestDestinationBehindIsRetryable(t *testing.T) {
	s, c := newSink(t, Options{})
	evs := events("s-3", 0, 6)
	err := s.Write(context.Background(), "s-3", evs[3:])
	if kind(err) != sinks.Behind || sinks.Classify(err).Written != 0 {
		t.Fatalf("want Behind with nothing written, got %v", err)
	}
	if got := ids(t, c, "s-3"); len(got) != 0 {
		t.Fatalf("wrote %d events past a gap", len(got))
	}
}

func TestDivergedStreamIsConflictAfterMatchingPrefix(t *testing.T) {
	s, c := newSink(t, Options{})
	ctx := context.Background()
	evs := events("s-4", 0, 6)
	foreign := events("s-4", 3, 2)
	if err := s.Write(ctx, "s-4", evs[:3]); err != nil {
		t.Fatal(err)
	}
	if _, err := c.AppendToStream(ctx, "s-4", esdb.AppendToStreamOptions{ExpectedRevision: esdb.Revision(2)},
		esdb.EventData{EventID: foreign[0].ID, EventType: "x", ContentType: esdb.ContentTypeJson, Data: []byte("{}")}); err != nil {
		t.Fatal(err)
	}
	err := s.Write(ctx, "s-4", evs[1:])
	we := sinks.Classify(err)
	if we.Kind != sinks.Conflict || we.Written != 2 || !strings.Contains(we.Reason, "destination stream s-4 diverged at 3") {
		t.Fatalf("want Conflict at 3 after 2 written, got %+v", we)
	}
}

func TestTooLargeEventIsPermanent(t *testing.T) {
	s, _ := newSink(t, Options{})
	ev := events("s-5", 0, 1)
	ev[0].Data = make([]byte, 100<<10)
	we := sinks.Classify(s.Write(context.Background(), "s-5", ev))
	if we.Kind != sinks.Permanent || !strings.Contains(we.Reason, "Maximum Append Size") {
		t.Fatalf("want Permanent naming the size limit, got %+v", we)
	}
}

func TestTombstonedDestinationIsPermanent(t *testing.T) {
	s, c := newSink(t, Options{})
	if _, err := c.TombstoneStream(context.Background(), "s-6", esdb.TombstoneStreamOptions{}); err != nil {
		t.Fatal(err)
	}
	we := sinks.Classify(s.Write(context.Background(), "s-6", events("s-6", 0, 2)))
	if we.Kind != sinks.Permanent || !strings.Contains(we.Reason, "destination stream s-6 is deleted") {
		t.Fatalf("want Permanent 'deleted', got %+v", we)
	}
}

func TestSkipVersionCheckIsIdempotent(t *testing.T) {
	s, c := newSink(t, Options{SkipVersionCheck: true})
	ctx := context.Background()
	evs := events("s-7", 0, 8)
	if err := s.Write(ctx, "s-7", evs[:5]); err != nil {
		t.Fatal(err)
	}
	for _, b := range [][]sinks.Event{evs[:5], evs[3:]} {
		if err := s.Write(ctx, "s-7", b); err != nil {
			t.Fatal(err)
		}
	}
	wantIDs(t, c, "s-7", evs)
}

func TestUnreachableDestinationIsTransient(t *testing.T) {
	conf := esdbtest.Config(t, "esdb://127.0.0.1:1?tls=false&maxDiscoverAttempts=1&discoveryInterval=10&gossipTimeout=1")
	s := New(esdbtest.Connect(t, conf), Options{Config: conf})
	if k := kind(s.Write(context.Background(), "s-8", events("s-8", 0, 1))); k != sinks.Transient {
		t.Fatalf("want Transient, got %v", k)
	}
	if err := s.Ready(context.Background()); err == nil {
		t.Fatal("Ready reports an unreachable destination as ready")
	}
}

// TestSoftDeletedDestinationIsConflict is the regression test for a silent
// renumbering: a soft-deleted destination stream accepts an append with
// expected no-stream and numbers it after its hidden events, so source
// event 0 became event 2 and the write counted as a success.
func TestSoftDeletedDestinationIsConflict(t *testing.T) {
	s, c := newSink(t, Options{})
	if _, err := c.AppendToStream(context.Background(), "s-soft", esdb.AppendToStreamOptions{}, toData(events("s-soft", 0, 2))...); err != nil {
		t.Fatal(err)
	}
	if _, err := c.DeleteStream(context.Background(), "s-soft", esdb.DeleteStreamOptions{}); err != nil {
		t.Fatal(err)
	}
	we := sinks.Classify(s.Write(context.Background(), "s-soft", events("s-soft", 0, 3)))
	if we.Kind != sinks.Conflict || we.Written != 0 || !strings.Contains(we.Reason, "destination stream s-soft diverged at 0: it was soft-deleted") {
		t.Fatalf("want Conflict naming the soft delete, got %+v", we)
	}
}

func toData(evs []sinks.Event) []esdb.EventData {
	out := make([]esdb.EventData, len(evs))
	for i, e := range evs {
		out[i] = esdb.EventData{EventID: e.ID, EventType: e.Type, ContentType: esdb.ContentTypeJson, Data: e.Data}
	}
	return out
}

// TestWithoutBatchAppend runs the sink's tests against a server without
// BatchAppend: the sink falls back to the client's Append and behaves the
// same.
func TestWithoutBatchAppend(t *testing.T) {
	withoutBatchAppend = true
	defer func() { withoutBatchAppend = false }()
	for _, test := range []struct {
		name string
		fn   func(*testing.T)
	}{
		{"rewrite", TestRewriteOfWrittenBatchIsAcked},
		{"overlap", TestBatchOverlappingEndIsTrimmed},
		{"behind", TestDestinationBehindIsRetryable},
		{"diverged", TestDivergedStreamIsConflictAfterMatchingPrefix},
		{"too large", TestTooLargeEventIsPermanent},
		{"tombstoned", TestTombstonedDestinationIsPermanent},
		{"skip version", TestSkipVersionCheckIsIdempotent},
		{"soft deleted", TestSoftDeletedDestinationIsConflict},
		{"records", TestRecordsAreAppendedAtTheEnd},
	} {
		t.Run(test.name, test.fn)
	}
}

// TestBatchAppendPathIsUsed checks that, with BatchAppend offered, appends
// go through it (the client is never asked to append), and that a write
// larger than one request is sent in parts and committed once.
func TestBatchAppendPathIsUsed(t *testing.T) {
	s, c := newSink(t, Options{})
	s.batch.maxRequest = 200          // about two events per request
	s.client = esdbconn.New(nil, nil) // any append through the client would panic
	evs := events("s-parts", 0, 9)
	if err := s.Write(context.Background(), "s-parts", evs); err != nil {
		t.Fatal(err)
	}
	wantIDs(t, c, "s-parts", evs)
	if got := len(s.batch.requests(uuid.New(), "s-parts", esdb.Any{}, evs)); got < 3 {
		t.Fatalf("9 events went in %d requests, want several", got)
	}
}

// TestBatchAppendSessionsAreShared writes many streams concurrently over the
// few BatchAppend streams, each write answered by its own correlation id.
func TestBatchAppendSessionsAreShared(t *testing.T) {
	s, c := newSink(t, Options{})
	const streams, per = 40, 3
	all := make([][]sinks.Event, streams)
	var wg sync.WaitGroup
	errs := make(chan error, streams*per)
	for i := range all {
		name := fmt.Sprintf("s-many-%d", i)
		all[i] = events(name, 0, per)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := range per {
				if err := s.Write(context.Background(), name, all[i][k:k+1]); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	for i := range all {
		wantIDs(t, c, fmt.Sprintf("s-many-%d", i), all[i])
	}
}

// TestBatchAppendFollowsNotLeader: a follower answers BatchAppend with the
// leader's address; the write goes there at once and lands on the leader.
func TestBatchAppendFollowsNotLeader(t *testing.T) {
	leader := esdbtest.Start(t, esdbtest.Options{Insecure: true})
	follower := esdbtest.Start(t, esdbtest.Options{Insecure: true, LeaderAddr: leader.Addr()})
	conf := esdbtest.Config(t, follower.ConnectionString())
	c := esdbtest.Connect(t, conf)
	s := New(c, Options{Config: conf})
	defer s.Close()
	evs := events("s-lead", 0, 3)
	if err := s.Write(context.Background(), "s-lead", evs); err != nil {
		t.Fatal(err)
	}
	lc := esdbtest.Connect(t, esdbtest.Config(t, leader.ConnectionString()))
	wantIDs(t, lc, "s-lead", evs)
	if got := ids(t, c, "s-lead"); len(got) != 0 {
		t.Fatalf("the follower holds %d events", len(got))
	}
}
