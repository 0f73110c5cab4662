package esdbtest

import (
	"bytes"
	"io"
	"math"
	"strings"
	"testing"

	"github.com/EventStore/EventStore-Client-Go/v4/esdb"
	"github.com/EventStore/EventStore-Client-Go/v4/protos/shared"
	"github.com/EventStore/EventStore-Client-Go/v4/protos/streams"
	"github.com/google/uuid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
)

// TestIdempotencyTable walks every row of the expected-version and
// idempotency tables of §2 through the official client.
func TestIdempotencyTable(t *testing.T) {
	_, c := startInsecure(t)
	ctx := testCtx(t)
	n := 0
	fresh := func() string { n++; return "idem-" + uuid.NewString()[:8] + "-" + string(rune('a'+n%26)) }
	events := func(k int) []esdb.EventData {
		out := make([]esdb.EventData, k)
		for i := range out {
			out[i] = ev("E")
		}
		return out
	}
	appendOK := func(t *testing.T, stream string, rev esdb.ExpectedRevision, evs ...esdb.EventData) *esdb.WriteResult {
		t.Helper()
		r, err := c.AppendToStream(ctx, stream, esdb.AppendToStreamOptions{ExpectedRevision: rev}, evs...)
		if err != nil {
			t.Fatalf("append to %s: %v", stream, err)
		}
		return r
	}
	appendCode := func(t *testing.T, stream string, rev esdb.ExpectedRevision, evs ...esdb.EventData) esdb.ErrorCode {
		t.Helper()
		_, err := c.AppendToStream(ctx, stream, esdb.AppendToStreamOptions{ExpectedRevision: rev}, evs...)
		return errCode(t, err)
	}
	count := func(t *testing.T, stream string) int {
		t.Helper()
		evs, err := readAllOf(ctx, c, stream, false)
		if err != nil {
			t.Fatalf("read %s: %v", stream, err)
		}
		return len(evs)
	}
	// lastInStore is the hidden-inclusive last event number, from the store.
	wev := esdb.ErrorCodeWrongExpectedVersion

	t.Run("any always accepted", func(t *testing.T) {
		s := fresh()
		appendOK(t, s, esdb.Any{}, ev("E"))
		appendOK(t, s, esdb.Any{}, ev("E"))
		if got := count(t, s); got != 2 {
			t.Fatalf("%d events, want 2", got)
		}
	})
	t.Run("no_stream on a new stream, and on a metadata-only stream", func(t *testing.T) {
		appendOK(t, fresh(), esdb.NoStream{}, ev("E"))
		s := fresh()
		if _, err := c.SetStreamMetadata(ctx, s, esdb.AppendToStreamOptions{}, esdb.StreamMetadata{}); err != nil {
			t.Fatal(err)
		}
		appendOK(t, s, esdb.NoStream{}, ev("E"))
	})
	t.Run("no_stream on an existing stream is WEV", func(t *testing.T) {
		s := fresh()
		appendOK(t, s, esdb.NoStream{}, ev("E"))
		if code := appendCode(t, s, esdb.NoStream{}, ev("E")); code != wev {
			t.Fatalf("code %v, want WEV", code)
		}
	})
	t.Run("no_stream on a soft-deleted stream appends and continues numbering", func(t *testing.T) {
		s := fresh()
		appendOK(t, s, esdb.NoStream{}, events(2)...)
		if _, err := c.DeleteStream(ctx, s, esdb.DeleteStreamOptions{}); err != nil {
			t.Fatal(err)
		}
		r := appendOK(t, s, esdb.NoStream{}, ev("E"))
		if r.NextExpectedVersion != 2 {
			t.Fatalf("next expected version %d, want 2", r.NextExpectedVersion)
		}
		evs, _ := readAllOf(ctx, c, s, false)
		if len(evs) != 1 || evs[0].Event.EventNumber != 2 {
			t.Fatalf("after undelete read %d events (first %+v), want only #2", len(evs), evs)
		}
		meta, err := c.GetStreamMetadata(ctx, s, esdb.ReadStreamOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if tb := meta.TruncateBefore(); tb == nil || *tb != 2 {
			t.Fatalf("$tb after undelete = %v, want 2", tb)
		}
	})
	t.Run("stream_exists needs events or metadata", func(t *testing.T) {
		if code := appendCode(t, fresh(), esdb.StreamExists{}, ev("E")); code != wev {
			t.Fatalf("never existed: code %v, want WEV", code)
		}
		s := fresh()
		if _, err := c.SetStreamMetadata(ctx, s, esdb.AppendToStreamOptions{}, esdb.StreamMetadata{}); err != nil {
			t.Fatal(err)
		}
		appendOK(t, s, esdb.StreamExists{}, ev("E"))
		appendOK(t, s, esdb.StreamExists{}, ev("E"))
	})
	t.Run("stream_exists on a soft-deleted stream is StreamDeleted", func(t *testing.T) {
		s := fresh()
		appendOK(t, s, esdb.Any{}, ev("E"))
		if _, err := c.DeleteStream(ctx, s, esdb.DeleteStreamOptions{}); err != nil {
			t.Fatal(err)
		}
		if code := appendCode(t, s, esdb.StreamExists{}, ev("E")); code != esdb.ErrorCodeStreamDeleted {
			t.Fatalf("code %v, want StreamDeleted", code)
		}
	})
	t.Run("revision must equal current, hidden events count when soft-deleted", func(t *testing.T) {
		s := fresh()
		appendOK(t, s, esdb.NoStream{}, events(3)...)
		if code := appendCode(t, s, esdb.Revision(5), ev("E")); code != wev {
			t.Fatalf("R > cur: code %v, want WEV", code)
		}
		appendOK(t, s, esdb.Revision(2), ev("E"))
		if _, err := c.DeleteStream(ctx, s, esdb.DeleteStreamOptions{}); err != nil {
			t.Fatal(err)
		}
		r := appendOK(t, s, esdb.Revision(3), ev("E"))
		if r.NextExpectedVersion != 4 {
			t.Fatalf("next %d, want 4", r.NextExpectedVersion)
		}
	})
	t.Run("tombstoned stream refuses everything but empty any/no_stream appends", func(t *testing.T) {
		s := fresh()
		appendOK(t, s, esdb.Any{}, ev("E"))
		if _, err := c.TombstoneStream(ctx, s, esdb.TombstoneStreamOptions{}); err != nil {
			t.Fatal(err)
		}
		for _, rev := range []esdb.ExpectedRevision{esdb.Any{}, esdb.NoStream{}, esdb.StreamExists{}, esdb.Revision(0)} {
			if code := appendCode(t, s, rev, ev("E")); code != esdb.ErrorCodeStreamDeleted {
				t.Fatalf("%T with events: code %v, want StreamDeleted", rev, code)
			}
		}
		appendOK(t, s, esdb.Any{})
		appendOK(t, s, esdb.NoStream{})
		for _, rev := range []esdb.ExpectedRevision{esdb.StreamExists{}, esdb.Revision(0)} {
			if code := appendCode(t, s, rev); code != esdb.ErrorCodeStreamDeleted {
				t.Fatalf("empty %T: code %v, want StreamDeleted", rev, code)
			}
		}
		if _, err := c.DeleteStream(ctx, s, esdb.DeleteStreamOptions{}); errCode(t, err) != esdb.ErrorCodeStreamDeleted {
			t.Fatalf("delete after tombstone: %v", err)
		}
		if _, err := c.TombstoneStream(ctx, s, esdb.TombstoneStreamOptions{}); errCode(t, err) != esdb.ErrorCodeStreamDeleted {
			t.Fatalf("tombstone after tombstone: %v", err)
		}
	})
	t.Run("weak check: unknown first id appends all, later duplicates included", func(t *testing.T) {
		s := fresh()
		a := ev("E")
		appendOK(t, s, esdb.Any{}, a)
		appendOK(t, s, esdb.Any{}, ev("E"), a)
		if got := count(t, s); got != 3 {
			t.Fatalf("%d events, want 3", got)
		}
	})
	for _, rev := range []esdb.ExpectedRevision{esdb.Any{}, esdb.StreamExists{}} {
		t.Run("weak check: all known is idempotent", func(t *testing.T) {
			s := fresh()
			batch := events(3)
			first := appendOK(t, s, esdb.NoStream{}, batch...)
			appendOK(t, s, esdb.Any{}, ev("E"))
			r := appendOK(t, s, rev, batch[:2]...)
			if r.NextExpectedVersion != 1 {
				t.Fatalf("%T retry: next %d, want 1 (the original number of the last id)", rev, r.NextExpectedVersion)
			}
			if got := count(t, s); got != 4 {
				t.Fatalf("%d events, want 4", got)
			}
			r = appendOK(t, s, rev, batch...)
			if r.NextExpectedVersion != 2 || r.CommitPosition != first.CommitPosition {
				t.Fatalf("retry result %+v, want revision 2 at %d", r, first.CommitPosition)
			}
		})
		t.Run("weak check: known first, unknown later is WEV", func(t *testing.T) {
			s := fresh()
			batch := events(2)
			appendOK(t, s, esdb.Any{}, batch...)
			if code := appendCode(t, s, rev, batch[0], ev("E")); code != wev {
				t.Fatalf("%T: code %v, want WEV", rev, code)
			}
		})
	}
	t.Run("ids only count in the same stream", func(t *testing.T) {
		batch := events(2)
		appendOK(t, fresh(), esdb.Any{}, batch...)
		s := fresh()
		appendOK(t, s, esdb.Any{}, batch...)
		if got := count(t, s); got != 2 {
			t.Fatalf("%d events, want 2", got)
		}
	})
	t.Run("strong check: R == cur appends duplicates", func(t *testing.T) {
		s := fresh()
		batch := events(2)
		appendOK(t, s, esdb.NoStream{}, batch...)
		r := appendOK(t, s, esdb.Revision(1), batch...)
		if r.NextExpectedVersion != 3 || count(t, s) != 4 {
			t.Fatalf("next %d, count %d; want 3 and 4", r.NextExpectedVersion, count(t, s))
		}
	})
	t.Run("strong check: R < cur all matching is idempotent", func(t *testing.T) {
		s := fresh()
		batch := events(4)
		appendOK(t, s, esdb.NoStream{}, batch...)
		r := appendOK(t, s, esdb.Revision(0), batch[1:3]...)
		if r.NextExpectedVersion != 2 {
			t.Fatalf("next %d, want 2", r.NextExpectedVersion)
		}
		// Re-sending a no_stream batch with no_stream is idempotent.
		r = appendOK(t, s, esdb.NoStream{}, batch...)
		if r.NextExpectedVersion != 3 || count(t, s) != 4 {
			t.Fatalf("no_stream retry: next %d, count %d; want 3 and 4", r.NextExpectedVersion, count(t, s))
		}
	})
	t.Run("strong check: mismatches and overruns are WEV", func(t *testing.T) {
		s := fresh()
		batch := events(3)
		appendOK(t, s, esdb.NoStream{}, batch...)
		if code := appendCode(t, s, esdb.Revision(0), ev("E")); code != wev {
			t.Fatalf("first mismatch: code %v", code)
		}
		if code := appendCode(t, s, esdb.Revision(0), batch[1], ev("E")); code != wev {
			t.Fatalf("later mismatch: code %v", code)
		}
		if code := appendCode(t, s, esdb.Revision(0), batch[1], batch[2], ev("E")); code != wev {
			t.Fatalf("past the end: code %v", code)
		}
		if code := appendCode(t, s, esdb.NoStream{}, ev("E")); code != wev {
			t.Fatalf("no_stream first mismatch: code %v", code)
		}
	})
	t.Run("strong check: no_stream on soft-deleted, first mismatch appends", func(t *testing.T) {
		s := fresh()
		batch := events(2)
		appendOK(t, s, esdb.NoStream{}, batch...)
		if _, err := c.DeleteStream(ctx, s, esdb.DeleteStreamOptions{}); err != nil {
			t.Fatal(err)
		}
		// A retry of the original batch is still recognised...
		r := appendOK(t, s, esdb.NoStream{}, batch...)
		if r.NextExpectedVersion != 1 {
			t.Fatalf("retry next %d, want 1", r.NextExpectedVersion)
		}
		// ...while new events recreate the stream.
		r = appendOK(t, s, esdb.NoStream{}, ev("E"))
		if r.NextExpectedVersion != 2 {
			t.Fatalf("next %d, want 2", r.NextExpectedVersion)
		}
	})
	t.Run("empty appends check the version only", func(t *testing.T) {
		s := fresh()
		r := appendOK(t, s, esdb.NoStream{})
		// No event was written, so there is no position; the client then
		// reports revision 0.
		if r.NextExpectedVersion != 0 || r.CommitPosition != 0 {
			t.Fatalf("empty no_stream on a new stream: %+v", r)
		}
		if code := appendCode(t, s, esdb.StreamExists{}); code != wev {
			t.Fatalf("empty stream_exists on a new stream: code %v", code)
		}
		appendOK(t, s, esdb.Any{}, events(2)...)
		r = appendOK(t, s, esdb.Revision(1))
		if r.NextExpectedVersion != 1 {
			t.Fatalf("empty at revision 1: next %d", r.NextExpectedVersion)
		}
		if code := appendCode(t, s, esdb.Revision(0)); code != wev {
			t.Fatalf("empty at a stale revision: code %v", code)
		}
		if code := appendCode(t, s, esdb.NoStream{}); code != wev {
			t.Fatalf("empty no_stream on an existing stream: code %v", code)
		}
		if got := count(t, s); got != 2 {
			t.Fatalf("%d events, want 2", got)
		}
	})
}

// rawAppend sends one append with hand-made proposed messages, bypassing
// the client's validation.
func rawAppend(t *testing.T, addr string, stream string, msgs ...*streams.AppendReq_ProposedMessage) error {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	call, err := streams.NewStreamsClient(conn).Append(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := call.Send(&streams.AppendReq{Content: &streams.AppendReq_Options_{Options: &streams.AppendReq_Options{
		StreamIdentifier:       &shared.StreamIdentifier{StreamName: []byte(stream)},
		ExpectedStreamRevision: &streams.AppendReq_Options_Any{Any: &shared.Empty{}},
	}}}); err != nil {
		t.Fatal(err)
	}
	for _, m := range msgs {
		if err := call.Send(&streams.AppendReq{Content: &streams.AppendReq_ProposedMessage_{ProposedMessage: m}}); err != nil {
			break // the server already answered; CloseAndRecv has the status
		}
	}
	_, err = call.CloseAndRecv()
	return err
}

func TestBadAppends(t *testing.T) {
	srv := Start(t, Options{Insecure: true, MaxAppendSize: 1000})
	c := Connect(t, Config(t, srv.ConnectionString()))
	ctx := testCtx(t)
	id := uuidToProto(uuid.New(), false)

	t.Run("missing metadata", func(t *testing.T) {
		err := rawAppend(t, srv.Addr(), "bad-1", &streams.AppendReq_ProposedMessage{
			Id: id, Metadata: map[string]string{"type": "E"}, Data: []byte("{}")})
		if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "type, content-type") {
			t.Fatalf("err %v, want InvalidArgument naming the required properties", err)
		}
	})
	t.Run("append too large", func(t *testing.T) {
		big := ev("E")
		big.Data = bytes.Repeat([]byte("x"), 600)
		big2 := ev("E")
		big2.Data = big.Data
		_, err := c.AppendToStream(ctx, "bad-2", esdb.AppendToStreamOptions{}, big, big2)
		// The client maps InvalidArgument to Unknown and keeps the message.
		if code := errCode(t, err); code != esdb.ErrorCodeUnknown || !strings.Contains(err.Error(), "Maximum Append Size of 1000 Exceeded.") {
			t.Fatalf("code %v (%v), want Unknown carrying the size message", code, err)
		}
		err = rawAppend(t, srv.Addr(), "bad-2", &streams.AppendReq_ProposedMessage{
			Id: id, Metadata: map[string]string{"type": "E", "content-type": "application/json"}, Data: bytes.Repeat([]byte("x"), 2000)})
		if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "Maximum Append Size of 1000 Exceeded.") {
			t.Fatalf("err %v, want InvalidArgument maximum-append-size-exceeded", err)
		}
		if _, err := readAllOf(ctx, c, "bad-2", false); errCode(t, err) != esdb.ErrorCodeResourceNotFound {
			t.Fatalf("a refused append must write nothing")
		}
	})
	t.Run("per-event limit", func(t *testing.T) {
		srv := Start(t, Options{Insecure: true, MaxAppendEventSize: 100})
		err := rawAppend(t, srv.Addr(), "bad-3", &streams.AppendReq_ProposedMessage{
			Id: id, Metadata: map[string]string{"type": "E", "content-type": "application/json"}, Data: bytes.Repeat([]byte("x"), 200)})
		if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "exceeds Maximum Append Event Size of 100") {
			t.Fatalf("err %v, want maximum-append-event-size-exceeded", err)
		}
	})
	t.Run("options missing", func(t *testing.T) {
		conn, err := grpc.NewClient(srv.Addr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		call, _ := streams.NewStreamsClient(conn).Append(ctx)
		call.Send(&streams.AppendReq{Content: &streams.AppendReq_Options_{Options: &streams.AppendReq_Options{
			StreamIdentifier: &shared.StreamIdentifier{StreamName: []byte("bad-4")}}}})
		if _, err := call.CloseAndRecv(); status.Code(err) != codes.InvalidArgument {
			t.Fatalf("no expected revision: %v, want InvalidArgument", err)
		}
	})
}

func TestReadsAndMetadata(t *testing.T) {
	_, c := startInsecure(t)
	ctx := testCtx(t)
	s := "meta-1"
	for i := 0; i < 10; i++ {
		if _, err := c.AppendToStream(ctx, s, esdb.AppendToStreamOptions{}, ev("E")); err != nil {
			t.Fatal(err)
		}
	}
	numbers := func(opts esdb.ReadStreamOptions, n uint64) []uint64 {
		t.Helper()
		rs, err := c.ReadStream(ctx, s, opts, n)
		if err != nil {
			t.Fatal(err)
		}
		defer rs.Close()
		var out []uint64
		for {
			e, err := rs.Recv()
			if err == io.EOF {
				return out
			}
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, e.OriginalEvent().EventNumber)
		}
	}
	if got := numbers(esdb.ReadStreamOptions{Direction: esdb.Backwards, From: esdb.End{}}, 3); !equalU(got, 9, 8, 7) {
		t.Fatalf("backwards from end: %v", got)
	}
	if got := numbers(esdb.ReadStreamOptions{From: esdb.Revision(8)}, 5); !equalU(got, 8, 9) {
		t.Fatalf("forwards from 8: %v", got)
	}
	var m esdb.StreamMetadata
	m.SetMaxCount(3)
	if _, err := c.SetStreamMetadata(ctx, s, esdb.AppendToStreamOptions{}, m); err != nil {
		t.Fatal(err)
	}
	if got := numbers(esdb.ReadStreamOptions{}, 100); !equalU(got, 7, 8, 9) {
		t.Fatalf("$maxCount 3: %v", got)
	}
	m = esdb.StreamMetadata{}
	m.SetTruncateBefore(5)
	if _, err := c.SetStreamMetadata(ctx, s, esdb.AppendToStreamOptions{}, m); err != nil {
		t.Fatal(err)
	}
	if got := numbers(esdb.ReadStreamOptions{Direction: esdb.Backwards, From: esdb.End{}}, 100); !equalU(got, 9, 8, 7, 6, 5) {
		t.Fatalf("$tb 5 backwards: %v", got)
	}
	got, err := c.GetStreamMetadata(ctx, s, esdb.ReadStreamOptions{})
	if err != nil || got.TruncateBefore() == nil || *got.TruncateBefore() != 5 || got.MaxCount() != nil {
		t.Fatalf("latest metadata %+v, %v; want only $tb 5", got, err)
	}
	// Metadata does not apply to $all: all ten events are still there.
	rs, err := c.ReadAll(ctx, esdb.ReadAllOptions{}, 10_000)
	if err != nil {
		t.Fatal(err)
	}
	defer rs.Close()
	seen := 0
	var lastPos uint64
	for {
		e, err := rs.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		p := e.OriginalEvent().Position
		if p.Commit <= lastPos || p.Commit != p.Prepare {
			t.Fatalf("$all positions must increase, commit == prepare: %+v after %d", p, lastPos)
		}
		lastPos = p.Commit
		if e.OriginalEvent().StreamID == s {
			seen++
		}
	}
	if seen != 10 {
		t.Fatalf("$all holds %d events of %s, want 10", seen, s)
	}
	// Backwards from a position is exclusive.
	rb, err := c.ReadAll(ctx, esdb.ReadAllOptions{Direction: esdb.Backwards, From: esdb.Position{Commit: lastPos, Prepare: lastPos}}, 1)
	if err != nil {
		t.Fatal(err)
	}
	defer rb.Close()
	if e, err := rb.Recv(); err != nil || e.OriginalEvent().Position.Commit >= lastPos {
		t.Fatalf("backwards from %d: %+v, %v", lastPos, e, err)
	}
	if _, err := c.GetStreamMetadata(ctx, "no-meta-1", esdb.ReadStreamOptions{}); errCode(t, err) != esdb.ErrorCodeResourceNotFound {
		t.Fatalf("metadata of a stream without any: %v", err)
	}
}

func equalU(got []uint64, want ...uint64) bool {
	if len(got) != len(want) {
		return false
	}
	for i := range got {
		if got[i] != want[i] {
			return false
		}
	}
	return true
}

func TestSubscriptions(t *testing.T) {
	_, c := startInsecure(t)
	ctx := testCtx(t)
	s := "sub-1"
	for i := 0; i < 3; i++ {
		if _, err := c.AppendToStream(ctx, s, esdb.AppendToStreamOptions{}, ev("SubEvent")); err != nil {
			t.Fatal(err)
		}
	}
	t.Run("stream: catch-up, caught up, live, tombstone ends it", func(t *testing.T) {
		sub, err := c.SubscribeToStream(ctx, s, esdb.SubscribeToStreamOptions{From: esdb.Revision(0)})
		if err != nil {
			t.Fatal(err)
		}
		defer sub.Close()
		var got []uint64
		for len(got) < 2 {
			e := sub.Recv()
			if e.EventAppeared == nil {
				t.Fatalf("before caught up: %+v", e)
			}
			got = append(got, e.EventAppeared.OriginalEvent().EventNumber)
		}
		if !equalU(got, 1, 2) {
			t.Fatalf("from revision 0 (exclusive): %v", got)
		}
		if e := sub.Recv(); e.CaughtUp == nil {
			t.Fatalf("want caught up, got %+v", e)
		}
		if _, err := c.AppendToStream(ctx, s, esdb.AppendToStreamOptions{}, ev("SubEvent")); err != nil {
			t.Fatal(err)
		}
		if e := sub.Recv(); e.EventAppeared == nil || e.EventAppeared.OriginalEvent().EventNumber != 3 {
			t.Fatalf("live event: %+v", e)
		}
		if _, err := c.TombstoneStream(ctx, s, esdb.TombstoneStreamOptions{}); err != nil {
			t.Fatal(err)
		}
		e := sub.Recv()
		if e.EventAppeared == nil || e.EventAppeared.OriginalEvent().EventType != "$streamDeleted" ||
			e.EventAppeared.OriginalEvent().EventNumber != math.MaxInt64 {
			t.Fatalf("want the $streamDeleted event, got %+v", e)
		}
		if e := sub.Recv(); e.SubscriptionDropped == nil {
			t.Fatalf("want a drop after the tombstone, got %+v", e)
		}
		if _, err := c.SubscribeToStream(ctx, s, esdb.SubscribeToStreamOptions{}); errCode(t, err) != esdb.ErrorCodeStreamDeleted {
			t.Fatalf("subscribing to a tombstoned stream: %v", err)
		}
	})
	t.Run("filtered $all with checkpoints", func(t *testing.T) {
		sub, err := c.SubscribeToAll(ctx, esdb.SubscribeToAllOptions{
			From:   esdb.Start{},
			Filter: &esdb.SubscriptionFilter{Type: esdb.EventFilterType, Prefixes: []string{"SubEvent"}},
		})
		if err != nil {
			t.Fatal(err)
		}
		defer sub.Close()
		events, checkpoints := 0, 0
		for {
			e := sub.Recv()
			if e.SubscriptionDropped != nil {
				t.Fatalf("dropped: %v", e.SubscriptionDropped.Error)
			}
			if e.EventAppeared != nil {
				if typ := e.EventAppeared.OriginalEvent().EventType; typ != "SubEvent" {
					t.Fatalf("filter let %q through", typ)
				}
				events++
			}
			if e.CheckPointReached != nil {
				checkpoints++
			}
			if e.CaughtUp != nil {
				break
			}
		}
		if events != 4 || checkpoints == 0 {
			t.Fatalf("%d events and %d checkpoints before caught up, want 4 and at least 1", events, checkpoints)
		}
		if _, err := c.AppendToStream(ctx, "sub-2", esdb.AppendToStreamOptions{}, ev("Other"), ev("SubEvent")); err != nil {
			t.Fatal(err)
		}
		for {
			e := sub.Recv()
			if e.EventAppeared != nil {
				if e.EventAppeared.OriginalEvent().StreamID != "sub-2" {
					t.Fatalf("live: %+v", e.EventAppeared.OriginalEvent())
				}
				return
			}
		}
	})
}
