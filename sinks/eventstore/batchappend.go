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

	"github.com/ditto-replicator/ditto/internal/esdbconn"
	"github.com/ditto-replicator/ditto/internal/pbwire"
	"github.com/ditto-replicator/ditto/sinks"
)

// The BatchAppend call is made directly, with requests encoded from the
// events (pbwire.BatchWrite) and answers decoded by generated code.
const batchAppendMethod = "/event_store.client.streams.Streams/BatchAppend"

var batchAppendDesc = &grpc.StreamDesc{StreamName: "BatchAppend", ServerStreams: true, ClientStreams: true}

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
func (b *batchAppender) requests(id uuid.UUID, stream string, exp esdb.ExpectedRevision, events []sinks.Event) []pbwire.BatchWrite {
	reqs := make([]pbwire.BatchWrite, 0, 1)
	from, size := 0, 0
	for i := range events {
		e := &events[i]
		n := len(e.Data) + len(e.Metadata) + len(e.Type) + 64
		if size > 0 && size+n > b.maxRequest {
			reqs = append(reqs, pbwire.BatchWrite{CorrelationID: id, Events: events[from:i]})
			from, size = i, 0
		}
		size += n
	}
	reqs = append(reqs, pbwire.BatchWrite{CorrelationID: id, Events: events[from:], Final: true})
	first := &reqs[0]
	first.Options, first.Stream, first.Expected, first.Deadline = true, stream, exp, b.deadline
	return reqs
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
	stream grpc.ClientStream
	cancel context.CancelFunc
	sendMu sync.Mutex

	mu      sync.Mutex
	pending map[uuid.UUID]chan<- result
	err     error // set once the stream has failed
}

func openSession(b *batchAppender, conn *grpc.ClientConn) (*session, error) {
	ctx, cancel := context.WithCancel(context.Background())
	ctx = metadata.AppendToOutgoingContext(ctx, "requires-leader", "true")
	stream, err := conn.NewStream(ctx, batchAppendDesc, batchAppendMethod, grpc.ForceCodecV2(pbwire.Codec{}))
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
func (s *session) send(reqs []pbwire.BatchWrite) error {
	s.sendMu.Lock()
	defer s.sendMu.Unlock()
	for i := range reqs {
		if err := s.stream.SendMsg(&reqs[i]); err != nil {
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
		var raw pbwire.Raw
		if err := s.stream.RecvMsg(&raw); err != nil {
			s.fail(b, err)
			return
		}
		id, res, err := decodeAnswer(raw)
		if err != nil {
			s.fail(b, err)
			return
		}
		s.mu.Lock()
		ch := s.pending[id]
		delete(s.pending, id)
		s.mu.Unlock()
		if ch != nil {
			ch <- res
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

// decodeAnswer decodes a BatchAppendResp into the write it answers and its
// result; a success with a revision, nearly every answer, without the
// protobuf runtime.
// An answer with no usable correlation id gives the nil id, which no write
// waits on.
func decodeAnswer(raw []byte) (uuid.UUID, result, error) {
	if id, rev, ok := pbwire.BatchAppendSuccess(raw); ok {
		return id, result{revision: rev}, nil
	}
	var resp streams.BatchAppendResp
	if err := proto.Unmarshal(raw, &resp); err != nil {
		return uuid.Nil, result{}, fmt.Errorf("decoding a BatchAppend answer: %w", err)
	}
	id, ok := correlationID(resp.GetCorrelationId())
	if !ok {
		return uuid.Nil, result{}, nil
	}
	return id, answer(&resp), nil
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
