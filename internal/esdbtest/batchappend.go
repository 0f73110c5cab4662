package esdbtest

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"math"
	"net"
	"sort"
	"time"

	"github.com/EventStore/EventStore-Client-Go/v4/protos/shared"
	"github.com/EventStore/EventStore-Client-Go/v4/protos/streams"
	"github.com/google/uuid"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/ditto-replicator/ditto/internal/pbwire/gen/sharedpb"
	"github.com/ditto-replicator/ditto/internal/pbwire/gen/streamspb"
)

// batchWrite is a BatchAppend write that has had its options but not yet
// its final request.
type batchWrite struct {
	seq      uint64         // arrival order, for the answers sent at the end of the call
	corr     *sharedpb.UUID // the correlation id as the client sent it
	stream   string
	exp      Expected
	deadline time.Time // zero: none
	events   []ProposedEvent
	size     int
}

// BatchAppend serves the bidirectional batch append (§2 BatchAppend). Each
// write is a run of requests under one correlation id, options first; it is
// committed as one append when its final request arrives, and answered at
// once with one BatchAppendResp. A refused write is answered with a
// google.rpc.Status and never ends the call; the call ends when the client
// closes its side, after every write has been answered.
//
// Requests are handled, committed and answered in this goroutine, so
// answers come in the order the writes complete. A client must read answers
// while it sends (as every BatchAppend client does), or flow control stops
// both sides once a window of unread answers has piled up.
// requiresLeader reports whether the call carries requires-leader: true.
func requiresLeader(ctx context.Context) bool {
	md, _ := metadata.FromIncomingContext(ctx)
	v := md.Get("requires-leader")
	return len(v) > 0 && v[0] == "true"
}

// notLeader is a follower's answer: the leader's address in the trailers
// (§6).
func notLeader(setTrailer func(metadata.MD), leader string) error {
	host, port, _ := net.SplitHostPort(leader)
	return rpcError(setTrailer, codes.NotFound, "Leader info available",
		"exception", "not-leader", "leader-endpoint-host", host, "leader-endpoint-port", port)
}

func (s *streamsService) BatchAppend(srv streams.Streams_BatchAppendServer) error {
	if s.noBatchAppend {
		return s.UnimplementedStreamsServer.BatchAppend(srv)
	}
	if s.leader != "" && requiresLeader(srv.Context()) {
		// A follower answers the first write with the leader's address and
		// ends the call (§6); the real server does so once the write reaches
		// its leader check.
		if _, err := srv.Recv(); err != nil {
			return err
		}
		return notLeader(func(md metadata.MD) { srv.SetTrailer(md) }, s.leader)
	}
	b := batchAppend{s: s, pending: map[uuid.UUID]*batchWrite{}}
	// Requests and answers are the generated messages (package pbwire),
	// decoded and encoded without the protobuf runtime's reflection.
	for {
		req := new(streamspb.BatchAppendReq)
		err := srv.RecvMsg(req)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return err
		}
		if resp := b.handle(req, time.Now()); resp != nil {
			if err := srv.SendMsg(resp); err != nil {
				return err
			}
		}
	}
	// Writes the client never finished would time out on the server; say
	// so now rather than leave them unanswered.
	left := make([]*batchWrite, 0, len(b.pending))
	for _, w := range b.pending {
		left = append(left, w)
	}
	sort.Slice(left, func(i, j int) bool { return left[i].seq < left[j].seq })
	for _, w := range left {
		if err := srv.SendMsg(batchResp(w.corr, w.stream, timeoutStatus())); err != nil {
			return err
		}
	}
	return nil
}

// batchAppend is the state of one BatchAppend call.
type batchAppend struct {
	s       *streamsService
	pending map[uuid.UUID]*batchWrite
	seq     uint64
}

// handle takes one request and returns the answer it completes, if any.
func (b *batchAppend) handle(req *streamspb.BatchAppendReq, now time.Time) *streamspb.BatchAppendResp {
	corr := req.GetCorrelationId()
	id, ok := strictUUID(corr)
	if !ok {
		return batchRespID(corr, req.GetOptions().GetStreamIdentifier(),
			badRequest("Required field CorrelationId not set or not a valid UUID."))
	}
	w := b.pending[id]
	// Options start a write; for a write already under way they are
	// ignored, as the server keeps the first.
	if o := req.GetOptions(); o != nil && w == nil {
		var st *rpcstatus.Status
		if w, st = newBatchWrite(o, now); st != nil {
			return batchRespID(corr, o.GetStreamIdentifier(), st)
		}
		b.seq++
		w.seq, w.corr = b.seq, corr
		b.pending[id] = w
	}
	if w == nil {
		return nil // no write under way with this id: ignored, as the server does
	}
	if !w.deadline.IsZero() && !now.Before(w.deadline) {
		delete(b.pending, id)
		return batchResp(corr, w.stream, timeoutStatus())
	}
	if st := b.add(w, req.GetProposedMessages()); st != nil {
		delete(b.pending, id)
		return batchResp(corr, w.stream, st)
	}
	if !req.GetIsFinal() {
		return nil
	}
	delete(b.pending, id)
	return batchResp(corr, w.stream, b.commit(w))
}

// newBatchWrite checks the options of a write in the server's order: stream,
// deadline, expected position.
func newBatchWrite(o *streamspb.BatchAppendReq_Options, now time.Time) (*batchWrite, *rpcstatus.Status) {
	if len(o.GetStreamIdentifier().GetStreamName()) == 0 {
		return nil, badRequest("Required field StreamIdentifier not set.")
	}
	w := &batchWrite{stream: string(o.GetStreamIdentifier().GetStreamName())}
	switch d := o.DeadlineOption.(type) {
	case *streamspb.BatchAppendReq_Options_Deadline:
		w.deadline = now.Add(d.Deadline.AsDuration())
	case *streamspb.BatchAppendReq_Options_Deadline_21_10_0:
		if d.Deadline_21_10_0 != nil {
			w.deadline = d.Deadline_21_10_0.AsTime()
		}
	}
	if !w.deadline.IsZero() && !w.deadline.After(now) {
		return nil, timeoutStatus()
	}
	switch p := o.ExpectedStreamPosition.(type) {
	case *streamspb.BatchAppendReq_Options_Any:
		w.exp.Kind = ExpectAny
	case *streamspb.BatchAppendReq_Options_NoStream:
		w.exp.Kind = ExpectNoStream
	case *streamspb.BatchAppendReq_Options_StreamExists:
		w.exp.Kind = ExpectStreamExists
	case *streamspb.BatchAppendReq_Options_StreamPosition:
		w.exp = Expected{Kind: ExpectRevision, Revision: p.StreamPosition}
		if p.StreamPosition == math.MaxUint64 {
			w.exp = Expected{Kind: ExpectNoStream} // StreamRevision.End is -1
		}
	default:
		return nil, badRequest(`Status(StatusCode="InvalidArgument", Detail="'None' is not a valid ` +
			`EventStore.Client.Streams.BatchAppendReq+Types+Options+ExpectedStreamPositionOneofCase")`)
	}
	return w, nil
}

// add appends proposed messages to w with the size checks of Append: each
// event against the per-event limit as it comes, the whole write against
// the append limit after each request.
func (b *batchAppend) add(w *batchWrite, msgs []*streamspb.BatchAppendReq_ProposedMessage) *rpcstatus.Status {
	for _, m := range msgs {
		// The decoded byte fields point into the received message, up to its
		// end: the store keeps them clipped to their own bytes.
		ev, size, missing := proposedEvent(uuidFromWire(m.Id), m.Metadata, clip(m.Data), clip(m.CustomMetadata))
		if missing != "" {
			return missingMetadata(missing)
		}
		if limit := b.s.maxEventSize; limit > 0 && size > limit {
			return eventTooBig(ev.ID, size, limit)
		}
		w.size += size
		w.events = append(w.events, ev)
	}
	if w.size > b.s.maxAppendSize {
		return rpcStatus(codes.InvalidArgument, "MaximumAppendSizeExceeded",
			&shared.MaximumAppendSizeExceeded{MaxAppendSize: uint32(b.s.maxAppendSize)})
	}
	return nil
}

// commit writes w as one append, with the expected-version and idempotency
// rules of Append, and returns its answer: a Success or a Status.
func (b *batchAppend) commit(w *batchWrite) any {
	res, err := b.s.store.Append(w.stream, w.exp, w.events)
	var wev *WrongExpectedVersionError
	var del *StreamDeletedError
	switch {
	case errors.As(err, &wev):
		return rpcStatus(codes.AlreadyExists, "WrongExpectedVersion", wrongExpectedVersionDetail(wev))
	case errors.As(err, &del):
		return rpcStatus(codes.NotFound, "StreamDeleted",
			&shared.StreamDeleted{StreamIdentifier: &shared.StreamIdentifier{StreamName: []byte(w.stream)}})
	case err != nil:
		return rpcStatus(codes.Internal, err.Error(), &emptypb.Empty{})
	}
	ok := &streamspb.BatchAppendResp_Success{}
	if res.CurrentRevision < 0 {
		ok.CurrentRevisionOption = &streamspb.BatchAppendResp_Success_NoStream{NoStream: &emptypb.Empty{}}
	} else {
		ok.CurrentRevisionOption = &streamspb.BatchAppendResp_Success_CurrentRevision{CurrentRevision: uint64(res.CurrentRevision)}
	}
	if res.Position > 0 {
		ok.PositionOption = &streamspb.BatchAppendResp_Success_Position{Position: &sharedpb.AllStreamPosition{
			CommitPosition: res.Position, PreparePosition: res.Position}}
	} else {
		ok.PositionOption = &streamspb.BatchAppendResp_Success_NoPosition{NoPosition: &emptypb.Empty{}}
	}
	return ok
}

// batchResp answers a write on stream with result, a *Status or a *Success.
func batchResp(corr *sharedpb.UUID, stream string, result any) *streamspb.BatchAppendResp {
	return batchRespID(corr, &sharedpb.StreamIdentifier{StreamName: []byte(stream)}, result)
}

func batchRespID(corr *sharedpb.UUID, stream *sharedpb.StreamIdentifier, result any) *streamspb.BatchAppendResp {
	resp := &streamspb.BatchAppendResp{CorrelationId: corr, StreamIdentifier: stream}
	switch r := result.(type) {
	case *rpcstatus.Status:
		resp.Result = &streamspb.BatchAppendResp_Error{Error: r}
	case *streamspb.BatchAppendResp_Success:
		resp.Result = &streamspb.BatchAppendResp_Success_{Success: r}
	}
	return resp
}

// rpcStatus is a write's refusal: the server's google.rpc.Status carries a
// single Any, which is what a one-element details list encodes to.
func rpcStatus(code codes.Code, msg string, detail proto.Message) *rpcstatus.Status {
	st := &rpcstatus.Status{Code: int32(code), Message: msg}
	a, err := anypb.New(detail)
	if err != nil {
		panic(err) // the details are generated messages: they always marshal
	}
	st.Details = []*anypb.Any{a}
	return st
}

func badRequest(msg string) *rpcstatus.Status {
	return rpcStatus(codes.InvalidArgument, "BadRequest", &shared.BadRequest{Message: msg})
}

// missingMetadata is the BadRequest the server makes of the exception its
// metadata parser throws (an RpcException's message is its status).
func missingMetadata(key string) *rpcstatus.Status {
	return badRequest(`Status(StatusCode="InvalidArgument", Detail="Required Metadata Property '` + key + `' is missing")`)
}

func timeoutStatus() *rpcstatus.Status {
	return rpcStatus(codes.DeadlineExceeded, "Timeout", &shared.Timeout{})
}

// eventTooBig is MaximumAppendEventSizeExceeded{eventId = 1,
// proposedEventSize = 2, maxAppendEventSize = 3}. The client's v4.2.0
// protos predate that message, so it is encoded here.
func eventTooBig(id uuid.UUID, size, limit int) *rpcstatus.Status {
	var b []byte
	b = protowire.AppendTag(b, 1, protowire.BytesType)
	b = protowire.AppendString(b, id.String())
	b = protowire.AppendTag(b, 2, protowire.VarintType)
	b = protowire.AppendVarint(b, uint64(uint32(size)))
	b = protowire.AppendTag(b, 3, protowire.VarintType)
	b = protowire.AppendVarint(b, uint64(uint32(limit)))
	return &rpcstatus.Status{
		Code:    int32(codes.InvalidArgument),
		Message: "MaximumAppendEventSizeExceeded",
		Details: []*anypb.Any{{TypeUrl: "type.googleapis.com/event_store.client.MaximumAppendEventSizeExceeded", Value: b}},
	}
}

// wrongExpectedVersionDetail is event_store.client.WrongExpectedVersion:
// the actual revision (or no stream) and the expectation as asked.
func wrongExpectedVersionDetail(e *WrongExpectedVersionError) *shared.WrongExpectedVersion {
	w := &shared.WrongExpectedVersion{}
	if e.Current < 0 {
		w.CurrentStreamRevisionOption = &shared.WrongExpectedVersion_CurrentNoStream{CurrentNoStream: &emptypb.Empty{}}
	} else {
		w.CurrentStreamRevisionOption = &shared.WrongExpectedVersion_CurrentStreamRevision{CurrentStreamRevision: uint64(e.Current)}
	}
	switch e.Expected.Kind {
	case ExpectAny:
		w.ExpectedStreamPositionOption = &shared.WrongExpectedVersion_ExpectedAny{ExpectedAny: &emptypb.Empty{}}
	case ExpectNoStream:
		w.ExpectedStreamPositionOption = &shared.WrongExpectedVersion_ExpectedNoStream{ExpectedNoStream: &emptypb.Empty{}}
	case ExpectStreamExists:
		w.ExpectedStreamPositionOption = &shared.WrongExpectedVersion_ExpectedStreamExists{ExpectedStreamExists: &emptypb.Empty{}}
	default:
		w.ExpectedStreamPositionOption = &shared.WrongExpectedVersion_ExpectedStreamPosition{ExpectedStreamPosition: e.Expected.Revision}
	}
	return w
}

// strictUUID decodes an id received as the generated message, structured
// (two big-endian halves) or a string; unlike uuidFromWire it refuses a
// missing or malformed one.
func strictUUID(u *sharedpb.UUID) (uuid.UUID, bool) {
	var id uuid.UUID
	switch v := u.GetValue().(type) {
	case *sharedpb.UUID_Structured_:
		binary.BigEndian.PutUint64(id[:8], uint64(v.Structured.GetMostSignificantBits()))
		binary.BigEndian.PutUint64(id[8:], uint64(v.Structured.GetLeastSignificantBits()))
		return id, true
	case *sharedpb.UUID_String_:
		id, err := uuid.Parse(v.String_)
		return id, err == nil
	}
	return id, false
}

// uuidFromWire is uuidFromProto for an id received as the generated
// message: a missing or malformed id becomes a random one.
func uuidFromWire(u *sharedpb.UUID) uuid.UUID {
	if id, ok := strictUUID(u); ok {
		return id
	}
	return uuid.New()
}

// clip returns b with no room to grow into the bytes after it.
func clip(b []byte) []byte { return b[:len(b):len(b)] }
