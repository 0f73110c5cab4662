package pbwire

import (
	"encoding/binary"
	"errors"
	"time"
	"unicode/utf8"

	"github.com/EventStore/EventStore-Client-Go/v4/esdb"
	"github.com/google/uuid"
	"google.golang.org/protobuf/encoding/protowire"

	"github.com/ditto-replicator/ditto/sinks"
)

// BatchWrite is one streams.BatchAppendReq of a write, which the codec
// encodes straight from ditto's events. Building the generated messages
// first took a metadata map and four messages per event, walked again by
// the encoder.
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

func (w *BatchWrite) size() (int, error) {
	n := sizeField(sizeStructuredID(w.CorrelationID))
	if w.Options {
		n += sizeField(w.optionsSize())
	}
	for i := range w.Events {
		e := &w.Events[i]
		if !utf8.ValidString(e.Type) {
			return 0, errBadType
		}
		n += sizeField(proposedSize(e))
	}
	if w.Final {
		n += 2
	}
	return n, nil
}

func (w *BatchWrite) append(b []byte) []byte {
	b = appendStructuredID(b, fBatchCorrelation, w.CorrelationID)
	if w.Options {
		b = appendLen(b, fBatchOptions, w.optionsSize())
		b = appendLen(b, fOptStream, sizeBytesField(len(w.Stream)))
		if len(w.Stream) > 0 {
			b = append(appendLen(b, fStreamName, len(w.Stream)), w.Stream...)
		}
		switch e := w.Expected.(type) {
		case esdb.StreamRevision:
			b = protowire.AppendTag(b, fOptStreamPosition, protowire.VarintType)
			b = protowire.AppendVarint(b, e.Value)
		case esdb.NoStream:
			b = appendLen(b, fOptNoStream, 0)
		case esdb.StreamExists:
			b = appendLen(b, fOptStreamExists, 0)
		default:
			b = appendLen(b, fOptAny, 0)
		}
		s, ns := secondsNanos(w.Deadline)
		b = appendSecondsNanos(b, fOptDeadline, s, ns)
	}
	for i := range w.Events {
		e := &w.Events[i]
		b = appendLen(b, fBatchProposed, proposedSize(e))
		b = appendStructuredID(b, fPropID, e.ID)
		ct := contentType(e)
		b = appendLen(b, fPropMetadata, entrySize(mdType, e.Type))
		b = appendEntry(b, mdType, e.Type)
		b = appendLen(b, fPropMetadata, entrySize(mdContentType, ct))
		b = appendEntry(b, mdContentType, ct)
		b = appendBytesField(b, fPropCustomMetadata, e.Metadata)
		b = appendBytesField(b, fPropData, e.Data)
	}
	if w.Final {
		b = protowire.AppendTag(b, fBatchIsFinal, protowire.VarintType)
		b = append(b, 1)
	}
	return b
}

func (w *BatchWrite) optionsSize() int {
	n := sizeField(sizeBytesField(len(w.Stream)))
	switch e := w.Expected.(type) {
	case esdb.StreamRevision:
		n += 1 + protowire.SizeVarint(e.Value)
	default: // an empty message, written even so: it is a oneof's case
		n += 2
	}
	s, ns := secondsNanos(w.Deadline)
	return n + sizeField(sizeSecondsNanos(s, ns))
}

// secondsNanos splits d as google.protobuf.Duration does.
func secondsNanos(d time.Duration) (int64, int32) {
	return int64(d / time.Second), int32(d % time.Second)
}

// contentType is the content type the destination is told for e: JSON or
// binary, as the client's EventData carries it.
func contentType(e *sinks.Event) string {
	if e.ContentType == ctJSON {
		return ctJSON
	}
	return ctBinary
}

func proposedSize(e *sinks.Event) int {
	return sizeField(sizeStructuredID(e.ID)) +
		sizeField(entrySize(mdType, e.Type)) +
		sizeField(entrySize(mdContentType, contentType(e))) +
		sizeBytesField(len(e.Metadata)) + sizeBytesField(len(e.Data))
}

func entrySize(k, v string) int { return sizeField(len(k)) + sizeField(len(v)) }

func appendEntry(b []byte, k, v string) []byte {
	b = append(appendLen(b, fMapKey, len(k)), k...)
	return append(appendLen(b, fMapValue, len(v)), v...)
}

// sizeStructuredID is the size of a shared.UUID holding id in its
// structured form.
func sizeStructuredID(id uuid.UUID) int {
	most, least := halves(id)
	return sizeField(sizeVarintField(most) + sizeVarintField(least))
}

func appendStructuredID(b []byte, num protowire.Number, id uuid.UUID) []byte {
	most, least := halves(id)
	inner := sizeVarintField(most) + sizeVarintField(least)
	b = appendLen(b, num, sizeField(inner))
	b = appendLen(b, fUUIDStructured, inner)
	b = appendVarintField(b, fStructMost, most)
	return appendVarintField(b, fStructLeast, least)
}

func halves(id uuid.UUID) (most, least uint64) {
	return binary.BigEndian.Uint64(id[:8]), binary.BigEndian.Uint64(id[8:])
}

// Field numbers of streams.BatchAppendResp, its Success and
// shared.AllStreamPosition.
const (
	fRespCorrelation = 1
	fRespError       = 2
	fRespSuccess     = 3
	fRespStream      = 4

	fSuccessRevision   = 1
	fSuccessNoStream   = 2
	fSuccessPosition   = 3
	fSuccessNoPosition = 4

	fAllCommit  = 1
	fAllPrepare = 2
)

// BatchAppendSuccess decodes the answer to nearly every write: a
// streams.BatchAppendResp reporting success with the stream's current
// revision, under a structured correlation id. ok is false for anything
// else (a refusal, a success without a revision, a shape it does not
// know), which the caller decodes with protobuf.
func BatchAppendSuccess(b []byte) (id uuid.UUID, revision uint64, ok bool) {
	var seenID, seenSuccess, seenRevision bool
	c := cursor{b: b}
	for c.next() {
		switch {
		case c.f.num == fRespCorrelation && c.f.typ == protowire.BytesType && !seenID:
			seenID = true
			if !structuredID(c.f.v, &id) {
				return id, 0, false
			}
		case c.f.num == fRespSuccess && c.f.typ == protowire.BytesType && !seenSuccess:
			seenSuccess = true
			s := cursor{b: c.f.v}
			for s.next() {
				switch {
				case s.f.num == fSuccessRevision && s.f.typ == protowire.VarintType:
					revision, seenRevision = s.f.x, true
				case s.f.num == 3 || s.f.num == 4: // the position, or that there is none
				default:
					return id, 0, false
				}
			}
			if s.bad {
				return id, 0, false
			}
		case c.f.num >= 4 && c.f.num <= 8: // the request's stream and expected position
		default:
			return id, 0, false
		}
	}
	return id, revision, !c.bad && seenID && seenSuccess && seenRevision
}

// structuredID decodes a shared.UUID that holds only the structured form.
func structuredID(b []byte, id *uuid.UUID) bool {
	c := cursor{b: b}
	if !c.next() || c.f.num != fUUIDStructured || c.f.typ != protowire.BytesType || len(c.b) != 0 {
		return false
	}
	var ok bool
	*id, ok = structuredContents(c.f.v)
	return ok
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
