package pbwire

import (
	"unicode/utf8"
	"unsafe"

	"google.golang.org/protobuf/encoding/protowire"

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

// next consumes one field of b.
func next(b []byte) (field, []byte, error) {
	num, typ, n := protowire.ConsumeTag(b)
	if n < 0 {
		return field{}, nil, errShape
	}
	b = b[n:]
	f := field{num: num, typ: typ}
	switch typ {
	case protowire.VarintType:
		f.x, n = protowire.ConsumeVarint(b)
	case protowire.BytesType:
		f.v, n = protowire.ConsumeBytes(b)
		f.v = f.v[:len(f.v):len(f.v)] // appends to a field must not reach the next
	default:
		return field{}, nil, errShape
	}
	if n < 0 {
		return field{}, nil, errShape
	}
	return f, b[n:], nil
}

// str returns b as a string sharing its memory.
func str(b []byte) (string, error) {
	if len(b) == 0 {
		return "", nil
	}
	if !utf8.Valid(b) {
		return "", errShape
	}
	return unsafe.String(&b[0], len(b)), nil
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
}

func decodeReadResp(b []byte, m *persistent.ReadResp) error {
	m.Reset()
	blk := new(readRespBlock)
	seen := false
	for len(b) > 0 {
		f, rest, err := next(b)
		if err != nil {
			return err
		}
		b = rest
		if f.num != fReadRespEvent || f.typ != protowire.BytesType || seen {
			return errShape
		}
		seen = true
		if err := decodeReadEvent(f.v, blk); err != nil {
			return err
		}
	}
	if !seen {
		return errShape
	}
	blk.content.Event = &blk.event
	m.Content = &blk.content
	return nil
}

func decodeReadEvent(b []byte, blk *readRespBlock) error {
	e := &blk.event
	for len(b) > 0 {
		f, rest, err := next(b)
		if err != nil {
			return err
		}
		b = rest
		switch {
		case f.typ == protowire.BytesType && (f.num == fReadEventEvent || f.num == fReadEventLink):
			slot, rb := &e.Event, &blk.rec[0]
			if f.num == fReadEventLink {
				slot, rb = &e.Link, &blk.rec[1]
			}
			if *slot != nil {
				return errShape
			}
			if err := decodeRecorded(f.v, rb); err != nil {
				return err
			}
			*slot = &rb.rec
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
	}
	return nil
}

func decodeRecorded(b []byte, rb *recordedBlock) error {
	r := &rb.rec
	for len(b) > 0 {
		f, rest, err := next(b)
		if err != nil {
			return err
		}
		b = rest
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
			if r.Id != nil {
				return errShape
			}
			if r.Id, err = decodeUUID(f.v, &rb.uuidBlock); err != nil {
				return err
			}
		case f.num == fRecStream:
			if r.StreamIdentifier != nil {
				return errShape
			}
			if err := decodeStreamIdentifier(f.v, &rb.stream); err != nil {
				return err
			}
			r.StreamIdentifier = &rb.stream
		case f.num == fRecMetadata:
			if r.Metadata == nil {
				r.Metadata = make(map[string]string, 4)
			}
			if err := decodeMapEntry(f.v, r.Metadata); err != nil {
				return err
			}
		case f.num == fRecCustomMetadata:
			r.CustomMetadata = f.v
		case f.num == fRecData:
			r.Data = f.v
		default:
			return errShape
		}
	}
	return nil
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
	seen := false
	for len(b) > 0 {
		f, rest, err := next(b)
		if err != nil {
			return err
		}
		b = rest
		if f.num != fAppendProposed || f.typ != protowire.BytesType || seen {
			return errShape
		}
		seen = true
		if err := decodeProposed(f.v, blk); err != nil {
			return err
		}
	}
	if !seen {
		return errShape
	}
	blk.content.ProposedMessage = &blk.proposed
	m.Content = &blk.content
	return nil
}

func decodeProposed(b []byte, blk *appendReqBlock) error {
	p := &blk.proposed
	for len(b) > 0 {
		f, rest, err := next(b)
		if err != nil {
			return err
		}
		b = rest
		if f.typ != protowire.BytesType {
			return errShape
		}
		switch f.num {
		case fPropID:
			if p.Id != nil {
				return errShape
			}
			if p.Id, err = decodeUUID(f.v, &blk.uuid); err != nil {
				return err
			}
		case fPropMetadata:
			if p.Metadata == nil {
				p.Metadata = make(map[string]string, 4)
			}
			if err := decodeMapEntry(f.v, p.Metadata); err != nil {
				return err
			}
		case fPropCustomMetadata:
			p.CustomMetadata = f.v
		case fPropData:
			p.Data = f.v
		default:
			return errShape
		}
	}
	return nil
}

// decodeUUID decodes into blk, which holds the messages of the structured form.
func decodeUUID(b []byte, blk *uuidBlock) (*shared.UUID, error) {
	u := &blk.uuid
	for len(b) > 0 {
		f, rest, err := next(b)
		if err != nil {
			return nil, err
		}
		b = rest
		switch {
		case f.typ == protowire.BytesType && f.num == fUUIDStructured && u.Value == nil:
			if err := decodeStructured(f.v, &blk.struct_); err != nil {
				return nil, err
			}
			blk.value.Structured = &blk.struct_
			u.Value = &blk.value
		case f.typ == protowire.BytesType && f.num == fUUIDString:
			v, err := str(f.v)
			if err != nil {
				return nil, err
			}
			u.Value = &shared.UUID_String_{String_: v}
		default:
			return nil, errShape
		}
	}
	return u, nil
}

func decodeStructured(b []byte, s *shared.UUID_Structured) error {
	for len(b) > 0 {
		f, rest, err := next(b)
		if err != nil {
			return err
		}
		b = rest
		switch {
		case f.typ == protowire.VarintType && f.num == fStructMost:
			s.MostSignificantBits = int64(f.x)
		case f.typ == protowire.VarintType && f.num == fStructLeast:
			s.LeastSignificantBits = int64(f.x)
		default:
			return errShape
		}
	}
	return nil
}

func decodeStreamIdentifier(b []byte, s *shared.StreamIdentifier) error {
	for len(b) > 0 {
		f, rest, err := next(b)
		if err != nil {
			return err
		}
		b = rest
		if f.typ != protowire.BytesType || f.num != fStreamName {
			return errShape
		}
		s.StreamName = f.v
	}
	return nil
}

// decodeMapEntry adds one map<string, string> entry; as in protobuf, a later
// entry for the same key wins.
func decodeMapEntry(b []byte, m map[string]string) error {
	var k, v string
	for len(b) > 0 {
		f, rest, err := next(b)
		if err != nil {
			return err
		}
		b = rest
		if f.typ != protowire.BytesType || (f.num != fMapKey && f.num != fMapValue) {
			return errShape
		}
		s, err := str(f.v)
		if err != nil {
			return err
		}
		if f.num == fMapKey {
			k = s
		} else {
			v = s
		}
	}
	m[k] = v
	return nil
}
