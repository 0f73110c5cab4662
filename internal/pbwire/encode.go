package pbwire

import (
	"unicode/utf8"

	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/EventStore/EventStore-Client-Go/v4/protos/persistent"
	"github.com/EventStore/EventStore-Client-Go/v4/protos/shared"
	"github.com/EventStore/EventStore-Client-Go/v4/protos/streams"
)

// Field numbers, from the KurrentDB protos.
const (
	// persistent.ReadResp
	fReadRespEvent = 1
	// persistent.ReadResp.ReadEvent
	fReadEventEvent          = 1
	fReadEventLink           = 2
	fReadEventCommitPosition = 3
	fReadEventNoPosition     = 4
	fReadEventRetryCount     = 5
	fReadEventNoRetryCount   = 6
	// persistent.ReadResp.ReadEvent.RecordedEvent
	fRecID              = 1
	fRecStream          = 2
	fRecStreamRevision  = 3
	fRecPreparePosition = 4
	fRecCommitPosition  = 5
	fRecMetadata        = 6
	fRecCustomMetadata  = 7
	fRecData            = 8
	// streams.AppendReq
	fAppendProposed = 2
	// streams.AppendReq.ProposedMessage
	fPropID             = 1
	fPropMetadata       = 2
	fPropCustomMetadata = 3
	fPropData           = 4
	// shared.UUID
	fUUIDStructured = 1
	fUUIDString     = 2
	// shared.UUID.Structured
	fStructMost  = 1
	fStructLeast = 2
	// shared.StreamIdentifier
	fStreamName = 3
	// map entries
	fMapKey   = 1
	fMapValue = 2
)

// writer encodes one message in two passes: sizes first (which also decides
// whether the shape is handled), then bytes into an exactly sized buffer. The
// nested sizes found in the first pass are kept for the length prefixes of
// the second.
type writer struct {
	total int
	sizes [3]int
}

func (w *writer) finish(fill func([]byte) []byte) mem.BufferSlice {
	if mem.IsBelowBufferPoolingThreshold(w.total) {
		return mem.BufferSlice{mem.SliceBuffer(fill(make([]byte, 0, w.total)))}
	}
	pool := mem.DefaultBufferPool()
	buf := pool.Get(w.total)
	*buf = fill((*buf)[:0])
	return mem.BufferSlice{mem.NewBuffer(buf, pool)}
}

// plain reports whether a message carries no unknown fields, which only the
// protobuf runtime keeps.
func plain(m proto.Message) bool { return len(m.ProtoReflect().GetUnknown()) == 0 }

func sizeField(n int) int { return 1 + protowire.SizeBytes(n) } // field numbers < 16

func sizeVarintField(v uint64) int {
	if v == 0 {
		return 0
	}
	return 1 + protowire.SizeVarint(v)
}

func sizeBytesField(n int) int {
	if n == 0 {
		return 0
	}
	return sizeField(n)
}

func appendLen(b []byte, num protowire.Number, n int) []byte {
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendVarint(b, uint64(n))
}

func appendVarintField(b []byte, num protowire.Number, v uint64) []byte {
	if v == 0 {
		return b
	}
	b = protowire.AppendTag(b, num, protowire.VarintType)
	return protowire.AppendVarint(b, v)
}

func appendBytesField(b []byte, num protowire.Number, v []byte) []byte {
	if len(v) == 0 {
		return b
	}
	b = appendLen(b, num, len(v))
	return append(b, v...)
}

// sizeMap sizes a map<string, string>; ok is false for invalid UTF-8, which
// the protobuf runtime refuses to encode.
func sizeMap(m map[string]string) (n int, ok bool) {
	for k, v := range m {
		if !utf8.ValidString(k) || !utf8.ValidString(v) {
			return 0, false
		}
		n += sizeField(sizeField(len(k)) + sizeField(len(v)))
	}
	return n, true
}

func appendMap(b []byte, num protowire.Number, m map[string]string) []byte {
	for k, v := range m {
		b = appendLen(b, num, sizeField(len(k))+sizeField(len(v)))
		b = appendLen(b, fMapKey, len(k))
		b = append(b, k...)
		b = appendLen(b, fMapValue, len(v))
		b = append(b, v...)
	}
	return b
}

// sizeUUID is the size of a UUID's contents.
func sizeUUID(u *shared.UUID) (int, bool) {
	if !plain(u) {
		return 0, false
	}
	switch v := u.Value.(type) {
	case nil:
		return 0, true
	case *shared.UUID_Structured_:
		if v.Structured == nil || !plain(v.Structured) {
			return 0, false
		}
		return sizeField(sizeStructured(v.Structured)), true
	case *shared.UUID_String_:
		if !utf8.ValidString(v.String_) {
			return 0, false
		}
		return sizeField(len(v.String_)), true
	}
	return 0, false
}

func sizeStructured(s *shared.UUID_Structured) int {
	return sizeVarintField(uint64(s.MostSignificantBits)) + sizeVarintField(uint64(s.LeastSignificantBits))
}

func appendUUID(b []byte, num protowire.Number, u *shared.UUID) []byte {
	n, _ := sizeUUID(u)
	b = appendLen(b, num, n)
	switch v := u.Value.(type) {
	case *shared.UUID_Structured_:
		b = appendLen(b, fUUIDStructured, sizeStructured(v.Structured))
		b = appendVarintField(b, fStructMost, uint64(v.Structured.MostSignificantBits))
		b = appendVarintField(b, fStructLeast, uint64(v.Structured.LeastSignificantBits))
	case *shared.UUID_String_:
		b = appendLen(b, fUUIDString, len(v.String_))
		b = append(b, v.String_...)
	}
	return b
}

// appendReqSize sizes an AppendReq holding a proposed message.
func (w *writer) appendReqSize(m *streams.AppendReq) bool {
	c, ok := m.Content.(*streams.AppendReq_ProposedMessage_)
	if !ok || c.ProposedMessage == nil || !plain(m) || !plain(c.ProposedMessage) {
		return false
	}
	p := c.ProposedMessage
	n := sizeBytesField(len(p.CustomMetadata)) + sizeBytesField(len(p.Data))
	if p.Id != nil {
		id, ok := sizeUUID(p.Id)
		if !ok {
			return false
		}
		n += sizeField(id)
	}
	meta, ok := sizeMap(p.Metadata)
	if !ok {
		return false
	}
	n += meta
	w.sizes[0] = n
	w.total = sizeField(n)
	return true
}

func (w *writer) appendAppendReq(b []byte, m *streams.AppendReq) []byte {
	p := m.Content.(*streams.AppendReq_ProposedMessage_).ProposedMessage
	b = appendLen(b, fAppendProposed, w.sizes[0])
	if p.Id != nil {
		b = appendUUID(b, fPropID, p.Id)
	}
	b = appendMap(b, fPropMetadata, p.Metadata)
	b = appendBytesField(b, fPropCustomMetadata, p.CustomMetadata)
	return appendBytesField(b, fPropData, p.Data)
}

// readRespSize sizes a ReadResp holding an event.
func (w *writer) readRespSize(m *persistent.ReadResp) bool {
	c, ok := m.Content.(*persistent.ReadResp_Event)
	if !ok || c.Event == nil || !plain(m) || !plain(c.Event) {
		return false
	}
	e := c.Event
	n := 0
	for i, r := range [2]*persistent.ReadResp_ReadEvent_RecordedEvent{e.Event, e.Link} {
		if r == nil {
			continue
		}
		rn, ok := sizeRecorded(r)
		if !ok {
			return false
		}
		w.sizes[1+i] = rn
		n += sizeField(rn)
	}
	switch p := e.Position.(type) {
	case nil:
	case *persistent.ReadResp_ReadEvent_CommitPosition:
		n += 1 + protowire.SizeVarint(p.CommitPosition)
	case *persistent.ReadResp_ReadEvent_NoPosition:
		if p.NoPosition == nil || !plain(p.NoPosition) {
			return false
		}
		n += 2
	default:
		return false
	}
	switch r := e.Count.(type) {
	case nil:
	case *persistent.ReadResp_ReadEvent_RetryCount:
		n += 1 + protowire.SizeVarint(uint64(int64(r.RetryCount)))
	case *persistent.ReadResp_ReadEvent_NoRetryCount:
		if r.NoRetryCount == nil || !plain(r.NoRetryCount) {
			return false
		}
		n += 2
	default:
		return false
	}
	w.sizes[0] = n
	w.total = sizeField(n)
	return true
}

func (w *writer) appendReadResp(b []byte, m *persistent.ReadResp) []byte {
	e := m.Content.(*persistent.ReadResp_Event).Event
	b = appendLen(b, fReadRespEvent, w.sizes[0])
	if e.Event != nil {
		b = appendRecorded(b, fReadEventEvent, w.sizes[1], e.Event)
	}
	if e.Link != nil {
		b = appendRecorded(b, fReadEventLink, w.sizes[2], e.Link)
	}
	switch p := e.Position.(type) {
	case *persistent.ReadResp_ReadEvent_CommitPosition:
		b = protowire.AppendTag(b, fReadEventCommitPosition, protowire.VarintType)
		b = protowire.AppendVarint(b, p.CommitPosition)
	case *persistent.ReadResp_ReadEvent_NoPosition:
		b = appendLen(b, fReadEventNoPosition, 0)
	}
	switch r := e.Count.(type) {
	case *persistent.ReadResp_ReadEvent_RetryCount:
		b = protowire.AppendTag(b, fReadEventRetryCount, protowire.VarintType)
		b = protowire.AppendVarint(b, uint64(int64(r.RetryCount)))
	case *persistent.ReadResp_ReadEvent_NoRetryCount:
		b = appendLen(b, fReadEventNoRetryCount, 0)
	}
	return b
}

func sizeRecorded(r *persistent.ReadResp_ReadEvent_RecordedEvent) (int, bool) {
	if !plain(r) {
		return 0, false
	}
	n := sizeVarintField(r.StreamRevision) + sizeVarintField(r.PreparePosition) + sizeVarintField(r.CommitPosition) +
		sizeBytesField(len(r.CustomMetadata)) + sizeBytesField(len(r.Data))
	if r.Id != nil {
		id, ok := sizeUUID(r.Id)
		if !ok {
			return 0, false
		}
		n += sizeField(id)
	}
	if s := r.StreamIdentifier; s != nil {
		if !plain(s) {
			return 0, false
		}
		n += sizeField(sizeBytesField(len(s.StreamName)))
	}
	meta, ok := sizeMap(r.Metadata)
	if !ok {
		return 0, false
	}
	return n + meta, true
}

func appendRecorded(b []byte, num protowire.Number, size int, r *persistent.ReadResp_ReadEvent_RecordedEvent) []byte {
	b = appendLen(b, num, size)
	if r.Id != nil {
		b = appendUUID(b, fRecID, r.Id)
	}
	if s := r.StreamIdentifier; s != nil {
		b = appendLen(b, fRecStream, sizeBytesField(len(s.StreamName)))
		b = appendBytesField(b, fStreamName, s.StreamName)
	}
	b = appendVarintField(b, fRecStreamRevision, r.StreamRevision)
	b = appendVarintField(b, fRecPreparePosition, r.PreparePosition)
	b = appendVarintField(b, fRecCommitPosition, r.CommitPosition)
	b = appendMap(b, fRecMetadata, r.Metadata)
	b = appendBytesField(b, fRecCustomMetadata, r.CustomMetadata)
	return appendBytesField(b, fRecData, r.Data)
}
