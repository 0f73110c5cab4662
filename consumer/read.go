package consumer

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/EventStore/EventStore-Client-Go/v4/protos/persistent"
	"github.com/EventStore/EventStore-Client-Go/v4/protos/shared"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ditto-replicator/ditto/internal/esdbconn"
	"github.com/ditto-replicator/ditto/internal/pbwire"
)

// The persistent-subscription read is called directly rather than through
// the client: its deliveries are decoded straight into the client's event
// types (pbwire.DecodeRead), without the intermediate protobuf messages and
// metadata maps that were over a third of ditto's CPU per event.
const readMethod = "/event_store.client.persistent_subscriptions.PersistentSubscriptions/Read"

var readDesc = &grpc.StreamDesc{StreamName: "Read", ServerStreams: true, ClientStreams: true}

// errNotFound, errUnauthenticated and errAccessDenied are the refusals of a
// read that retrying cannot fix.
var (
	errNotFound        = errors.New("subscription group not found")
	errUnauthenticated = errors.New("unauthenticated")
	errAccessDenied    = errors.New("access denied")
)

// errNoConfirmation: the source took the read and did not confirm it.
var errNoConfirmation = errors.New("the source did not confirm the subscription")

// reader is one persistent-subscription read: a bidirectional stream that
// delivers events and takes their acks and nacks.
type reader struct {
	conn   *grpc.ClientConn
	stream grpc.ClientStream
	cancel context.CancelFunc
	id     []byte     // the subscription id acks name
	raw    pbwire.Raw // recv's message; one goroutine receives
}

// openRead starts a read of s on conn and waits up to timeout for the
// source to confirm it. The read lives on parent.
func openRead(parent context.Context, conn *grpc.ClientConn, s *Subscription, buffer int, timeout time.Duration) (*reader, error) {
	ctx, cancel := context.WithCancel(parent)
	stream, err := conn.NewStream(ctx, readDesc, readMethod, grpc.ForceCodecV2(pbwire.Codec{}))
	if err != nil {
		cancel()
		return nil, err
	}
	r := &reader{conn: conn, stream: stream, cancel: cancel}
	// A failed send means the stream has ended: recv returns why.
	_ = stream.SendMsg(&persistent.ReadReq{Content: &persistent.ReadReq_Options_{Options: &persistent.ReadReq_Options{
		StreamOption: &persistent.ReadReq_Options_StreamIdentifier{StreamIdentifier: &shared.StreamIdentifier{StreamName: []byte(s.Stream)}},
		GroupName:    s.Group,
		BufferSize:   int32(buffer),
		UuidOption:   &persistent.ReadReq_Options_UUIDOption{Content: &persistent.ReadReq_Options_UUIDOption_Structured{Structured: &shared.Empty{}}},
	}}})
	// The source may accept the call and never answer it.
	t := time.AfterFunc(timeout, cancel)
	m, err := r.recv()
	if !t.Stop() {
		err = fmt.Errorf("%w within %s", errNoConfirmation, timeout)
	}
	if err == nil && m.Event != nil {
		err = errors.New("the source sent an event before confirming the subscription")
	}
	if err != nil {
		cancel()
		return nil, err
	}
	r.id = []byte(m.SubscriptionID)
	return r, nil
}

// recv returns the next message; an error means the read has ended.
func (r *reader) recv() (pbwire.ReadMessage, error) {
	if err := r.stream.RecvMsg(&r.raw); err != nil {
		if errors.Is(err, context.Canceled) || status.Code(err) == codes.Canceled {
			return pbwire.ReadMessage{}, err
		}
		return pbwire.ReadMessage{}, r.refusal(err)
	}
	return pbwire.DecodeRead(r.raw)
}

// refusal names the errors that retrying cannot fix, and points the next
// dial at the leader when the source says it is not the leader.
func (r *reader) refusal(err error) error {
	if leader := esdbconn.NotLeader(r.stream.Trailer()); leader != "" {
		return &notLeader{leader: leader, err: err}
	}
	switch status.Code(err) {
	case codes.NotFound:
		return fmt.Errorf("%w: %w", errNotFound, err)
	case codes.Unauthenticated:
		return fmt.Errorf("%w: %w", errUnauthenticated, err)
	case codes.PermissionDenied:
		return fmt.Errorf("%w: %w", errAccessDenied, err)
	}
	return err
}

// notLeader is a refusal from a node that is not the leader, naming it.
type notLeader struct {
	leader string
	err    error
}

func (e *notLeader) Error() string {
	return fmt.Sprintf("the node is not the leader (%s is): %v", e.leader, e.err)
}
func (e *notLeader) Unwrap() error { return e.err }

// settle sends s, an ack or a nack, on the read. The stream takes one
// sender at a time: the caller holds the connection's lock.
func (r *reader) settle(s *pbwire.Settle) error {
	s.SubscriptionID = r.id
	return r.stream.SendMsg(s)
}

func (r *reader) close() { r.cancel() }
