package pbwire

import (
	"encoding/binary"
	"errors"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/EventStore/EventStore-Client-Go/v4/esdb"
	"github.com/EventStore/EventStore-Client-Go/v4/protos/persistent"
	"github.com/google/uuid"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/ditto-replicator/ditto/internal/pbwire/gen/persistentpb"
	"github.com/ditto-replicator/ditto/internal/pbwire/gen/sharedpb"
	"github.com/ditto-replicator/ditto/internal/pbwire/gen/streamspb"
	"github.com/ditto-replicator/ditto/sinks"
)

// Settle is a persistent.ReadReq holding an Ack, or with Nack set a Nack,
// of deliveries' event ids (in their structured form, as reads ask for
// them). The codec encodes it through the generated persistentpb.ReadReq,
// building the ids' messages in three allocations for all of them.
type Settle struct {
	SubscriptionID []byte
	IDs            []uuid.UUID
	Nack           bool
	Action         persistent.ReadReq_Nack_Action
	Reason         string
}

var errBadReason = errors.New("pbwire: a nack reason is not valid UTF-8")

// message is s as the generated persistentpb.ReadReq.
func (s *Settle) message() (*persistentpb.ReadReq, error) {
	us := newUUIDs(len(s.IDs))
	ids := make([]*sharedpb.UUID, len(s.IDs))
	for i, id := range s.IDs {
		ids[i] = us.at(i, id)
	}
	if !s.Nack {
		return &persistentpb.ReadReq{Content: &persistentpb.ReadReq_Ack_{Ack: &persistentpb.ReadReq_Ack{Id: s.SubscriptionID, Ids: ids}}}, nil
	}
	if !utf8.ValidString(s.Reason) {
		return nil, errBadReason // protobuf refuses to encode it
	}
	return &persistentpb.ReadReq{Content: &persistentpb.ReadReq_Nack_{Nack: &persistentpb.ReadReq_Nack{
		Id: s.SubscriptionID, Ids: ids, Action: persistentpb.ReadReq_Nack_Action(s.Action), Reason: s.Reason,
	}}}, nil
}

// BatchWrite is one streams.BatchAppendReq of a write, which the codec
// encodes from ditto's events through the generated
// streamspb.BatchAppendReq, in messages reused from write to write.
type BatchWrite struct {
	CorrelationID uuid.UUID
	Options       bool // the first request of a write carries them
	Stream        string
	Expected      esdb.ExpectedRevision
	Deadline      time.Duration
	Events        []sinks.Event
	Final         bool
}

// Content types the destination is told, as the client's Append tells it.
const (
	ctJSON   = "application/json"
	ctBinary = "application/octet-stream"
)

var errBadType = errors.New("pbwire: an event type is not valid UTF-8")

// contentType is the content type the destination is told for e: JSON or
// binary, as the client's EventData carries it.
func contentType(e *sinks.Event) string {
	if e.ContentType == ctJSON {
		return ctJSON
	}
	return ctBinary
}

// writeScratch is a BatchWrite's generated message and its parts, reused
// from one write to the next: each event's metadata map keeps its two keys,
// so that building the message allocates nothing once it has grown.
type writeScratch struct {
	req  streamspb.BatchAppendReq
	opts streamspb.BatchAppendReq_Options
	sid  sharedpb.StreamIdentifier
	dl   streamspb.BatchAppendReq_Options_Deadline
	dur  durationpb.Duration
	msgs []streamspb.BatchAppendReq_ProposedMessage
	ptrs []*streamspb.BatchAppendReq_ProposedMessage
	maps []map[string]string
	us   uuids
}

var writeScratches = sync.Pool{New: func() any { return new(writeScratch) }}

// empty is the message a oneof's empty case holds; never written to.
var empty = &emptypb.Empty{}

// marshal encodes w through the generated streamspb.BatchAppendReq.
func (w *BatchWrite) marshal() (mem.BufferSlice, error) {
	for i := range w.Events {
		if !utf8.ValidString(w.Events[i].Type) {
			return nil, errBadType // protobuf refuses to encode it
		}
	}
	s := writeScratches.Get().(*writeScratch)
	defer writeScratches.Put(s)
	n := len(w.Events)
	if cap(s.msgs) < n {
		s.msgs = make([]streamspb.BatchAppendReq_ProposedMessage, n)
		s.ptrs = make([]*streamspb.BatchAppendReq_ProposedMessage, n)
	}
	if len(s.maps) < n {
		s.maps = append(s.maps, make([]map[string]string, n-len(s.maps))...)
	}
	if len(s.us.u) < n+1 {
		s.us = newUUIDs(n + 1)
	}
	s.req = streamspb.BatchAppendReq{CorrelationId: s.us.at(n, w.CorrelationID), IsFinal: w.Final}
	if w.Options {
		s.sid.StreamName = []byte(w.Stream)
		s.dur.Seconds, s.dur.Nanos = int64(w.Deadline/time.Second), int32(w.Deadline%time.Second)
		s.dl.Deadline = &s.dur
		s.opts = streamspb.BatchAppendReq_Options{StreamIdentifier: &s.sid, DeadlineOption: &s.dl}
		switch e := w.Expected.(type) {
		case esdb.StreamRevision:
			s.opts.ExpectedStreamPosition = &streamspb.BatchAppendReq_Options_StreamPosition{StreamPosition: e.Value}
		case esdb.NoStream:
			s.opts.ExpectedStreamPosition = &streamspb.BatchAppendReq_Options_NoStream{NoStream: empty}
		case esdb.StreamExists:
			s.opts.ExpectedStreamPosition = &streamspb.BatchAppendReq_Options_StreamExists{StreamExists: empty}
		default:
			s.opts.ExpectedStreamPosition = &streamspb.BatchAppendReq_Options_Any{Any: empty}
		}
		s.req.Options = &s.opts
	}
	msgs, ptrs := s.msgs[:n], s.ptrs[:n]
	for i := range w.Events {
		e := &w.Events[i]
		md := s.maps[i]
		if md == nil {
			md = make(map[string]string, 2)
			s.maps[i] = md
		}
		md[mdType], md[mdContentType] = e.Type, contentType(e)
		msgs[i] = streamspb.BatchAppendReq_ProposedMessage{Id: s.us.at(i, e.ID), Metadata: md, CustomMetadata: e.Metadata, Data: e.Data}
		ptrs[i] = &msgs[i]
	}
	s.req.ProposedMessages = ptrs
	out, err := marshalVT(&s.req)
	// Nothing of the write stays reachable from the pool.
	for i := range msgs {
		msgs[i] = streamspb.BatchAppendReq_ProposedMessage{}
		s.maps[i][mdType] = ""
	}
	s.sid.StreamName = nil
	s.req = streamspb.BatchAppendReq{}
	return out, err
}

// uuids holds structured shared.UUIDs in three allocations for all.
type uuids struct {
	u []sharedpb.UUID
	w []sharedpb.UUID_Structured_
	s []sharedpb.UUID_Structured
}

func newUUIDs(n int) uuids {
	return uuids{u: make([]sharedpb.UUID, n), w: make([]sharedpb.UUID_Structured_, n), s: make([]sharedpb.UUID_Structured, n)}
}

// at sets the i-th UUID to id and returns it.
func (us *uuids) at(i int, id uuid.UUID) *sharedpb.UUID {
	us.s[i] = sharedpb.UUID_Structured{
		MostSignificantBits:  int64(binary.BigEndian.Uint64(id[:8])),
		LeastSignificantBits: int64(binary.BigEndian.Uint64(id[8:])),
	}
	us.w[i].Structured = &us.s[i]
	us.u[i] = sharedpb.UUID{Value: &us.w[i]}
	return &us.u[i]
}

// BatchAppendSuccess decodes the answer to nearly every write: a
// streams.BatchAppendResp reporting success with the stream's current
// revision, under a structured correlation id. ok is false for anything
// else (a refusal, a success without a revision, bytes that do not
// decode), which the caller decodes with protobuf.
func BatchAppendSuccess(b []byte) (id uuid.UUID, revision uint64, ok bool) {
	var resp streamspb.BatchAppendResp
	if resp.UnmarshalVTUnsafe(b) != nil {
		return id, 0, false
	}
	s := resp.GetCorrelationId().GetStructured()
	rev, isRev := resp.GetSuccess().GetCurrentRevisionOption().(*streamspb.BatchAppendResp_Success_CurrentRevision)
	if s == nil || !isRev {
		return id, 0, false
	}
	return structuredUUID(uint64(s.GetMostSignificantBits()), uint64(s.GetLeastSignificantBits())), rev.CurrentRevision, true
}
