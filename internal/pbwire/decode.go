package pbwire

import (
	"unicode/utf8"
	"unsafe"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/EventStore/EventStore-Client-Go/v4/protos/persistent"
	"github.com/EventStore/EventStore-Client-Go/v4/protos/shared"
	"github.com/EventStore/EventStore-Client-Go/v4/protos/streams"
)

// The decoders read from a buffer the codec owns and never writes again, so
// strings and byte slices point into it. Any field they do not know, a
// repeated singular message (which protobuf merges), or invalid UTF-8 in a
// string returns errShape and the protobuf runtime decodes the message.

// field reads one tag and its value: v is the payload of a length-delimited
// field, x the value of a varint.
type field struct {
	num protowire.Number
	typ protowire.Type
	v   []byte
	x   uint64
}

// cursor walks the fields of a message, one at a time in f. Tags of one
// byte (field numbers below 16, all the hot messages use) and values and
// lengths of one byte are read inline; anything else goes through protowire
// or, for longer tags, ends the walk as bad, leaving the message to
// protobuf. Looping on it costs less than a call to next per field, which
// returns the field by value.
type cursor struct {
	b   []byte
	f   field
	bad bool
}

// next moves to the next field; false at the end or when bad.
func (c *cursor) next() bool {
	if len(c.b) == 0 {
		return false
	}
	if c.b[0] >= 0x80 || c.b[0] < 8 {
		c.bad = true
		return false
	}
	c.f.num, c.f.typ = protowire.Number(c.b[0]>>3), protowire.Type(c.b[0]&7)
	b := c.b[1:]
	x, n := uint64(0), 1
	if len(b) > 0 && b[0] < 0x80 {
		x = uint64(b[0])
	} else if x, n = protowire.ConsumeVarint(b); n < 0 {
		c.bad = true
		return false
	}
	switch c.f.typ {
	case protowire.VarintType:
		c.f.x, c.b = x, b[n:]
		return true
	case protowire.BytesType:
		if x > uint64(len(b)-n) {
			break
		}
		end := n + int(x)
		c.f.v, c.b = b[n:end:end], b[end:] // appends to a field must not reach the next
		return true
	}
	c.bad = true
	return false
}

// next consumes one field of b.
func next(b []byte) (field, []byte, error) {
	c := cursor{b: b}
	if !c.next() {
		return field{}, nil, errShape
	}
	return c.f, c.b, nil
}

// fields calls fn for each field of b in order, stopping at the first error.
func fields(b []byte, fn func(field) error) error {
	for len(b) > 0 {
		f, rest, err := next(b)
		if err != nil {
			return err
		}
		if err := fn(f); err != nil {
			return err
		}
		b = rest
	}
	return nil
}

// single decodes a message whose only field is the sub-message num, present
// exactly once (the oneof case the hand decoders handle).
func single(b []byte, num protowire.Number, decode func([]byte) error) error {
	seen := false
	err := fields(b, func(f field) error {
		if f.num != num || f.typ != protowire.BytesType || seen {
			return errShape
		}
		seen = true
		return decode(f.v)
	})
	if err == nil && !seen {
		return errShape
	}
	return err
}

// str returns b as a string sharing its memory.
func str(b []byte) (string, error) {
	if len(b) == 0 {
		return "", nil
	}
	if !utf8.Valid(b) {
		return "", errShape
	}
	return bytesString(b), nil
}

// bytesString returns b as a string sharing its memory, as it is (a bytes
// field that the client turns into a string without checking it).
func bytesString(b []byte) string {
	if len(b) == 0 {
		return ""
	}
	return unsafe.String(&b[0], len(b))
}

// readRespBlock holds every message of a typical delivery, so that decoding
// one takes a single allocation for all of them.
type readRespBlock struct {
	content persistent.ReadResp_Event
	event   persistent.ReadResp_ReadEvent
	rec     [2]recordedBlock
	count   persistent.ReadResp_ReadEvent_RetryCount
}

type recordedBlock struct {
	rec       persistent.ReadResp_ReadEvent_RecordedEvent
	uuidBlock uuidBlock
	stream    shared.StreamIdentifier
}

type uuidBlock struct {
	uuid    shared.UUID
	value   shared.UUID_Structured_
	struct_ shared.UUID_Structured
	str     shared.UUID_String_
}

func decodeReadResp(b []byte, m *persistent.ReadResp) error {
	m.Reset()
	blk := new(readRespBlock)
	if err := single(b, fReadRespEvent, func(v []byte) error { return decodeReadEvent(v, blk) }); err != nil {
		return err
	}
	blk.content.Event = &blk.event
	m.Content = &blk.content
	return nil
}

func decodeReadEvent(b []byte, blk *readRespBlock) error {
	e := &blk.event
	return fields(b, func(f field) error {
		switch {
		case f.typ == protowire.BytesType && (f.num == fReadEventEvent || f.num == fReadEventLink):
			slot, rb := &e.Event, &blk.rec[0]
			if f.num == fReadEventLink {
				slot, rb = &e.Link, &blk.rec[1]
			}
			if *slot != nil {
				return errShape
			}
			*slot = &rb.rec
			return decodeRecorded(f.v, rb)
		case f.typ == protowire.VarintType && f.num == fReadEventCommitPosition:
			// Apart: the client keeps a pointer to the position, which
			// would keep the whole block alive while the event is in flight.
			e.Position = &persistent.ReadResp_ReadEvent_CommitPosition{CommitPosition: f.x}
		case f.typ == protowire.BytesType && f.num == fReadEventNoPosition && len(f.v) == 0:
			e.Position = &persistent.ReadResp_ReadEvent_NoPosition{NoPosition: &shared.Empty{}}
		case f.typ == protowire.VarintType && f.num == fReadEventRetryCount:
			blk.count.RetryCount = int32(f.x)
			e.Count = &blk.count
		case f.typ == protowire.BytesType && f.num == fReadEventNoRetryCount && len(f.v) == 0:
			e.Count = &persistent.ReadResp_ReadEvent_NoRetryCount{NoRetryCount: &shared.Empty{}}
		default:
			return errShape
		}
		return nil
	})
}

func decodeRecorded(b []byte, rb *recordedBlock) error {
	r := &rb.rec
	return fields(b, func(f field) error {
		switch {
		case f.typ == protowire.VarintType && f.num == fRecStreamRevision:
			r.StreamRevision = f.x
		case f.typ == protowire.VarintType && f.num == fRecPreparePosition:
			r.PreparePosition = f.x
		case f.typ == protowire.VarintType && f.num == fRecCommitPosition:
			r.CommitPosition = f.x
		case f.typ != protowire.BytesType:
			return errShape
		case f.num == fRecID:
			return decodeID(f.v, &r.Id, &rb.uuidBlock)
		case f.num == fRecStream:
			if r.StreamIdentifier != nil {
				return errShape
			}
			r.StreamIdentifier = &rb.stream
			return decodeStreamIdentifier(f.v, &rb.stream)
		case f.num == fRecMetadata:
			return decodeMapEntry(f.v, &r.Metadata)
		case f.num == fRecCustomMetadata:
			r.CustomMetadata = f.v
		case f.num == fRecData:
			r.Data = f.v
		default:
			return errShape
		}
		return nil
	})
}

// appendReqBlock holds every message of a proposed event: one allocation.
type appendReqBlock struct {
	content  streams.AppendReq_ProposedMessage_
	proposed streams.AppendReq_ProposedMessage
	uuid     uuidBlock
}

func decodeAppendReq(b []byte, m *streams.AppendReq) error {
	m.Reset()
	blk := new(appendReqBlock)
	p := &blk.proposed
	if err := single(b, fAppendProposed, func(v []byte) error {
		return decodeProposed(v, &p.Id, &p.Metadata, &p.CustomMetadata, &p.Data, &blk.uuid)
	}); err != nil {
		return err
	}
	blk.content.ProposedMessage = p
	m.Content = &blk.content
	return nil
}

// decodeProposed decodes a proposed message into its fields, which
// streams.AppendReq and streams.BatchAppendReq declare alike.
func decodeProposed(b []byte, id **shared.UUID, meta *map[string]string, custom, data *[]byte, u *uuidBlock) error {
	return fields(b, func(f field) error {
		if f.typ != protowire.BytesType {
			return errShape
		}
		switch f.num {
		case fPropID:
			return decodeID(f.v, id, u)
		case fPropMetadata:
			return decodeMapEntry(f.v, meta)
		case fPropCustomMetadata:
			*custom = f.v
		case fPropData:
			*data = f.v
		default:
			return errShape
		}
		return nil
	})
}

// count returns how many times the length-delimited field num occurs in b,
// so that the messages of a repeated field can be allocated at once.
func count(b []byte, num protowire.Number) (int, error) {
	n := 0
	for len(b) > 0 {
		f, rest, err := next(b)
		if err != nil {
			return 0, err
		}
		if f.num == num && f.typ == protowire.BytesType {
			n++
		}
		b = rest
	}
	return n, nil
}

// batchAppendBlock holds every message of a BatchAppendReq but its proposed
// messages, which take two arrays sized by a first pass: three allocations
// (and the metadata maps) whatever the number of events.
type batchAppendBlock struct {
	corr         uuidBlock
	options      streams.BatchAppendReq_Options
	stream       shared.StreamIdentifier
	position     streams.BatchAppendReq_Options_StreamPosition
	noStream     streams.BatchAppendReq_Options_NoStream
	any          streams.BatchAppendReq_Options_Any
	streamExists streams.BatchAppendReq_Options_StreamExists
	empty        emptypb.Empty
	timestamp    streams.BatchAppendReq_Options_Deadline_21_10_0
	ts           timestamppb.Timestamp
	deadline     streams.BatchAppendReq_Options_Deadline
	duration     durationpb.Duration
}

type proposedBlock struct {
	msg  streams.BatchAppendReq_ProposedMessage
	uuid uuidBlock
}

func decodeBatchAppendReq(b []byte, m *streams.BatchAppendReq) error {
	m.Reset()
	n, err := count(b, fBatchProposed)
	if err != nil {
		return err
	}
	blk := new(batchAppendBlock)
	var msgs []*streams.BatchAppendReq_ProposedMessage
	var props []proposedBlock
	if n > 0 {
		msgs = make([]*streams.BatchAppendReq_ProposedMessage, n)
		props = make([]proposedBlock, n)
	}
	i := 0
	err = fields(b, func(f field) error {
		switch {
		case f.typ == protowire.VarintType && f.num == fBatchIsFinal:
			m.IsFinal = f.x != 0
		case f.typ != protowire.BytesType:
			return errShape
		case f.num == fBatchProposed:
			pb := &props[i]
			p := &pb.msg
			msgs[i] = p
			i++
			return decodeProposed(f.v, &p.Id, &p.Metadata, &p.CustomMetadata, &p.Data, &pb.uuid)
		case f.num == fBatchCorrelation:
			return decodeID(f.v, &m.CorrelationId, &blk.corr)
		case f.num == fBatchOptions:
			if m.Options != nil {
				return errShape // protobuf merges them
			}
			m.Options = &blk.options
			return decodeBatchOptions(f.v, blk)
		default:
			return errShape
		}
		return nil
	})
	m.ProposedMessages = msgs
	return err
}

// decodeBatchOptions decodes the options of a BatchAppendReq. As in
// protobuf, the last case of a oneof wins; a message case seen twice, which
// protobuf merges, is left to it (but for an Empty, where merging changes
// nothing).
func decodeBatchOptions(b []byte, blk *batchAppendBlock) error {
	o := &blk.options
	return fields(b, func(f field) error {
		switch {
		case f.typ == protowire.VarintType && f.num == fOptStreamPosition:
			blk.position.StreamPosition = f.x
			o.ExpectedStreamPosition = &blk.position
		case f.typ != protowire.BytesType:
			return errShape
		case f.num == fOptStream:
			if o.StreamIdentifier != nil {
				return errShape
			}
			o.StreamIdentifier = &blk.stream
			return decodeStreamIdentifier(f.v, &blk.stream)
		case f.num == fOptNoStream && len(f.v) == 0:
			blk.noStream.NoStream = &blk.empty
			o.ExpectedStreamPosition = &blk.noStream
		case f.num == fOptAny && len(f.v) == 0:
			blk.any.Any = &blk.empty
			o.ExpectedStreamPosition = &blk.any
		case f.num == fOptStreamExists && len(f.v) == 0:
			blk.streamExists.StreamExists = &blk.empty
			o.ExpectedStreamPosition = &blk.streamExists
		case f.num == fOptDeadline21100:
			if blk.timestamp.Deadline_21_10_0 != nil {
				return errShape // merged, or a fresh one where the block holds the first
			}
			blk.timestamp.Deadline_21_10_0 = &blk.ts
			o.DeadlineOption = &blk.timestamp
			return decodeSecondsNanos(f.v, &blk.ts.Seconds, &blk.ts.Nanos)
		case f.num == fOptDeadline:
			if blk.deadline.Deadline != nil {
				return errShape
			}
			blk.deadline.Deadline = &blk.duration
			o.DeadlineOption = &blk.deadline
			return decodeSecondsNanos(f.v, &blk.duration.Seconds, &blk.duration.Nanos)
		default:
			return errShape
		}
		return nil
	})
}

// decodeSecondsNanos decodes a Timestamp or a Duration, which share a layout.
func decodeSecondsNanos(b []byte, s *int64, n *int32) error {
	return fields(b, func(f field) error {
		switch {
		case f.typ == protowire.VarintType && f.num == fSeconds:
			*s = int64(f.x)
		case f.typ == protowire.VarintType && f.num == fNanos:
			*n = int32(f.x)
		default:
			return errShape
		}
		return nil
	})
}

// ackBlock and nackBlock hold the messages of a ReadReq but its ids, which
// take two arrays sized by a first pass.
type ackBlock struct {
	content persistent.ReadReq_Ack_
	ack     persistent.ReadReq_Ack
}

type nackBlock struct {
	content persistent.ReadReq_Nack_
	nack    persistent.ReadReq_Nack
}

// decodeReadReq decodes a ReadReq holding one ack or one nack.
func decodeReadReq(b []byte, m *persistent.ReadReq) error {
	m.Reset()
	f, rest, err := next(b)
	if err != nil || len(rest) > 0 || f.typ != protowire.BytesType {
		return errShape
	}
	switch f.num {
	case fReadReqAck:
		blk := new(ackBlock)
		a := &blk.ack
		if err := decodeAck(f.v, &a.Id, &a.Ids, nil, nil); err != nil {
			return err
		}
		blk.content.Ack = a
		m.Content = &blk.content
		return nil
	case fReadReqNack:
		blk := new(nackBlock)
		a := &blk.nack
		if err := decodeAck(f.v, &a.Id, &a.Ids, &a.Action, &a.Reason); err != nil {
			return err
		}
		blk.content.Nack = a
		m.Content = &blk.content
		return nil
	}
	return errShape
}

// decodeAck decodes the fields of an Ack, or with action and reason those of
// a Nack.
func decodeAck(b []byte, id *[]byte, ids *[]*shared.UUID, action *persistent.ReadReq_Nack_Action, reason *string) error {
	n, err := count(b, fAckIDs)
	if err != nil {
		return err
	}
	var us []*shared.UUID
	var blks []uuidBlock
	if n > 0 {
		us = make([]*shared.UUID, n)
		blks = make([]uuidBlock, n)
	}
	i := 0
	err = fields(b, func(f field) error {
		switch {
		case f.typ == protowire.BytesType && f.num == fAckIDs:
			i++
			return decodeID(f.v, &us[i-1], &blks[i-1])
		case f.typ == protowire.BytesType && f.num == fAckID:
			*id = f.v
		case action != nil && f.typ == protowire.VarintType && f.num == fNackAction:
			*action = persistent.ReadReq_Nack_Action(int32(f.x))
		case reason != nil && f.typ == protowire.BytesType && f.num == fNackReason:
			s, err := str(f.v)
			*reason = s
			return err
		default:
			return errShape
		}
		return nil
	})
	*ids = us
	return err
}

// decodeID decodes an event id into *slot, using blk for the messages of the
// structured form; a second id is left to protobuf, which merges them.
func decodeID(b []byte, slot **shared.UUID, blk *uuidBlock) error {
	if *slot != nil {
		return errShape
	}
	u := &blk.uuid
	*slot = u
	return fields(b, func(f field) error {
		switch {
		case f.typ == protowire.BytesType && f.num == fUUIDStructured && u.Value == nil:
			blk.value.Structured = &blk.struct_
			u.Value = &blk.value
			return decodeStructured(f.v, &blk.struct_)
		case f.typ == protowire.BytesType && f.num == fUUIDString:
			v, err := str(f.v)
			blk.str.String_ = v
			u.Value = &blk.str
			return err
		}
		return errShape
	})
}

func decodeStructured(b []byte, s *shared.UUID_Structured) error {
	return fields(b, func(f field) error {
		switch {
		case f.typ == protowire.VarintType && f.num == fStructMost:
			s.MostSignificantBits = int64(f.x)
		case f.typ == protowire.VarintType && f.num == fStructLeast:
			s.LeastSignificantBits = int64(f.x)
		default:
			return errShape
		}
		return nil
	})
}

func decodeStreamIdentifier(b []byte, s *shared.StreamIdentifier) error {
	return fields(b, func(f field) error {
		if f.typ != protowire.BytesType || f.num != fStreamName {
			return errShape
		}
		s.StreamName = f.v
		return nil
	})
}

// decodeMapEntry adds one map<string, string> entry to *m, making the map on
// the first; as in protobuf, a later entry for the same key wins.
func decodeMapEntry(b []byte, m *map[string]string) error {
	k, v, err := mapEntry(b)
	if err != nil {
		return err
	}
	if *m == nil {
		*m = make(map[string]string, 4)
	}
	(*m)[k] = v
	return nil
}
