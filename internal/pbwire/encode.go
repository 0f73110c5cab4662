package pbwire

import (
	"unicode/utf8"

	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/EventStore/EventStore-Client-Go/v4/protos/persistent"
	"github.com/EventStore/EventStore-Client-Go/v4/protos/shared"
	"github.com/EventStore/EventStore-Client-Go/v4/protos/streams"
)

// Field numbers, from the KurrentDB protos.
const (
	// persistent.ReadResp
	fReadRespEvent        = 1
	fReadRespConfirmation = 2
	// persistent.ReadResp.SubscriptionConfirmation
	fConfirmationID = 1
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
	// streams.AppendReq.ProposedMessage, streams.BatchAppendReq.ProposedMessage
	fPropID             = 1
	fPropMetadata       = 2
	fPropCustomMetadata = 3
	fPropData           = 4
	// streams.BatchAppendReq
	fBatchCorrelation = 1
	fBatchOptions     = 2
	fBatchProposed    = 3
	fBatchIsFinal     = 4
	// streams.BatchAppendReq.Options
	fOptStream         = 1
	fOptStreamPosition = 2
	fOptNoStream       = 3
	fOptAny            = 4
	fOptStreamExists   = 5
	fOptDeadline21100  = 6 // google.protobuf.Timestamp
	fOptDeadline       = 7 // google.protobuf.Duration
	// google.protobuf.Timestamp, google.protobuf.Duration
	fSeconds = 1
	fNanos   = 2
	// persistent.ReadReq
	fReadReqAck  = 2
	fReadReqNack = 3
	// persistent.ReadReq.Ack, persistent.ReadReq.Nack
	fAckID      = 1
	fAckIDs     = 2
	fNackAction = 3
	fNackReason = 4
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
	each  [32]int // sizes of the first elements of a repeated field
	more  []int   // and of the others
}

func (w *writer) setEach(i, n int) {
	if i < len(w.each) {
		w.each[i] = n
		return
	}
	w.more = append(w.more, n) // i in order
}

func (w *writer) eachSize(i int) int {
	if i < len(w.each) {
		return w.each[i]
	}
	return w.more[i-len(w.each)]
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
		if v == nil || v.Structured == nil || !plain(v.Structured) {
			return 0, false
		}
		return sizeField(sizeStructured(v.Structured)), true
	case *shared.UUID_String_:
		if v == nil || !utf8.ValidString(v.String_) {
			return 0, false
		}
		return sizeField(len(v.String_)), true
	}
	return 0, false
}

func sizeStructured(s *shared.UUID_Structured) int {
	return sizeVarintField(uint64(s.MostSignificantBits)) + sizeVarintField(uint64(s.LeastSignificantBits))
}

// uuidLen is sizeUUID for a UUID sizeUUID accepted.
func uuidLen(u *shared.UUID) int {
	switch v := u.Value.(type) {
	case *shared.UUID_Structured_:
		return sizeField(sizeStructured(v.Structured))
	case *shared.UUID_String_:
		return sizeField(len(v.String_))
	}
	return 0
}

func appendUUID(b []byte, num protowire.Number, u *shared.UUID) []byte {
	b = appendLen(b, num, uuidLen(u))
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

// sizeProposed sizes the contents of a proposed message, which
// streams.AppendReq and streams.BatchAppendReq declare alike.
func sizeProposed(id *shared.UUID, meta map[string]string, custom, data []byte) (int, bool) {
	n := sizeBytesField(len(custom)) + sizeBytesField(len(data))
	if id != nil {
		idn, ok := sizeUUID(id)
		if !ok {
			return 0, false
		}
		n += sizeField(idn)
	}
	mn, ok := sizeMap(meta)
	return n + mn, ok
}

func appendProposed(b []byte, num protowire.Number, size int, id *shared.UUID, meta map[string]string, custom, data []byte) []byte {
	b = appendLen(b, num, size)
	if id != nil {
		b = appendUUID(b, fPropID, id)
	}
	b = appendMap(b, fPropMetadata, meta)
	b = appendBytesField(b, fPropCustomMetadata, custom)
	return appendBytesField(b, fPropData, data)
}

// appendReqSize sizes an AppendReq holding a proposed message.
func (w *writer) appendReqSize(m *streams.AppendReq) bool {
	c, ok := m.Content.(*streams.AppendReq_ProposedMessage_)
	if !ok || c == nil || c.ProposedMessage == nil || !plain(m) || !plain(c.ProposedMessage) {
		return false
	}
	p := c.ProposedMessage
	n, ok := sizeProposed(p.Id, p.Metadata, p.CustomMetadata, p.Data)
	w.sizes[0] = n
	w.total = sizeField(n)
	return ok
}

func (w *writer) appendAppendReq(b []byte, m *streams.AppendReq) []byte {
	p := m.Content.(*streams.AppendReq_ProposedMessage_).ProposedMessage
	return appendProposed(b, fAppendProposed, w.sizes[0], p.Id, p.Metadata, p.CustomMetadata, p.Data)
}

// batchAppendReqSize sizes a BatchAppendReq: sizes[0] is the size of its
// options, each that of its proposed messages.
func (w *writer) batchAppendReqSize(m *streams.BatchAppendReq) bool {
	if !plain(m) {
		return false
	}
	n := 0
	if m.CorrelationId != nil {
		id, ok := sizeUUID(m.CorrelationId)
		if !ok {
			return false
		}
		n += sizeField(id)
	}
	if o := m.Options; o != nil {
		on, ok := sizeBatchOptions(o)
		if !ok {
			return false
		}
		w.sizes[0] = on
		n += sizeField(on)
	}
	for i, p := range m.ProposedMessages {
		if p == nil || !plain(p) {
			return false
		}
		pn, ok := sizeProposed(p.Id, p.Metadata, p.CustomMetadata, p.Data)
		if !ok {
			return false
		}
		w.setEach(i, pn)
		n += sizeField(pn)
	}
	if m.IsFinal {
		n += 2
	}
	w.total = n
	return true
}

func (w *writer) appendBatchAppendReq(b []byte, m *streams.BatchAppendReq) []byte {
	if m.CorrelationId != nil {
		b = appendUUID(b, fBatchCorrelation, m.CorrelationId)
	}
	if m.Options != nil {
		b = appendBatchOptions(b, w.sizes[0], m.Options)
	}
	for i, p := range m.ProposedMessages {
		b = appendProposed(b, fBatchProposed, w.eachSize(i), p.Id, p.Metadata, p.CustomMetadata, p.Data)
	}
	if m.IsFinal {
		b = protowire.AppendTag(b, fBatchIsFinal, protowire.VarintType)
		b = append(b, 1)
	}
	return b
}

// plainEmpty reports whether e is an Empty that encodes as no bytes.
func plainEmpty(e *emptypb.Empty) bool { return e != nil && plain(e) }

func sizeBatchOptions(o *streams.BatchAppendReq_Options) (int, bool) {
	if !plain(o) {
		return 0, false
	}
	n := 0
	if s := o.StreamIdentifier; s != nil {
		if !plain(s) {
			return 0, false
		}
		n += sizeField(sizeBytesField(len(s.StreamName)))
	}
	// The cases of a oneof are written even when zero or empty.
	switch p := o.ExpectedStreamPosition.(type) {
	case nil:
	case *streams.BatchAppendReq_Options_StreamPosition:
		if p == nil {
			return 0, false
		}
		n += 1 + protowire.SizeVarint(p.StreamPosition)
	case *streams.BatchAppendReq_Options_NoStream:
		if p == nil || !plainEmpty(p.NoStream) {
			return 0, false
		}
		n += 2
	case *streams.BatchAppendReq_Options_Any:
		if p == nil || !plainEmpty(p.Any) {
			return 0, false
		}
		n += 2
	case *streams.BatchAppendReq_Options_StreamExists:
		if p == nil || !plainEmpty(p.StreamExists) {
			return 0, false
		}
		n += 2
	default:
		return 0, false
	}
	switch d := o.DeadlineOption.(type) {
	case nil:
	case *streams.BatchAppendReq_Options_Deadline_21_10_0:
		if d == nil || d.Deadline_21_10_0 == nil || !plain(d.Deadline_21_10_0) {
			return 0, false
		}
		n += sizeField(sizeSecondsNanos(d.Deadline_21_10_0.Seconds, d.Deadline_21_10_0.Nanos))
	case *streams.BatchAppendReq_Options_Deadline:
		if d == nil || d.Deadline == nil || !plain(d.Deadline) {
			return 0, false
		}
		n += sizeField(sizeSecondsNanos(d.Deadline.Seconds, d.Deadline.Nanos))
	default:
		return 0, false
	}
	return n, true
}

func appendBatchOptions(b []byte, size int, o *streams.BatchAppendReq_Options) []byte {
	b = appendLen(b, fBatchOptions, size)
	if s := o.StreamIdentifier; s != nil {
		b = appendLen(b, fOptStream, sizeBytesField(len(s.StreamName)))
		b = appendBytesField(b, fStreamName, s.StreamName)
	}
	switch p := o.ExpectedStreamPosition.(type) {
	case *streams.BatchAppendReq_Options_StreamPosition:
		b = protowire.AppendTag(b, fOptStreamPosition, protowire.VarintType)
		b = protowire.AppendVarint(b, p.StreamPosition)
	case *streams.BatchAppendReq_Options_NoStream:
		b = appendLen(b, fOptNoStream, 0)
	case *streams.BatchAppendReq_Options_Any:
		b = appendLen(b, fOptAny, 0)
	case *streams.BatchAppendReq_Options_StreamExists:
		b = appendLen(b, fOptStreamExists, 0)
	}
	switch d := o.DeadlineOption.(type) {
	case *streams.BatchAppendReq_Options_Deadline_21_10_0:
		b = appendSecondsNanos(b, fOptDeadline21100, d.Deadline_21_10_0.Seconds, d.Deadline_21_10_0.Nanos)
	case *streams.BatchAppendReq_Options_Deadline:
		b = appendSecondsNanos(b, fOptDeadline, d.Deadline.Seconds, d.Deadline.Nanos)
	}
	return b
}

// sizeSecondsNanos sizes a Timestamp or a Duration, which share a layout.
func sizeSecondsNanos(s int64, n int32) int {
	return sizeVarintField(uint64(s)) + sizeVarintField(uint64(int64(n)))
}

func appendSecondsNanos(b []byte, num protowire.Number, s int64, n int32) []byte {
	b = appendLen(b, num, sizeSecondsNanos(s, n))
	b = appendVarintField(b, fSeconds, uint64(s))
	return appendVarintField(b, fNanos, uint64(int64(n)))
}

// readReqSize sizes a ReadReq holding an ack or a nack.
func (w *writer) readReqSize(m *persistent.ReadReq) bool {
	if !plain(m) {
		return false
	}
	var n int
	switch c := m.Content.(type) {
	case *persistent.ReadReq_Ack_:
		if c == nil || c.Ack == nil || !plain(c.Ack) {
			return false
		}
		an, ok := sizeAck(c.Ack.Id, c.Ack.Ids)
		if !ok {
			return false
		}
		n = an
	case *persistent.ReadReq_Nack_:
		if c == nil || c.Nack == nil || !plain(c.Nack) || !utf8.ValidString(c.Nack.Reason) {
			return false
		}
		an, ok := sizeAck(c.Nack.Id, c.Nack.Ids)
		if !ok {
			return false
		}
		n = an + sizeVarintField(uint64(int64(c.Nack.Action))) + sizeBytesField(len(c.Nack.Reason))
	default:
		return false
	}
	w.sizes[0] = n
	w.total = sizeField(n)
	return true
}

// sizeAck sizes the fields an Ack and a Nack share.
func sizeAck(id []byte, ids []*shared.UUID) (int, bool) {
	n := sizeBytesField(len(id))
	for _, u := range ids {
		if u == nil {
			return 0, false
		}
		un, ok := sizeUUID(u)
		if !ok {
			return 0, false
		}
		n += sizeField(un)
	}
	return n, true
}

func (w *writer) appendReadReq(b []byte, m *persistent.ReadReq) []byte {
	switch c := m.Content.(type) {
	case *persistent.ReadReq_Ack_:
		b = appendLen(b, fReadReqAck, w.sizes[0])
		b = appendAck(b, c.Ack.Id, c.Ack.Ids)
	case *persistent.ReadReq_Nack_:
		b = appendLen(b, fReadReqNack, w.sizes[0])
		b = appendAck(b, c.Nack.Id, c.Nack.Ids)
		b = appendVarintField(b, fNackAction, uint64(int64(c.Nack.Action)))
		if len(c.Nack.Reason) > 0 {
			b = append(appendLen(b, fNackReason, len(c.Nack.Reason)), c.Nack.Reason...)
		}
	}
	return b
}

func appendAck(b []byte, id []byte, ids []*shared.UUID) []byte {
	b = appendBytesField(b, fAckID, id)
	for _, u := range ids {
		b = appendUUID(b, fAckIDs, u)
	}
	return b
}

// readRespSize sizes a ReadResp holding an event.
func (w *writer) readRespSize(m *persistent.ReadResp) bool {
	c, ok := m.Content.(*persistent.ReadResp_Event)
	if !ok || c == nil || c.Event == nil || !plain(m) || !plain(c.Event) {
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
		if p == nil {
			return false
		}
		n += 1 + protowire.SizeVarint(p.CommitPosition)
	case *persistent.ReadResp_ReadEvent_NoPosition:
		if p == nil || p.NoPosition == nil || !plain(p.NoPosition) {
			return false
		}
		n += 2
	default:
		return false
	}
	switch r := e.Count.(type) {
	case nil:
	case *persistent.ReadResp_ReadEvent_RetryCount:
		if r == nil {
			return false
		}
		n += 1 + protowire.SizeVarint(uint64(int64(r.RetryCount)))
	case *persistent.ReadResp_ReadEvent_NoRetryCount:
		if r == nil || r.NoRetryCount == nil || !plain(r.NoRetryCount) {
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

// batchAppendRespSize sizes a BatchAppendResp reporting a success, the
// answer to nearly every write (refusals go through protobuf). sizes holds
// the correlation id's, the success's and the stream identifier's.
func (w *writer) batchAppendRespSize(m *streams.BatchAppendResp) bool {
	r, ok := m.Result.(*streams.BatchAppendResp_Success_)
	if !ok || r == nil || r.Success == nil || m.ExpectedStreamPosition != nil || !plain(m) || !plain(r.Success) {
		return false
	}
	n := 0
	if m.CorrelationId != nil {
		idn, ok := sizeUUID(m.CorrelationId)
		if !ok {
			return false
		}
		w.sizes[0] = idn
		n += sizeField(idn)
	}
	sn, ok := successSize(r.Success)
	if !ok {
		return false
	}
	w.sizes[1] = sn
	n += sizeField(sn)
	if id := m.StreamIdentifier; id != nil {
		if !plain(id) {
			return false
		}
		w.sizes[2] = sizeBytesField(len(id.StreamName))
		n += sizeField(w.sizes[2])
	}
	w.total = n
	return true
}

// successSize sizes a BatchAppendResp.Success.
func successSize(s *streams.BatchAppendResp_Success) (int, bool) {
	n := 0
	switch r := s.CurrentRevisionOption.(type) {
	case nil:
	case *streams.BatchAppendResp_Success_CurrentRevision:
		if r == nil {
			return 0, false
		}
		n += 1 + protowire.SizeVarint(r.CurrentRevision) // a oneof's case: written even when zero
	case *streams.BatchAppendResp_Success_NoStream:
		if r == nil || !plainEmpty(r.NoStream) {
			return 0, false
		}
		n += 2
	default:
		return 0, false
	}
	switch p := s.PositionOption.(type) {
	case nil:
	case *streams.BatchAppendResp_Success_Position:
		if p == nil || p.Position == nil || !plain(p.Position) {
			return 0, false
		}
		n += sizeField(allPositionSize(p.Position))
	case *streams.BatchAppendResp_Success_NoPosition:
		if p == nil || !plainEmpty(p.NoPosition) {
			return 0, false
		}
		n += 2
	default:
		return 0, false
	}
	return n, true
}

func allPositionSize(p *shared.AllStreamPosition) int {
	return sizeVarintField(p.CommitPosition) + sizeVarintField(p.PreparePosition)
}

func (w *writer) appendBatchAppendResp(b []byte, m *streams.BatchAppendResp) []byte {
	if m.CorrelationId != nil {
		b = appendUUID(b, fRespCorrelation, m.CorrelationId)
	}
	s := m.Result.(*streams.BatchAppendResp_Success_).Success
	b = appendLen(b, fRespSuccess, w.sizes[1])
	switch r := s.CurrentRevisionOption.(type) {
	case *streams.BatchAppendResp_Success_CurrentRevision:
		b = protowire.AppendTag(b, fSuccessRevision, protowire.VarintType)
		b = protowire.AppendVarint(b, r.CurrentRevision)
	case *streams.BatchAppendResp_Success_NoStream:
		b = appendLen(b, fSuccessNoStream, 0)
	}
	switch p := s.PositionOption.(type) {
	case *streams.BatchAppendResp_Success_Position:
		b = appendLen(b, fSuccessPosition, allPositionSize(p.Position))
		b = appendVarintField(b, fAllCommit, p.Position.CommitPosition)
		b = appendVarintField(b, fAllPrepare, p.Position.PreparePosition)
	case *streams.BatchAppendResp_Success_NoPosition:
		b = appendLen(b, fSuccessNoPosition, 0)
	}
	if id := m.StreamIdentifier; id != nil {
		b = appendLen(b, fRespStream, w.sizes[2])
		b = appendBytesField(b, fStreamName, id.StreamName)
	}
	return b
}
