package pbwire

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
	"time"
	"unicode/utf8"
	"unsafe"

	"github.com/EventStore/EventStore-Client-Go/v4/esdb"
	"github.com/EventStore/EventStore-Client-Go/v4/protos/persistent"
	"github.com/google/uuid"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
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

// errShape means a delivery is valid protobuf (or not) in a shape the hand
// decoder leaves to the protobuf runtime.
var errShape = errors.New("pbwire: shape not handled")

// ReadMessage is one message of a persistent-subscription read, decoded for
// a consumer: an event with its retry count, or the confirmation that opens
// the read.
type ReadMessage struct {
	Event          *esdb.ResolvedEvent
	RetryCount     int
	SubscriptionID string // set on the confirmation
}

// Metadata keys the server puts on every record.
const (
	mdType        = "type"
	mdContentType = "content-type"
	mdCreated     = "created"
)

// DecodeRead decodes a persistent.ReadResp, received as Raw, straight into
// the client's event types: the values are those the client's own
// subscription gives after decoding the message with protobuf, but without
// the intermediate messages and metadata maps, in one allocation. Strings
// and byte slices point into b, which must not change afterwards.
//
// Two things differ from the client, on purpose: RecordedEvent.SystemMetadata
// stays nil (only the type, content type and creation time are read from
// it), and a creation time that is not a number gives the zero time where
// the client exits the process.
func DecodeRead(b []byte) (ReadMessage, error) {
	if m, err := decodeReadFast(b); err == nil {
		return m, nil
	}
	// A shape the fast path leaves to protobuf (unknown fields, a message
	// sent twice), or broken bytes, which protobuf reports.
	var resp persistent.ReadResp
	if err := proto.Unmarshal(b, &resp); err != nil {
		return ReadMessage{}, fmt.Errorf("decoding a persistent subscription message: %w", err)
	}
	return fromReadResp(&resp), nil
}

// fromReadResp converts a decoded message as the client does.
func fromReadResp(resp *persistent.ReadResp) ReadMessage {
	if c := resp.GetSubscriptionConfirmation(); c != nil {
		return ReadMessage{SubscriptionID: c.GetSubscriptionId()}
	}
	e := resp.GetEvent()
	if e == nil {
		return ReadMessage{}
	}
	ev := &esdb.ResolvedEvent{}
	if p, ok := e.GetPosition().(*persistent.ReadResp_ReadEvent_CommitPosition); ok {
		c := p.CommitPosition
		ev.Commit = &c
	}
	conv := func(r *persistent.ReadResp_ReadEvent_RecordedEvent) *esdb.RecordedEvent {
		if r == nil {
			return nil
		}
		out := &esdb.RecordedEvent{
			EventType:    r.GetMetadata()[mdType],
			ContentType:  r.GetMetadata()[mdContentType],
			StreamID:     string(r.GetStreamIdentifier().GetStreamName()),
			EventNumber:  r.GetStreamRevision(),
			CreatedDate:  created(r.GetMetadata()[mdCreated]),
			Position:     esdb.Position{Commit: r.GetCommitPosition(), Prepare: r.GetPreparePosition()},
			Data:         r.GetData(),
			UserMetadata: r.GetCustomMetadata(),
		}
		if s := r.GetId().GetStructured(); s != nil {
			out.EventID = structuredUUID(uint64(s.GetMostSignificantBits()), uint64(s.GetLeastSignificantBits()))
		} else {
			out.EventID = stringUUID(r.GetId().GetString_())
		}
		return out
	}
	ev.Event, ev.Link = conv(e.GetEvent()), conv(e.GetLink())
	return ReadMessage{Event: ev, RetryCount: int(e.GetRetryCount())}
}

// created reads the server's creation time: .NET ticks (100 ns) since the
// Unix epoch, in UTC.
func created(s string) time.Time {
	t, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return time.Time{}
	}
	return time.Unix(0, t*100).UTC()
}

func structuredUUID(most, least uint64) uuid.UUID {
	var id uuid.UUID
	binary.BigEndian.PutUint64(id[:8], most)
	binary.BigEndian.PutUint64(id[8:], least)
	return id
}

// stringUUID parses an id sent as a string; the client gives the nil UUID
// for one it cannot parse.
func stringUUID(s string) uuid.UUID {
	id, err := uuid.Parse(s)
	if err != nil {
		return uuid.Nil
	}
	return id
}

// readBlock holds a decoded event and its records: one allocation.
type readBlock struct {
	ev     esdb.ResolvedEvent
	rec    [2]esdb.RecordedEvent
	commit uint64
}

// decodeReadFast decodes the shapes servers send; anything else returns
// errShape.
func decodeReadFast(b []byte) (ReadMessage, error) {
	f, rest, err := next(b)
	if err != nil || len(rest) > 0 || f.typ != protowire.BytesType {
		return ReadMessage{}, errShape
	}
	switch f.num {
	case fReadRespEvent:
		return decodeReadEventFast(f.v)
	case fReadRespConfirmation:
		var id string
		err := fields(f.v, func(f field) error {
			if f.num != fConfirmationID || f.typ != protowire.BytesType {
				return errShape
			}
			var err error
			id, err = str(f.v)
			return err
		})
		return ReadMessage{SubscriptionID: id}, err
	}
	return ReadMessage{}, errShape
}

func decodeReadEventFast(b []byte) (ReadMessage, error) {
	blk := new(readBlock)
	var m ReadMessage
	var seen [2]bool
	c := cursor{b: b}
	for c.next() {
		f := &c.f
		switch {
		case f.typ == protowire.BytesType && (f.num == fReadEventEvent || f.num == fReadEventLink):
			i, slot := 0, &blk.ev.Event
			if f.num == fReadEventLink {
				i, slot = 1, &blk.ev.Link
			}
			if seen[i] {
				return m, errShape // protobuf merges the two
			}
			seen[i] = true
			*slot = &blk.rec[i]
			if err := decodeRecordedFast(f.v, &blk.rec[i]); err != nil {
				return m, err
			}
		case f.typ == protowire.VarintType && f.num == fReadEventCommitPosition:
			blk.commit = f.x
			blk.ev.Commit = &blk.commit
		case f.typ == protowire.BytesType && f.num == fReadEventNoPosition && len(f.v) == 0:
			blk.ev.Commit = nil
		case f.typ == protowire.VarintType && f.num == fReadEventRetryCount:
			m.RetryCount = int(int32(f.x))
		case f.typ == protowire.BytesType && f.num == fReadEventNoRetryCount && len(f.v) == 0:
			m.RetryCount = 0
		default:
			return m, errShape
		}
	}
	if c.bad {
		return m, errShape
	}
	m.Event = &blk.ev
	return m, nil
}

func decodeRecordedFast(b []byte, r *esdb.RecordedEvent) error {
	seenID, seenStream := false, false
	c := cursor{b: b}
	for c.next() {
		f := &c.f
		switch {
		case f.typ == protowire.VarintType && f.num == fRecStreamRevision:
			r.EventNumber = f.x
		case f.typ == protowire.VarintType && f.num == fRecPreparePosition:
			r.Position.Prepare = f.x
		case f.typ == protowire.VarintType && f.num == fRecCommitPosition:
			r.Position.Commit = f.x
		case f.typ != protowire.BytesType:
			return errShape
		case f.num == fRecID:
			if seenID {
				return errShape
			}
			seenID = true
			if err := decodeEventID(f.v, &r.EventID); err != nil {
				return err
			}
		case f.num == fRecStream:
			if seenStream {
				return errShape
			}
			seenStream = true
			s := cursor{b: f.v}
			for s.next() {
				if s.f.typ != protowire.BytesType || s.f.num != fStreamName {
					return errShape
				}
				r.StreamID = bytesString(s.f.v)
			}
			if s.bad {
				return errShape
			}
		case f.num == fRecMetadata:
			if err := metadataEntry(f.v, r); err != nil {
				return err
			}
		case f.num == fRecCustomMetadata:
			r.UserMetadata = f.v
		case f.num == fRecData:
			r.Data = f.v
		default:
			return errShape
		}
	}
	if c.bad {
		return errShape
	}
	return nil
}

// decodeEventID decodes a UUID message, structured or string; as in the
// client, the string form that does not parse is the nil UUID.
func decodeEventID(b []byte, id *uuid.UUID) error {
	seenStructured := false
	c := cursor{b: b}
	for c.next() {
		switch {
		case c.f.typ == protowire.BytesType && c.f.num == fUUIDStructured && !seenStructured:
			seenStructured = true
			v, ok := structuredContents(c.f.v)
			if !ok {
				return errShape
			}
			*id = v
		case c.f.typ == protowire.BytesType && c.f.num == fUUIDString:
			seenStructured = false // a later structured form replaces it
			v, err := str(c.f.v)
			if err != nil {
				return err
			}
			*id = stringUUID(v)
		default:
			return errShape
		}
	}
	if c.bad {
		return errShape
	}
	return nil
}

// metadataEntry decodes one entry of a record's metadata into r. The keys
// the server always sends are recognised before any UTF-8 check (they are
// ASCII), and a creation time of plain digits is read without one.
func metadataEntry(b []byte, r *esdb.RecordedEvent) error {
	k, v, err := entryBytes(b)
	if err != nil {
		return err
	}
	switch string(k) {
	case mdCreated:
		if t, ok := digits(v); ok {
			r.CreatedDate = time.Unix(0, t*100).UTC()
			return nil
		}
	case mdType, mdContentType:
	default:
		if !utf8.Valid(k) {
			return errShape
		}
	}
	s, err := str(v)
	if err != nil {
		return err
	}
	switch string(k) {
	case mdType:
		r.EventType = s
	case mdContentType:
		r.ContentType = s
	case mdCreated:
		r.CreatedDate = created(s)
	}
	return nil
}

// digits parses b as a decimal number of 1 to 18 digits, which cannot
// overflow; ok is false for anything else.
func digits(b []byte) (n int64, ok bool) {
	if len(b) == 0 || len(b) > 18 {
		return 0, false
	}
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int64(c-'0')
	}
	return n, true
}

// mapEntry decodes one map<string, string> entry.
func mapEntry(b []byte) (k, v string, err error) {
	kb, vb, err := entryBytes(b)
	if err != nil {
		return "", "", err
	}
	if k, err = str(kb); err != nil {
		return "", "", err
	}
	if v, err = str(vb); err != nil {
		return "", "", err
	}
	return k, v, nil
}

// The tags of a map entry's key and value, both length-delimited.
const (
	entryKeyTag   = fMapKey<<3 | byte(protowire.BytesType)
	entryValueTag = fMapValue<<3 | byte(protowire.BytesType)
)

// entryBytes walks one map<string, string> entry and returns its key and
// value, not yet checked as UTF-8. A key or value sent twice (protobuf
// keeps the last, after checking both) is left to protobuf.
func entryBytes(b []byte) (k, v []byte, err error) {
	// The shape every server sends, the key then the value, each shorter
	// than 128 bytes, is read in place: it is six of a delivery's fields.
	if len(b) >= 4 && b[0] == entryKeyTag && b[1] < 0x80 {
		kEnd := 2 + int(b[1])
		if kEnd+2 <= len(b) && b[kEnd] == entryValueTag && b[kEnd+1] < 0x80 && kEnd+2+int(b[kEnd+1]) == len(b) {
			return b[2:kEnd:kEnd], b[kEnd+2 : len(b) : len(b)], nil
		}
	}
	var seen [2]bool
	c := cursor{b: b}
	for c.next() {
		if c.f.typ != protowire.BytesType || (c.f.num != fMapKey && c.f.num != fMapValue) || seen[c.f.num-fMapKey] {
			return nil, nil, errShape
		}
		seen[c.f.num-fMapKey] = true
		if c.f.num == fMapKey {
			k = c.f.v
		} else {
			v = c.f.v
		}
	}
	if c.bad {
		return nil, nil, errShape
	}
	return k, v, nil
}

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

// structuredContents decodes the contents of a shared.UUID.Structured.
func structuredContents(b []byte) (uuid.UUID, bool) {
	var half [2]uint64
	s := cursor{b: b}
	for s.next() {
		if s.f.typ != protowire.VarintType || (s.f.num != fStructMost && s.f.num != fStructLeast) {
			return uuid.Nil, false
		}
		half[s.f.num-fStructMost] = s.f.x
	}
	if s.bad {
		return uuid.Nil, false
	}
	return structuredUUID(half[0], half[1]), true
}
