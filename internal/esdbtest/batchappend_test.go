package esdbtest

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"math"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/EventStore/EventStore-Client-Go/v4/protos/serverfeatures"
	"github.com/EventStore/EventStore-Client-Go/v4/protos/shared"
	"github.com/EventStore/EventStore-Client-Go/v4/protos/streams"
	"github.com/google/uuid"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/ditto-replicator/ditto/internal/pbwire/gen/streamspb"
)

// dialGRPC connects a bare gRPC client (the standard proto codec) to srv:
// plaintext in insecure mode, else TLS without verification.
func dialGRPC(t *testing.T, srv *Server) *grpc.ClientConn {
	t.Helper()
	creds := insecure.NewCredentials()
	if !srv.opts.Insecure {
		creds = credentials.NewTLS(&tls.Config{InsecureSkipVerify: true})
	}
	conn, err := grpc.NewClient(srv.Addr(), grpc.WithTransportCredentials(creds))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// batchCall opens a BatchAppend call on conn with the test's deadline.
func batchCall(t *testing.T, ctx context.Context, conn *grpc.ClientConn) streams.Streams_BatchAppendClient {
	t.Helper()
	call, err := streams.NewStreamsClient(conn).BatchAppend(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return call
}

func sid(stream string) *shared.StreamIdentifier {
	return &shared.StreamIdentifier{StreamName: []byte(stream)}
}

func optAny(stream string) *streams.BatchAppendReq_Options {
	return &streams.BatchAppendReq_Options{StreamIdentifier: sid(stream),
		ExpectedStreamPosition: &streams.BatchAppendReq_Options_Any{Any: &emptypb.Empty{}}}
}

func optNoStream(stream string) *streams.BatchAppendReq_Options {
	return &streams.BatchAppendReq_Options{StreamIdentifier: sid(stream),
		ExpectedStreamPosition: &streams.BatchAppendReq_Options_NoStream{NoStream: &emptypb.Empty{}}}
}

func optExists(stream string) *streams.BatchAppendReq_Options {
	return &streams.BatchAppendReq_Options{StreamIdentifier: sid(stream),
		ExpectedStreamPosition: &streams.BatchAppendReq_Options_StreamExists{StreamExists: &emptypb.Empty{}}}
}

func optRev(stream string, rev uint64) *streams.BatchAppendReq_Options {
	return &streams.BatchAppendReq_Options{StreamIdentifier: sid(stream),
		ExpectedStreamPosition: &streams.BatchAppendReq_Options_StreamPosition{StreamPosition: rev}}
}

// bmsg is a JSON event of type E with id id.
func bmsg(id uuid.UUID) *streams.BatchAppendReq_ProposedMessage {
	return &streams.BatchAppendReq_ProposedMessage{
		Id:       uuidToProto(id, false),
		Metadata: map[string]string{"type": "E", "content-type": "application/json"},
		Data:     []byte(fmt.Sprintf(`{"id":%q}`, id)),
	}
}

func newIDs(n int) []uuid.UUID {
	ids := make([]uuid.UUID, n)
	for i := range ids {
		ids[i] = uuid.New()
	}
	return ids
}

// breq is one request of the write corr; opts is nil after the first.
func breq(corr uuid.UUID, opts *streams.BatchAppendReq_Options, final bool, ids ...uuid.UUID) *streams.BatchAppendReq {
	r := &streams.BatchAppendReq{CorrelationId: uuidToProto(corr, false), Options: opts, IsFinal: final}
	for _, id := range ids {
		r.ProposedMessages = append(r.ProposedMessages, bmsg(id))
	}
	return r
}

func bsend(t *testing.T, call streams.Streams_BatchAppendClient, reqs ...*streams.BatchAppendReq) {
	t.Helper()
	for _, r := range reqs {
		if err := call.Send(r); err != nil {
			t.Fatalf("send: %v", err)
		}
	}
}

// brecv receives the next answer and checks that it is for corr on stream.
func brecv(t *testing.T, call streams.Streams_BatchAppendClient, corr uuid.UUID, stream string) *streams.BatchAppendResp {
	t.Helper()
	resp, err := call.Recv()
	if err != nil {
		t.Fatalf("recv: %v", err)
	}
	if got := uuidFromProto(resp.GetCorrelationId()); got != corr {
		t.Fatalf("answer for correlation id %s, want %s (%v)", got, corr, resp)
	}
	if got := string(resp.GetStreamIdentifier().GetStreamName()); got != stream {
		t.Fatalf("answer names stream %q, want %q", got, stream)
	}
	return resp
}

// wantSuccess checks a success at revision rev with a real position.
func wantSuccess(t *testing.T, resp *streams.BatchAppendResp, rev uint64) *shared.AllStreamPosition {
	t.Helper()
	ok := resp.GetSuccess()
	if ok == nil {
		t.Fatalf("answer %v, want success", resp)
	}
	cur, isRev := ok.CurrentRevisionOption.(*streams.BatchAppendResp_Success_CurrentRevision)
	if !isRev || cur.CurrentRevision != rev {
		t.Fatalf("success %v, want current revision %d", ok, rev)
	}
	pos := ok.GetPosition()
	if pos == nil || pos.CommitPosition == 0 || pos.CommitPosition != pos.PreparePosition {
		t.Fatalf("success position %v, want commit == prepare > 0", ok.PositionOption)
	}
	return pos
}

// wantError checks a refusal with code and message, and decodes its single
// detail into detail (whose type the Any must name).
func wantError(t *testing.T, resp *streams.BatchAppendResp, code codes.Code, msg string, detail proto.Message) *rpcstatus.Status {
	t.Helper()
	st := resp.GetError()
	if st == nil {
		t.Fatalf("answer %v, want an error", resp)
	}
	if codes.Code(st.GetCode()) != code || st.GetMessage() != msg {
		t.Fatalf("error %d %q, want %d (%v) %q", st.GetCode(), st.GetMessage(), code, code, msg)
	}
	if len(st.GetDetails()) != 1 {
		t.Fatalf("error has %d details, want 1", len(st.GetDetails()))
	}
	if detail != nil {
		if err := st.GetDetails()[0].UnmarshalTo(detail); err != nil {
			t.Fatalf("detail %s: %v", st.GetDetails()[0].GetTypeUrl(), err)
		}
	}
	return st
}

// wantClosed closes the client side and checks that the call ends cleanly.
func wantClosed(t *testing.T, call streams.Streams_BatchAppendClient) {
	t.Helper()
	if err := call.CloseSend(); err != nil {
		t.Fatal(err)
	}
	if resp, err := call.Recv(); !errors.Is(err, io.EOF) {
		t.Fatalf("after close: %v, %v; want EOF", resp, err)
	}
}

// streamIDsOf reads a stream through the official client and returns its
// event ids in order.
func streamIDsOf(t *testing.T, srv *Server, stream string) []uuid.UUID {
	t.Helper()
	evs, err := readAllOf(testCtx(t), Connect(t, Config(t, srv.ConnectionString())), stream, false)
	if err != nil {
		t.Fatalf("read %s: %v", stream, err)
	}
	ids := make([]uuid.UUID, len(evs))
	for i, e := range evs {
		ids[i] = e.Event.EventID
	}
	return ids
}

func equalIDs(a, b []uuid.UUID) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestBatchAppendCommitsWrites(t *testing.T) {
	srv := Start(t, Options{Insecure: true})
	ctx := testCtx(t)
	conn := dialGRPC(t, srv)

	t.Run("one request: revision, position, events readable in order", func(t *testing.T) {
		call := batchCall(t, ctx, conn)
		ids, corr := newIDs(3), uuid.New()
		bsend(t, call, breq(corr, optNoStream("ba-1"), true, ids...))
		pos := wantSuccess(t, brecv(t, call, corr, "ba-1"), 2)
		wantClosed(t, call)

		evs, err := readAllOf(ctx, Connect(t, Config(t, srv.ConnectionString())), "ba-1", false)
		if err != nil || len(evs) != 3 {
			t.Fatalf("read: %d events, %v; want 3", len(evs), err)
		}
		for i, e := range evs {
			r := e.Event
			if r.EventID != ids[i] || r.EventNumber != uint64(i) || r.EventType != "E" ||
				r.ContentType != "application/json" || !bytes.Equal(r.Data, bmsg(ids[i]).Data) {
				t.Fatalf("event %d = %+v, want id %s", i, r, ids[i])
			}
		}
		if last := evs[2].Event.Position; last.Commit != pos.CommitPosition {
			t.Fatalf("success position %d, last event's position %d", pos.CommitPosition, last.Commit)
		}
	})

	t.Run("a write split over two requests commits once, on is_final", func(t *testing.T) {
		call := batchCall(t, ctx, conn)
		ids, split, other := newIDs(4), uuid.New(), uuid.New()
		bsend(t, call, breq(split, optAny("ba-2"), false, ids[:2]...))
		// A complete write sent after the first part is answered only
		// once the server has read that part.
		bsend(t, call, breq(other, optAny("ba-2-other"), true, uuid.New()))
		wantSuccess(t, brecv(t, call, other, "ba-2-other"), 0)
		if n := srv.Store().LastEventNumber("ba-2"); n != -1 {
			t.Fatalf("after the first part the stream has last event %d, want nothing written", n)
		}
		bsend(t, call, breq(split, nil, true, ids[2:]...))
		wantSuccess(t, brecv(t, call, split, "ba-2"), 3)
		wantClosed(t, call)
		if got := streamIDsOf(t, srv, "ba-2"); !equalIDs(got, ids) {
			t.Fatalf("stream holds %v, want %v", got, ids)
		}
	})

	t.Run("two writes to one stream, answered by correlation id", func(t *testing.T) {
		call := batchCall(t, ctx, conn)
		a, b := newIDs(2), newIDs(1)
		ca, cb := uuid.New(), uuid.New()
		bsend(t, call, breq(ca, optNoStream("ba-3"), true, a...), breq(cb, optRev("ba-3", 1), true, b...))
		wantSuccess(t, brecv(t, call, ca, "ba-3"), 1)
		wantSuccess(t, brecv(t, call, cb, "ba-3"), 2)
		wantClosed(t, call)
		if got := streamIDsOf(t, srv, "ba-3"); !equalIDs(got, append(a, b...)) {
			t.Fatalf("stream holds %v", got)
		}
	})

	t.Run("idempotent repeat at the same expected revision", func(t *testing.T) {
		call := batchCall(t, ctx, conn)
		first, second := newIDs(2), newIDs(2)
		c1, c2, c3, c4 := uuid.New(), uuid.New(), uuid.New(), uuid.New()
		bsend(t, call, breq(c1, optNoStream("ba-4"), true, first...), breq(c2, optRev("ba-4", 1), true, second...))
		wantSuccess(t, brecv(t, call, c1, "ba-4"), 1)
		wantSuccess(t, brecv(t, call, c2, "ba-4"), 3)
		bsend(t, call, breq(c3, optRev("ba-4", 1), true, second...), breq(c4, optNoStream("ba-4"), true, first...))
		wantSuccess(t, brecv(t, call, c3, "ba-4"), 3)
		wantSuccess(t, brecv(t, call, c4, "ba-4"), 1)
		wantClosed(t, call)
		if got := streamIDsOf(t, srv, "ba-4"); !equalIDs(got, append(first, second...)) {
			t.Fatalf("stream holds %v, want the four events once", got)
		}
	})

	t.Run("string correlation ids come back as sent", func(t *testing.T) {
		call := batchCall(t, ctx, conn)
		corr := uuid.New()
		r := breq(corr, optAny("ba-5"), true, uuid.New())
		r.CorrelationId = uuidToProto(corr, true)
		bsend(t, call, r)
		resp := brecv(t, call, corr, "ba-5")
		if resp.GetCorrelationId().GetString_() != corr.String() {
			t.Fatalf("correlation id %v, want the string %s", resp.GetCorrelationId(), corr)
		}
		wantSuccess(t, resp, 0)
		wantClosed(t, call)
	})
}

func TestBatchAppendRefusals(t *testing.T) {
	srv := Start(t, Options{Insecure: true, MaxAppendSize: 1000})
	ctx := testCtx(t)
	conn := dialGRPC(t, srv)
	// One call for every case: a refused write never ends it.
	call := batchCall(t, ctx, conn)
	seed := func(t *testing.T, stream string, n int) {
		t.Helper()
		corr := uuid.New()
		bsend(t, call, breq(corr, optAny(stream), true, newIDs(n)...))
		wantSuccess(t, brecv(t, call, corr, stream), uint64(n-1))
	}

	t.Run("wrong expected revision", func(t *testing.T) {
		seed(t, "ref-1", 2)
		corr := uuid.New()
		bsend(t, call, breq(corr, optRev("ref-1", 5), true, uuid.New()))
		var wev shared.WrongExpectedVersion
		st := wantError(t, brecv(t, call, corr, "ref-1"), codes.AlreadyExists, "WrongExpectedVersion", &wev)
		if u := st.GetDetails()[0].GetTypeUrl(); u != "type.googleapis.com/event_store.client.WrongExpectedVersion" {
			t.Fatalf("detail type URL %q", u)
		}
		if cur, ok := wev.CurrentStreamRevisionOption.(*shared.WrongExpectedVersion_CurrentStreamRevision); !ok || cur.CurrentStreamRevision != 1 {
			t.Fatalf("current %v, want revision 1", wev.CurrentStreamRevisionOption)
		}
		if exp, ok := wev.ExpectedStreamPositionOption.(*shared.WrongExpectedVersion_ExpectedStreamPosition); !ok || exp.ExpectedStreamPosition != 5 {
			t.Fatalf("expected %v, want position 5", wev.ExpectedStreamPositionOption)
		}
		if n := srv.Store().LastEventNumber("ref-1"); n != 1 {
			t.Fatalf("last event %d after a refused write, want 1", n)
		}
	})

	t.Run("no_stream on an existing stream", func(t *testing.T) {
		seed(t, "ref-2", 3)
		corr := uuid.New()
		bsend(t, call, breq(corr, optNoStream("ref-2"), true, uuid.New()))
		var wev shared.WrongExpectedVersion
		wantError(t, brecv(t, call, corr, "ref-2"), codes.AlreadyExists, "WrongExpectedVersion", &wev)
		if wev.GetCurrentStreamRevision() != 2 || wev.GetExpectedNoStream() == nil {
			t.Fatalf("detail %v, want current 2 and expected no_stream", &wev)
		}
		// StreamRevision.End is no_stream too.
		corr = uuid.New()
		bsend(t, call, breq(corr, optRev("ref-2", math.MaxUint64), true, uuid.New()))
		wantError(t, brecv(t, call, corr, "ref-2"), codes.AlreadyExists, "WrongExpectedVersion", &wev)
		if wev.GetExpectedNoStream() == nil {
			t.Fatalf("detail %v, want expected no_stream", &wev)
		}
	})

	t.Run("stream_exists on a new stream", func(t *testing.T) {
		corr := uuid.New()
		bsend(t, call, breq(corr, optExists("ref-3"), true, uuid.New()))
		var wev shared.WrongExpectedVersion
		wantError(t, brecv(t, call, corr, "ref-3"), codes.AlreadyExists, "WrongExpectedVersion", &wev)
		if wev.GetCurrentNoStream() == nil || wev.GetExpectedStreamExists() == nil {
			t.Fatalf("detail %v, want current no_stream and expected stream_exists", &wev)
		}
	})

	t.Run("tombstoned stream", func(t *testing.T) {
		seed(t, "ref-4", 1)
		if _, err := srv.Store().TombstoneStream("ref-4", Expected{Kind: ExpectAny}); err != nil {
			t.Fatal(err)
		}
		corr := uuid.New()
		bsend(t, call, breq(corr, optAny("ref-4"), true, uuid.New()))
		var del shared.StreamDeleted
		wantError(t, brecv(t, call, corr, "ref-4"), codes.NotFound, "StreamDeleted", &del)
		if got := string(del.GetStreamIdentifier().GetStreamName()); got != "ref-4" {
			t.Fatalf("StreamDeleted names %q, want ref-4", got)
		}
	})

	t.Run("maximum append size over a split write", func(t *testing.T) {
		big := func(id uuid.UUID) *streams.BatchAppendReq_ProposedMessage {
			m := bmsg(id)
			m.Data = bytes.Repeat([]byte("x"), 600)
			return m
		}
		corr := uuid.New()
		first := breq(corr, optAny("ref-5"), false)
		first.ProposedMessages = append(first.ProposedMessages, big(uuid.New()))
		second := breq(corr, nil, true)
		second.ProposedMessages = append(second.ProposedMessages, big(uuid.New()))
		bsend(t, call, first, second)
		var limit shared.MaximumAppendSizeExceeded
		wantError(t, brecv(t, call, corr, "ref-5"), codes.InvalidArgument, "MaximumAppendSizeExceeded", &limit)
		if limit.GetMaxAppendSize() != 1000 {
			t.Fatalf("max append size %d, want 1000", limit.GetMaxAppendSize())
		}
		// The refused write is gone: a late request for it is ignored
		// (unanswered), and the next write is answered.
		bsend(t, call, breq(corr, nil, true, uuid.New()))
		seed(t, "ref-5-next", 1)
		if n := srv.Store().LastEventNumber("ref-5"); n != -1 {
			t.Fatalf("last event %d after a refused write, want nothing written", n)
		}
	})

	t.Run("missing type or content-type is a bad request", func(t *testing.T) {
		for _, key := range []string{"type", "content-type"} {
			corr := uuid.New()
			r := breq(corr, optAny("ref-6"), true, uuid.New(), uuid.New())
			delete(r.ProposedMessages[1].Metadata, key)
			bsend(t, call, r)
			var bad shared.BadRequest
			wantError(t, brecv(t, call, corr, "ref-6"), codes.InvalidArgument, "BadRequest", &bad)
			if want := "Required Metadata Property '" + key + "' is missing"; !strings.Contains(bad.GetMessage(), want) {
				t.Fatalf("bad request %q, want it to say %q", bad.GetMessage(), want)
			}
		}
		if n := srv.Store().LastEventNumber("ref-6"); n != -1 {
			t.Fatalf("last event %d after refused writes, want nothing written", n)
		}
	})

	t.Run("bad options", func(t *testing.T) {
		corr := uuid.New()
		bsend(t, call, breq(corr, &streams.BatchAppendReq_Options{
			ExpectedStreamPosition: &streams.BatchAppendReq_Options_Any{Any: &emptypb.Empty{}}}, true, uuid.New()))
		var bad shared.BadRequest
		wantError(t, brecv(t, call, corr, ""), codes.InvalidArgument, "BadRequest", &bad)
		if bad.GetMessage() != "Required field StreamIdentifier not set." {
			t.Fatalf("bad request %q", bad.GetMessage())
		}
		corr = uuid.New()
		bsend(t, call, breq(corr, &streams.BatchAppendReq_Options{StreamIdentifier: sid("ref-7")}, true, uuid.New()))
		wantError(t, brecv(t, call, corr, "ref-7"), codes.InvalidArgument, "BadRequest", &bad)
		if !strings.Contains(bad.GetMessage(), "ExpectedStreamPosition") {
			t.Fatalf("bad request %q, want it to name the expected position", bad.GetMessage())
		}
		// Without a correlation id the answer has none either.
		bsend(t, call, &streams.BatchAppendReq{Options: optAny("ref-7"), IsFinal: true})
		resp, err := call.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if resp.GetCorrelationId() != nil {
			t.Fatalf("answer %v, want no correlation id", resp)
		}
		wantError(t, resp, codes.InvalidArgument, "BadRequest", &bad)
	})

	t.Run("non-positive deadline times out", func(t *testing.T) {
		for _, o := range []*streams.BatchAppendReq_Options{
			{DeadlineOption: &streams.BatchAppendReq_Options_Deadline{Deadline: durationpb.New(0)}},
			{DeadlineOption: &streams.BatchAppendReq_Options_Deadline{Deadline: durationpb.New(-time.Second)}},
			{DeadlineOption: &streams.BatchAppendReq_Options_Deadline_21_10_0{Deadline_21_10_0: timestamppb.New(time.Now().Add(-time.Minute))}},
		} {
			o.StreamIdentifier = sid("ref-8")
			o.ExpectedStreamPosition = &streams.BatchAppendReq_Options_Any{Any: &emptypb.Empty{}}
			corr := uuid.New()
			bsend(t, call, breq(corr, o, true, uuid.New()))
			wantError(t, brecv(t, call, corr, "ref-8"), codes.DeadlineExceeded, "Timeout", &shared.Timeout{})
		}
		// A future deadline, either form, is fine.
		for i, o := range []*streams.BatchAppendReq_Options{
			{DeadlineOption: &streams.BatchAppendReq_Options_Deadline{Deadline: durationpb.New(time.Minute)}},
			{DeadlineOption: &streams.BatchAppendReq_Options_Deadline_21_10_0{Deadline_21_10_0: timestamppb.New(time.Now().Add(time.Hour))}},
		} {
			o.StreamIdentifier = sid("ref-8")
			o.ExpectedStreamPosition = &streams.BatchAppendReq_Options_Any{Any: &emptypb.Empty{}}
			corr := uuid.New()
			bsend(t, call, breq(corr, o, true, uuid.New()))
			wantSuccess(t, brecv(t, call, corr, "ref-8"), uint64(i))
		}
	})

	wantClosed(t, call)
}

func TestBatchAppendPerEventLimit(t *testing.T) {
	srv := Start(t, Options{Insecure: true, MaxAppendEventSize: 100})
	call := batchCall(t, testCtx(t), dialGRPC(t, srv))
	corr, small, bigID := uuid.New(), uuid.New(), uuid.New()
	r := breq(corr, optAny("ev-1"), true, small, bigID)
	r.ProposedMessages[1].Data = bytes.Repeat([]byte("x"), 200)
	bsend(t, call, r)
	st := wantError(t, brecv(t, call, corr, "ev-1"), codes.InvalidArgument, "MaximumAppendEventSizeExceeded", nil)
	a := st.GetDetails()[0]
	if a.GetTypeUrl() != "type.googleapis.com/event_store.client.MaximumAppendEventSizeExceeded" {
		t.Fatalf("detail type URL %q", a.GetTypeUrl())
	}
	// MaximumAppendEventSizeExceeded{string eventId = 1; uint32
	// proposedEventSize = 2; uint32 maxAppendEventSize = 3}
	got := map[protowire.Number]any{}
	for b := a.GetValue(); len(b) > 0; {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			t.Fatalf("bad detail encoding %x", a.GetValue())
		}
		b = b[n:]
		switch typ {
		case protowire.BytesType:
			v, m := protowire.ConsumeString(b)
			got[num], n = v, m
		case protowire.VarintType:
			v, m := protowire.ConsumeVarint(b)
			got[num], n = v, m
		default:
			n = -1
		}
		if n < 0 {
			t.Fatalf("bad detail encoding %x", a.GetValue())
		}
		b = b[n:]
	}
	// 200 bytes of data and the type "E", two bytes in UTF-16.
	want := map[protowire.Number]any{1: bigID.String(), 2: uint64(202), 3: uint64(100)}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("detail %v, want %v", got, want)
	}
	wantClosed(t, call)
	if n := srv.Store().LastEventNumber("ev-1"); n != -1 {
		t.Fatalf("last event %d after a refused write, want nothing written", n)
	}
}

// TestBatchAppendCloseAnswersUnfinishedWrites: when the client closes its
// side, a write that never had its final request is answered Timeout, and
// the call ends.
func TestBatchAppendCloseAnswersUnfinishedWrites(t *testing.T) {
	srv := Start(t, Options{Insecure: true})
	call := batchCall(t, testCtx(t), dialGRPC(t, srv))
	c1, c2 := uuid.New(), uuid.New()
	bsend(t, call, breq(c1, optAny("open-1"), false, uuid.New()), breq(c2, optAny("open-2"), false, uuid.New()))
	if err := call.CloseSend(); err != nil {
		t.Fatal(err)
	}
	wantError(t, brecv(t, call, c1, "open-1"), codes.DeadlineExceeded, "Timeout", &shared.Timeout{})
	wantError(t, brecv(t, call, c2, "open-2"), codes.DeadlineExceeded, "Timeout", &shared.Timeout{})
	if resp, err := call.Recv(); !errors.Is(err, io.EOF) {
		t.Fatalf("after the answers: %v, %v; want EOF", resp, err)
	}
	if srv.Store().LastEventNumber("open-1") != -1 || srv.Store().LastEventNumber("open-2") != -1 {
		t.Fatal("unfinished writes must not be committed")
	}
}

// handleWire hands req to b as the server receives it, the generated
// message decoded from the client's bytes, and returns the answer as the
// client reads it (nil for none).
func handleWire(t *testing.T, b *batchAppend, req *streams.BatchAppendReq, now time.Time) *streams.BatchAppendResp {
	t.Helper()
	wire, err := proto.Marshal(req)
	if err != nil {
		t.Fatal(err)
	}
	var in streamspb.BatchAppendReq
	if err := in.UnmarshalVTUnsafe(wire); err != nil {
		t.Fatal(err)
	}
	resp := b.handle(&in, now)
	if resp == nil {
		return nil
	}
	out, err := resp.MarshalVT()
	if err != nil {
		t.Fatal(err)
	}
	var got streams.BatchAppendResp
	if err := proto.Unmarshal(out, &got); err != nil {
		t.Fatal(err)
	}
	return &got
}

// TestBatchAppendDeadlinePassesMidWrite drives one call's state with a
// chosen clock: a write whose deadline passes before its final request is
// answered Timeout at its next request and forgotten.
func TestBatchAppendDeadlinePassesMidWrite(t *testing.T) {
	s := &streamsService{store: newMemStore(t), maxAppendSize: DefaultMaxAppendSize}
	b := batchAppend{s: s, pending: map[uuid.UUID]*batchWrite{}}
	t0 := time.Now()
	corr := uuid.New()
	o := optAny("late-1")
	o.DeadlineOption = &streams.BatchAppendReq_Options_Deadline{Deadline: durationpb.New(time.Second)}
	if resp := handleWire(t, &b, breq(corr, o, false, uuid.New()), t0); resp != nil {
		t.Fatalf("first part answered %v", resp)
	}
	if resp := handleWire(t, &b, breq(corr, nil, false, uuid.New()), t0.Add(999*time.Millisecond)); resp != nil {
		t.Fatalf("second part, in time, answered %v", resp)
	}
	resp := handleWire(t, &b, breq(corr, nil, true, uuid.New()), t0.Add(time.Second))
	wantError(t, resp, codes.DeadlineExceeded, "Timeout", &shared.Timeout{})
	if len(b.pending) != 0 || s.store.LastEventNumber("late-1") != -1 {
		t.Fatalf("a timed-out write must be forgotten and not committed")
	}
	if resp := handleWire(t, &b, breq(corr, nil, true, uuid.New()), t0.Add(2*time.Second)); resp != nil {
		t.Fatalf("a request for a forgotten write answered %v", resp)
	}
}

// supportedMethods returns the server's advertised methods as
// "service/method" → features.
func supportedMethods(t *testing.T, conn *grpc.ClientConn) map[string][]string {
	t.Helper()
	m, err := serverfeatures.NewServerFeaturesClient(conn).GetSupportedMethods(testCtx(t), &shared.Empty{})
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]string{}
	for _, sm := range m.GetMethods() {
		out[sm.GetServiceName()+"/"+sm.GetMethodName()] = sm.GetFeatures()
	}
	return out
}

func TestBatchAppendAdvertisedOrDisabled(t *testing.T) {
	const key = "event_store.client.streams.streams/batchappend"
	t.Run("advertised with deadline_duration", func(t *testing.T) {
		srv := Start(t, Options{Insecure: true})
		f, ok := supportedMethods(t, dialGRPC(t, srv))[key]
		if !ok || len(f) != 1 || f[0] != "deadline_duration" {
			t.Fatalf("batchappend advertised %v (%v), want features [deadline_duration]", ok, f)
		}
	})
	t.Run("DisableBatchAppend", func(t *testing.T) {
		srv := Start(t, Options{Insecure: true, DisableBatchAppend: true})
		conn := dialGRPC(t, srv)
		methods := supportedMethods(t, conn)
		if _, ok := methods[key]; ok {
			t.Fatal("a disabled BatchAppend must not be advertised")
		}
		if _, ok := methods["event_store.client.streams.streams/append"]; !ok {
			t.Fatal("append must still be advertised")
		}
		call := batchCall(t, testCtx(t), conn)
		call.Send(breq(uuid.New(), optAny("off-1"), true, uuid.New())) // may fail once the call has ended
		if _, err := call.Recv(); status.Code(err) != codes.Unimplemented {
			t.Fatalf("BatchAppend: %v, want Unimplemented", err)
		}
		if n := srv.Store().LastEventNumber("off-1"); n != -1 {
			t.Fatalf("last event %d, want nothing written", n)
		}
	})
}

// TestBatchAppendAuth: BatchAppend goes through the same authentication as
// every call.
func TestBatchAppendAuth(t *testing.T) {
	srv := Start(t, Options{})
	conn := dialGRPC(t, srv)
	withAuth := func(user, pass string) context.Context {
		return metadata.AppendToOutgoingContext(testCtx(t), "authorization",
			"Basic "+base64.StdEncoding.EncodeToString([]byte(user+":"+pass)))
	}
	bad := batchCall(t, withAuth("admin", "wrong"), conn)
	bad.Send(breq(uuid.New(), optAny("auth-b-1"), true, uuid.New())) // may fail once the call has ended
	if _, err := bad.Recv(); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("wrong password: %v, want Unauthenticated", err)
	}
	good := batchCall(t, withAuth("admin", "changeit"), conn)
	corr := uuid.New()
	bsend(t, good, breq(corr, optAny("auth-b-1"), true, uuid.New()))
	wantSuccess(t, brecv(t, good, corr, "auth-b-1"), 0)
	wantClosed(t, good)
}

// The generated decoder's strings and byte fields point into the received
// message. What the store keeps of a BatchAppend'ed event must be its own:
// a record holding a piece of the message (its type did) keeps the whole
// message alive, and would see it change if the buffer were written again.
func TestBatchAppendKeepsNoneOfTheMessage(t *testing.T) {
	s := &streamsService{store: newMemStore(t), maxAppendSize: DefaultMaxAppendSize}
	b := batchAppend{s: s, pending: map[uuid.UUID]*batchWrite{}}
	req := breq(uuid.New(), optAny("kept-1"), true, uuid.New())
	m := req.ProposedMessages[0]
	m.Metadata["type"], m.CustomMetadata = "customer-registered", []byte(`{"m":1}`)
	want := []string{m.Metadata["type"], string(m.Data), string(m.CustomMetadata)}
	wire, err := proto.Marshal(req)
	if err != nil {
		t.Fatal(err)
	}
	var in streamspb.BatchAppendReq
	if err := in.UnmarshalVTUnsafe(wire); err != nil {
		t.Fatal(err)
	}
	if resp := b.handle(&in, time.Now()); resp.GetSuccess() == nil {
		t.Fatalf("write refused: %v", resp)
	}
	clear(wire)
	recs, err := s.store.ReadStream("kept-1", 0, true, 1, false)
	if err != nil || len(recs) != 1 {
		t.Fatalf("read %d records: %v", len(recs), err)
	}
	rec := recs[0].Event
	if got := []string{rec.Type, string(rec.Data), string(rec.Metadata)}; !slices.Equal(got, want) {
		t.Fatalf("type, data and metadata %q after the message was overwritten, want %q", got, want)
	}
}
