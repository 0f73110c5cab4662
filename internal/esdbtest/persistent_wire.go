package esdbtest

import (
	"context"
	"encoding/binary"
	"fmt"
	"strconv"

	"github.com/EventStore/EventStore-Client-Go/v4/protos/persistent"
	"github.com/EventStore/EventStore-Client-Go/v4/protos/shared"
	"github.com/google/uuid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"
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
		Id:               psProtoUUID(r.ID, stringIDs),
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

// psProtoUUID encodes an id as the client asked: structured (two big-endian
// int64 halves) or the hyphenated string.
func psProtoUUID(id uuid.UUID, asString bool) *shared.UUID {
	if asString {
		return &shared.UUID{Value: &shared.UUID_String_{String_: id.String()}}
	}
	return &shared.UUID{Value: &shared.UUID_Structured_{Structured: &shared.UUID_Structured{
		MostSignificantBits:  int64(binary.BigEndian.Uint64(id[:8])),
		LeastSignificantBits: int64(binary.BigEndian.Uint64(id[8:])),
	}}}
}

// psUUIDFromProto decodes an ack/nack id; ok is false for garbage.
func psUUIDFromProto(u *shared.UUID) (uuid.UUID, bool) {
	var id uuid.UUID
	switch v := u.GetValue().(type) {
	case *shared.UUID_Structured_:
		binary.BigEndian.PutUint64(id[:8], uint64(v.Structured.GetMostSignificantBits()))
		binary.BigEndian.PutUint64(id[8:], uint64(v.Structured.GetLeastSignificantBits()))
		return id, true
	case *shared.UUID_String_:
		parsed, err := uuid.Parse(v.String_)
		return parsed, err == nil
	}
	return id, false
}

func psUUIDsFromProto(us []*shared.UUID) []uuid.UUID {
	ids := make([]uuid.UUID, 0, len(us))
	for _, u := range us {
		if id, ok := psUUIDFromProto(u); ok {
			ids = append(ids, id)
		}
	}
	return ids
}

// psFastAckIDs decodes a ReadReq in the shape consumers send acks in: one
// Ack whose ids are all in the structured form, each field written once and
// in order, as protobuf writes them. ok is false for anything else (a nack,
// string ids, unknown or repeated fields, bad bytes), which the caller then
// decodes with the codec as any message. The ids equal those
// psUUIDsFromProto finds in the decoded message, but for an ack of 16 ids
// in one allocation instead of six, and in a fifth of the time.
func psFastAckIDs(b []byte) (ids []uuid.UUID, ok bool) {
	const (
		readReqAck = 2<<3 | byte(protowire.BytesType)
		ackID      = 1<<3 | byte(protowire.BytesType)
		ackIDs     = 2<<3 | byte(protowire.BytesType)
		structured = 1<<3 | byte(protowire.BytesType)
	)
	tag, ack, rest, ok := psLenField(b)
	if !ok || tag != readReqAck || len(rest) > 0 {
		return nil, false
	}
	// Count first, to allocate the ids once.
	n := 0
	for rest := ack; len(rest) > 0; {
		tag, _, r, ok := psLenField(rest)
		if !ok || (tag != ackID && tag != ackIDs) {
			return nil, false
		}
		if tag == ackIDs {
			n++
		}
		rest = r
	}
	ids = make([]uuid.UUID, 0, n)
	for len(ack) > 0 {
		tag, u, r, _ := psLenField(ack)
		ack = r
		if tag != ackIDs {
			continue
		}
		tag, st, r, ok := psLenField(u)
		if !ok || tag != structured || len(r) > 0 {
			return nil, false
		}
		// Varint fields 1 (most) then 2 (least); zeros are not written.
		var halves [2]uint64
		next := byte(1)
		for len(st) > 0 {
			num := st[0] >> 3
			if st[0]&7 != byte(protowire.VarintType) || num < next || num > 2 {
				return nil, false
			}
			x, xn := protowire.ConsumeVarint(st[1:])
			if xn < 0 {
				return nil, false
			}
			halves[num-1], next, st = x, num+1, st[1+xn:]
		}
		var id uuid.UUID
		binary.BigEndian.PutUint64(id[:8], halves[0])
		binary.BigEndian.PutUint64(id[8:], halves[1])
		ids = append(ids, id)
	}
	return ids, true
}

// psLenField reads a length-delimited field with a one-byte tag (field
// numbers below 16) from b; ok is false for any other field or bad bytes.
func psLenField(b []byte) (tag byte, v, rest []byte, ok bool) {
	if len(b) < 2 || b[0]&7 != byte(protowire.BytesType) || b[0] >= 0x80 {
		return 0, nil, nil, false
	}
	n, l := uint64(b[1]), 1
	if n >= 0x80 {
		if n, l = protowire.ConsumeVarint(b[1:]); l < 0 {
			return 0, nil, nil, false
		}
	}
	if n > uint64(len(b)-1-l) {
		return 0, nil, nil, false
	}
	end := 1 + l + int(n)
	return b[0], b[1+l : end], b[end:], true
}

// psUnmarshalError is the error grpc returns from RecvMsg when the codec
// cannot decode a message, for messages received raw and decoded here.
func psUnmarshalError(err error) error {
	return status.Errorf(codes.Internal, "grpc: failed to unmarshal the received message: %v", err)
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
