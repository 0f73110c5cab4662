package eventstore

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/EventStore/EventStore-Client-Go/v4/esdb"
	"github.com/EventStore/EventStore-Client-Go/v4/protos/shared"
	"github.com/EventStore/EventStore-Client-Go/v4/protos/streams"
	"github.com/google/uuid"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/ditto-replicator/ditto/internal/esdbconn"
	"github.com/ditto-replicator/ditto/sinks"
)

// sessions is how many BatchAppend streams writes are spread over: the
// server reads each stream in order, so a few let it decode writes in
// parallel.
const sessions = 4

// maxRequestBytes bounds the events of one BatchAppendReq; a larger write
// goes in several requests under one correlation id, committed together.
const maxRequestBytes = 1 << 20

// errNotLeader marks a stream failure that named the leader: the write can
// go there at once.
var errNotLeader = errors.New("the node is not the leader")

// errNoBatchAppend says the destination does not offer BatchAppend (servers
// before 21.10), so appends go through the client's Append.
var errNoBatchAppend = errors.New("the destination does not offer BatchAppend")

// batchAppender writes through Streams.BatchAppend: each write is one
// message (or a few, for writes over maxRequestBytes) on a long-lived
// stream, answered by correlation id, instead of one call with one message
// per event. It dials the leader itself (see esdbconn.DialLeader) and
// redials after any stream failure, following a not-leader answer to the
// leader it names.
type batchAppender struct {
	deadline   time.Duration
	maxRequest int // maxRequestBytes, smaller in tests

	leader *esdbconn.Leader

	mu          sync.Mutex
	checked     *grpc.ClientConn // the connection whose features were read
	unsupported bool             // it does not offer BatchAppend
	pool        [sessions]*session
	next        atomic.Uint32
	closed      bool
	ids         atomic.Uint64
	idPrefix    uint64
}

func newBatchAppender(conf *esdb.Configuration) *batchAppender {
	d := 10 * time.Second
	if conf.DefaultDeadline != nil && *conf.DefaultDeadline > 0 {
		d = *conf.DefaultDeadline
	}
	prefix := uuid.New()
	return &batchAppender{deadline: d, maxRequest: maxRequestBytes, leader: esdbconn.NewLeader(conf),
		idPrefix: binary.BigEndian.Uint64(prefix[:8])}
}

// result is a write's answer: its current revision on success, else the
// refusal or the stream's failure.
type result struct {
	revision uint64
	err      error
}

// append writes events to stream as one commit with the given expected
// revision. It returns errNoBatchAppend if the destination does not offer
// BatchAppend.
func (b *batchAppender) append(ctx context.Context, stream string, exp esdb.ExpectedRevision, events []sinks.Event) (*esdb.WriteResult, error) {
	res, err := b.appendOnce(ctx, stream, exp, events)
	if errors.Is(err, errNotLeader) {
		// The node named the leader, and the next session dials it.
		res, err = b.appendOnce(ctx, stream, exp, events)
	}
	return res, err
}

func (b *batchAppender) appendOnce(ctx context.Context, stream string, exp esdb.ExpectedRevision, events []sinks.Event) (*esdb.WriteResult, error) {
	sess, err := b.session(ctx)
	if err != nil {
		return nil, err
	}
	id := b.newID()
	ch := make(chan result, 1)
	if err := sess.register(id, ch); err != nil {
		return nil, err
	}
	if err := sess.send(b.requests(id, stream, exp, events)); err != nil {
		sess.unregister(id)
		return nil, err
	}
	t := time.NewTimer(b.deadline + 5*time.Second) // the server answers a timed-out write itself
	defer t.Stop()
	select {
	case r := <-ch:
		if r.err != nil {
			return nil, r.err
		}
		return &esdb.WriteResult{NextExpectedVersion: r.revision}, nil
	case <-ctx.Done():
		sess.unregister(id)
		return nil, ctx.Err()
	case <-t.C:
		sess.unregister(id)
		return nil, fmt.Errorf("no BatchAppend answer within %s", b.deadline+5*time.Second)
	}
}

func (b *batchAppender) newID() uuid.UUID {
	var id uuid.UUID
	binary.BigEndian.PutUint64(id[:8], b.idPrefix)
	binary.BigEndian.PutUint64(id[8:], b.ids.Add(1))
	return id
}

// requests splits a write into BatchAppendReqs of at most maxRequestBytes of
// events each (at least one event each), the first carrying the options and
// the last marked final.
func (b *batchAppender) requests(id uuid.UUID, stream string, exp esdb.ExpectedRevision, events []sinks.Event) []*streams.BatchAppendReq {
	cid := structuredID(id)
	opts := &streams.BatchAppendReq_Options{
		StreamIdentifier: &shared.StreamIdentifier{StreamName: []byte(stream)},
		DeadlineOption:   &streams.BatchAppendReq_Options_Deadline{Deadline: durationpb.New(b.deadline)},
	}
	switch e := exp.(type) {
	case esdb.NoStream:
		opts.ExpectedStreamPosition = &streams.BatchAppendReq_Options_NoStream{NoStream: &emptypb.Empty{}}
	case esdb.StreamExists:
		opts.ExpectedStreamPosition = &streams.BatchAppendReq_Options_StreamExists{StreamExists: &emptypb.Empty{}}
	case esdb.StreamRevision:
		opts.ExpectedStreamPosition = &streams.BatchAppendReq_Options_StreamPosition{StreamPosition: e.Value}
	default:
		opts.ExpectedStreamPosition = &streams.BatchAppendReq_Options_Any{Any: &emptypb.Empty{}}
	}
	var reqs []*streams.BatchAppendReq
	cur := &streams.BatchAppendReq{CorrelationId: cid, Options: opts, ProposedMessages: make([]*streams.BatchAppendReq_ProposedMessage, 0, len(events))}
	// The messages of all events in a few allocations rather than four
	// per event.
	msgs := make([]proposedBlock, len(events))
	size := 0
	for i := range events {
		e := &events[i]
		n := len(e.Data) + len(e.Metadata) + len(e.Type) + 64
		if size > 0 && size+n > b.maxRequest {
			reqs = append(reqs, cur)
			cur = &streams.BatchAppendReq{CorrelationId: cid}
			size = 0
		}
		size += n
		var md map[string]string
		if i > 0 && e.Type == events[i-1].Type && e.ContentType == events[i-1].ContentType {
			// Maps are only read when the request is encoded: events of one
			// type share one.
			md = msgs[i-1].msg.Metadata
		}
		cur.ProposedMessages = append(cur.ProposedMessages, msgs[i].fill(e, md))
	}
	cur.IsFinal = true
	return append(reqs, cur)
}

// proposedBlock holds a proposed message and its id's messages.
type proposedBlock struct {
	msg   streams.BatchAppendReq_ProposedMessage
	id    shared.UUID
	value shared.UUID_Structured_
	st    shared.UUID_Structured
}

// fill makes p the proposed message of e and returns it; md, if not nil, is
// the type and content-type metadata of an earlier event of the same type.
func (p *proposedBlock) fill(e *sinks.Event, md map[string]string) *streams.BatchAppendReq_ProposedMessage {
	if md == nil {
		ct := "application/octet-stream"
		if e.ContentType == "application/json" {
			ct = "application/json"
		}
		md = map[string]string{"type": e.Type, "content-type": ct}
	}
	p.st.MostSignificantBits = int64(binary.BigEndian.Uint64(e.ID[:8]))
	p.st.LeastSignificantBits = int64(binary.BigEndian.Uint64(e.ID[8:]))
	p.value.Structured = &p.st
	p.id.Value = &p.value
	p.msg.Id, p.msg.Metadata, p.msg.CustomMetadata, p.msg.Data = &p.id, md, e.Metadata, e.Data
	return &p.msg
}

// session returns a live BatchAppend stream, opening the connection and the
// stream as needed.
func (b *batchAppender) session(ctx context.Context) (*session, error) {
	i := int(b.next.Add(1) % sessions)
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return nil, errors.New("sink closed")
	}
	if s := b.pool[i]; s != nil && !s.broken() {
		return s, nil
	}
	conn, err := b.leader.Conn(ctx)
	if err != nil {
		return nil, fmt.Errorf("connecting for BatchAppend: %w", err)
	}
	if conn != b.checked {
		ok, err := esdbconn.Supports(ctx, conn, "event_store.client.streams.streams", "batchappend")
		if err != nil {
			b.leader.Drop(conn, "")
			return nil, fmt.Errorf("reading the destination's features: %w", err)
		}
		b.checked, b.unsupported = conn, !ok
	}
	if b.unsupported {
		return nil, errNoBatchAppend
	}
	s, err := openSession(b, conn)
	if err != nil {
		return nil, err
	}
	b.pool[i] = s
	return s, nil
}

// dropConn drops conn after one of its streams failed, so that the next
// write dials again (the leader may have moved); leader is where a
// not-leader answer pointed, if any.
func (b *batchAppender) dropConn(conn *grpc.ClientConn, leader string) {
	b.leader.Drop(conn, leader)
	b.mu.Lock()
	defer b.mu.Unlock()
	for i, s := range b.pool {
		if s != nil && s.conn == conn {
			b.pool[i] = nil
		}
	}
}

func (b *batchAppender) close() {
	b.mu.Lock()
	b.closed = true
	b.mu.Unlock()
	b.leader.Close() // ends every session
}

// session is one BatchAppend stream with the writes it has not answered.
type session struct {
	conn   *grpc.ClientConn
	stream streams.Streams_BatchAppendClient
	cancel context.CancelFunc
	sendMu sync.Mutex

	mu      sync.Mutex
	pending map[uuid.UUID]chan<- result
	err     error // set once the stream has failed
}

func openSession(b *batchAppender, conn *grpc.ClientConn) (*session, error) {
	ctx, cancel := context.WithCancel(context.Background())
	ctx = metadata.AppendToOutgoingContext(ctx, "requires-leader", "true")
	stream, err := streams.NewStreamsClient(conn).BatchAppend(ctx)
	if err != nil {
		cancel()
		return nil, fmt.Errorf("opening BatchAppend: %w", err)
	}
	s := &session{conn: conn, stream: stream, cancel: cancel, pending: map[uuid.UUID]chan<- result{}}
	go s.receive(b)
	return s, nil
}

func (s *session) broken() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err != nil
}

func (s *session) register(id uuid.UUID, ch chan<- result) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err != nil {
		return s.err
	}
	s.pending[id] = ch
	return nil
}

func (s *session) unregister(id uuid.UUID) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.pending, id)
}

// send sends a write's requests back to back, so that writes sharing the
// stream do not interleave their parts.
func (s *session) send(reqs []*streams.BatchAppendReq) error {
	s.sendMu.Lock()
	defer s.sendMu.Unlock()
	for _, r := range reqs {
		if err := s.stream.Send(r); err != nil {
			// The stream's own error, with its status, comes from Recv.
			return fmt.Errorf("sending BatchAppend: %w", err)
		}
	}
	return nil
}

// receive hands each answer to its write until the stream fails, then fails
// every write still waiting.
func (s *session) receive(b *batchAppender) {
	for {
		resp, err := s.stream.Recv()
		if err != nil {
			s.fail(b, err)
			return
		}
		id, ok := correlationID(resp.GetCorrelationId())
		if !ok {
			continue
		}
		s.mu.Lock()
		ch := s.pending[id]
		delete(s.pending, id)
		s.mu.Unlock()
		if ch != nil {
			ch <- answer(resp)
		}
	}
}

func (s *session) fail(b *batchAppender, err error) {
	leader := esdbconn.NotLeader(s.stream.Trailer())
	if status.Code(err) == codes.Unimplemented {
		err = errNoBatchAppend
		b.mu.Lock()
		if b.checked == s.conn {
			b.unsupported = true
		}
		b.mu.Unlock()
	} else {
		b.dropConn(s.conn, leader)
		if leader != "" {
			err = fmt.Errorf("%w; the leader is %s: %w", errNotLeader, leader, err)
		}
	}
	s.mu.Lock()
	s.err = fmt.Errorf("BatchAppend stream failed: %w", err)
	pending := s.pending
	s.pending = nil
	s.mu.Unlock()
	s.cancel()
	for _, ch := range pending {
		ch <- result{err: s.err}
	}
}

func structuredID(id uuid.UUID) *shared.UUID {
	return &shared.UUID{Value: &shared.UUID_Structured_{Structured: &shared.UUID_Structured{
		MostSignificantBits:  int64(binary.BigEndian.Uint64(id[:8])),
		LeastSignificantBits: int64(binary.BigEndian.Uint64(id[8:])),
	}}}
}

func correlationID(u *shared.UUID) (uuid.UUID, bool) {
	var id uuid.UUID
	if st := u.GetStructured(); st != nil {
		binary.BigEndian.PutUint64(id[:8], uint64(st.GetMostSignificantBits()))
		binary.BigEndian.PutUint64(id[8:], uint64(st.GetLeastSignificantBits()))
		return id, true
	}
	id, err := uuid.Parse(u.GetString_())
	return id, err == nil
}

// answer turns a BatchAppendResp into a write's result.
func answer(resp *streams.BatchAppendResp) result {
	if st := resp.GetError(); st != nil {
		return result{err: &refusal{st: st}}
	}
	ok := resp.GetSuccess()
	if ok == nil {
		return result{err: errors.New("BatchAppend answer holds neither success nor error")}
	}
	if ok.GetNoStream() != nil {
		return result{err: errors.New("BatchAppend succeeded without a stream revision")}
	}
	return result{revision: ok.GetCurrentRevision()}
}

// refusal is the destination's refusal of one write, a google.rpc.Status
// whose code and details say why.
type refusal struct{ st *rpcstatus.Status }

func (r *refusal) Error() string {
	msg := r.st.GetMessage()
	if d := r.detail(); d != "" {
		msg += " (" + d + ")"
	}
	return "destination refused the write: " + strconv.Itoa(int(r.st.GetCode())) + " " + msg
}

// detail is the short name of the status's details type, such as
// "WrongExpectedVersion". (The server's Status has one Any where
// google.rpc.Status has a list; the encodings agree.)
func (r *refusal) detail() string {
	d := r.st.GetDetails()
	if len(d) == 0 {
		return ""
	}
	u := d[0].GetTypeUrl()
	for i := len(u) - 1; i >= 0; i-- {
		if u[i] == '.' || u[i] == '/' {
			return u[i+1:]
		}
	}
	return u
}

// classify is classify's verdict for a BatchAppend refusal: the same
// reasons the Append path gives.
func (r *refusal) classify(stream string) *sinks.WriteError {
	switch r.detail() {
	case "StreamDeleted":
		return &sinks.WriteError{Kind: sinks.Permanent, Reason: fmt.Sprintf("destination stream %s is deleted", stream), Err: r}
	case "AccessDenied":
		return &sinks.WriteError{Kind: sinks.Permanent, Reason: fmt.Sprintf("access to destination stream %s denied", stream), Err: r}
	}
	if codes.Code(r.st.GetCode()) != codes.InvalidArgument {
		return &sinks.WriteError{Kind: sinks.Transient, Reason: "destination unavailable or failing", Err: r}
	}
	reason := r.st.GetMessage()
	if d := r.st.GetDetails(); len(d) > 0 {
		switch m := unpack(d[0]).(type) {
		case *shared.MaximumAppendSizeExceeded:
			reason = fmt.Sprintf("Maximum Append Size of %d Exceeded.", m.GetMaxAppendSize())
		case *shared.BadRequest:
			reason = m.GetMessage()
		}
	}
	return &sinks.WriteError{Kind: sinks.Permanent, Reason: "destination rejected the events: " + reason, Err: r}
}

// unpack decodes a status detail of a type this package knows, else nil.
func unpack(a *anypb.Any) proto.Message {
	var m proto.Message
	switch a.GetTypeUrl() {
	case "type.googleapis.com/event_store.client.MaximumAppendSizeExceeded":
		m = &shared.MaximumAppendSizeExceeded{}
	case "type.googleapis.com/event_store.client.BadRequest":
		m = &shared.BadRequest{}
	default:
		return nil
	}
	if proto.Unmarshal(a.GetValue(), m) != nil {
		return nil
	}
	return m
}
