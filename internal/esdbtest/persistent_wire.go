package esdbtest

import (
	"context"
	"fmt"
	"strconv"

	"github.com/EventStore/EventStore-Client-Go/v4/protos/persistent"
	"github.com/EventStore/EventStore-Client-Go/v4/protos/shared"
	"github.com/google/uuid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/ditto-replicator/ditto/internal/pbwire/gen/sharedpb"
)

// psEventResp builds the ReadResp of one delivery. Unlike Streams.Read, both
// the event and the link carry the original (link-if-present) positions, and
// retry_count is always set (§5 Read RPC).
func psEventResp(ev ResolvedRecord, retry int32, stringIDs bool) *persistent.ReadResp {
	orig := ev.Original()
	re := &persistent.ReadResp_ReadEvent{
		Position: &persistent.ReadResp_ReadEvent_CommitPosition{CommitPosition: orig.Position},
		Count:    &persistent.ReadResp_ReadEvent_RetryCount{RetryCount: retry},
	}
	if ev.Event != nil {
		re.Event = psRecorded(ev.Event, orig.Position, stringIDs)
	}
	if ev.Link != nil {
		re.Link = psRecorded(ev.Link, orig.Position, stringIDs)
	}
	return &persistent.ReadResp{Content: &persistent.ReadResp_Event{Event: re}}
}

// psRecorded converts a record. metadata must hold type, content-type and
// created (.NET ticks since the Unix epoch): the client exits the process
// when created is missing (§0 hard requirement 1).
func psRecorded(r *Record, pos uint64, stringIDs bool) *persistent.ReadResp_ReadEvent_RecordedEvent {
	return &persistent.ReadResp_ReadEvent_RecordedEvent{
		Id:               uuidToProto(r.ID, stringIDs),
		StreamIdentifier: &shared.StreamIdentifier{StreamName: []byte(r.Stream)},
		StreamRevision:   uint64(r.Number),
		PreparePosition:  pos,
		CommitPosition:   pos,
		Metadata: map[string]string{
			"type":         r.Type,
			"content-type": r.ContentType(),
			"created":      strconv.FormatInt(r.Created.UnixNano()/100, 10),
		},
		CustomMetadata: r.Metadata,
		Data:           r.Data,
	}
}

// psUUIDsFromWire decodes the ids of an ack or nack received as the
// generated message; garbage ids are dropped.
func psUUIDsFromWire(us []*sharedpb.UUID) []uuid.UUID {
	ids := make([]uuid.UUID, 0, len(us))
	for _, u := range us {
		if id, ok := strictUUID(u); ok {
			ids = append(ids, id)
		}
	}
	return ids
}

// Persistent-subscription error statuses (§6). The client reads trailers
// only, so each sets `exception`, `stream-name` and `group-name` there.

// psTrailer is the trailer metadata of a persistent-subscription error.
func psTrailer(exception, stream, group string, extra ...string) metadata.MD {
	return metadata.Pairs(append([]string{"exception", exception, "stream-name", stream, "group-name", group}, extra...)...)
}

// psStatus pairs a status with its trailers so unary and streaming handlers
// can set them their own way.
type psStatus struct {
	err     error
	trailer metadata.MD
}

func psNotFound(stream, group string) psStatus {
	return psStatus{
		status.Errorf(codes.NotFound, "Subscription group '%s' on stream '%s' does not exist.", group, stream),
		psTrailer("persistent-subscription-does-not-exist", stream, group),
	}
}

func psExists(stream, group string) psStatus {
	return psStatus{
		status.Errorf(codes.AlreadyExists, "Subscription group '%s' on stream '%s' exists.", group, stream),
		psTrailer("persistent-subscription-exists", stream, group),
	}
}

func psMaxSubscribers(stream, group string) psStatus {
	return psStatus{
		status.Errorf(codes.FailedPrecondition, "Maximum subscriptions reached for subscription group '%s' on stream '%s'.", group, stream),
		psTrailer("maximum-subscribers-reached", stream, group),
	}
}

func psDropped(stream, group string) psStatus {
	return psStatus{
		status.Errorf(codes.Canceled, "Subscription group '%s' on stream '%s' was dropped.", group, stream),
		psTrailer("persistent-subscription-dropped", stream, group),
	}
}

func psFailed(stream, group string, reason error) psStatus {
	return psStatus{
		status.Errorf(codes.Internal, "Subscription group '%s' on stream '%s' failed: '%v'.", group, stream, reason),
		psTrailer("persistent-subscription-failed", stream, group, "reason", fmt.Sprint(reason)),
	}
}

// unary sets the trailers on a unary call and returns the status error.
func (e psStatus) unary(ctx context.Context) error {
	_ = grpc.SetTrailer(ctx, e.trailer)
	return e.err
}

// streaming sets the trailers on a streaming call and returns the error.
func (e psStatus) streaming(ss grpc.ServerStream) error {
	ss.SetTrailer(e.trailer)
	return e.err
}
