package pbwire

import (
	"errors"
	"unicode/utf8"

	"github.com/EventStore/EventStore-Client-Go/v4/protos/persistent"
	"github.com/google/uuid"
	"google.golang.org/protobuf/encoding/protowire"
)

// Settle is a persistent.ReadReq holding an Ack, or with Nack set a Nack,
// of deliveries' event ids, which the codec encodes straight from the ids
// (in their structured form, as reads ask for them). Acks name every
// delivered event; the generated messages took four allocations per id and
// were walked again by the encoder.
type Settle struct {
	SubscriptionID []byte
	IDs            []uuid.UUID
	Nack           bool
	Action         persistent.ReadReq_Nack_Action
	Reason         string

	content int // the Ack's or Nack's size, found by size
}

var errBadReason = errors.New("pbwire: a nack reason is not valid UTF-8")

func (s *Settle) contentSize() int {
	n := sizeBytesField(len(s.SubscriptionID))
	for _, id := range s.IDs {
		n += sizeField(sizeStructuredID(id))
	}
	if s.Nack {
		n += sizeVarintField(uint64(int64(s.Action))) + sizeBytesField(len(s.Reason))
	}
	return n
}

func (s *Settle) size() (int, error) {
	if s.Nack && !utf8.ValidString(s.Reason) {
		return 0, errBadReason
	}
	s.content = s.contentSize()
	return sizeField(s.content), nil
}

func (s *Settle) append(b []byte) []byte {
	var num protowire.Number = fReadReqAck
	if s.Nack {
		num = fReadReqNack
	}
	b = appendLen(b, num, s.content)
	b = appendBytesField(b, fAckID, s.SubscriptionID)
	for _, id := range s.IDs {
		b = appendStructuredID(b, fAckIDs, id)
	}
	if s.Nack {
		b = appendVarintField(b, fNackAction, uint64(int64(s.Action)))
		if len(s.Reason) > 0 {
			b = append(appendLen(b, fNackReason, len(s.Reason)), s.Reason...)
		}
	}
	return b
}

// AckIDs decodes a persistent.ReadReq holding an Ack whose ids are all in
// the structured form, the shape Settle sends, into the ids. ok is false for
// anything else (a nack, string ids, unknown fields, bad bytes), which the
// caller decodes with the codec as any message.
func AckIDs(b []byte) (ids []uuid.UUID, ok bool) {
	c := cursor{b: b}
	if !c.next() || c.f.num != fReadReqAck || c.f.typ != protowire.BytesType || len(c.b) != 0 {
		return nil, false
	}
	ack := c.f.v
	n := 0 // counted first, to allocate the ids once
	a := cursor{b: ack}
	for a.next() {
		if a.f.typ != protowire.BytesType || (a.f.num != fAckID && a.f.num != fAckIDs) {
			return nil, false
		}
		if a.f.num == fAckIDs {
			n++
		}
	}
	if a.bad {
		return nil, false
	}
	ids = make([]uuid.UUID, 0, n)
	a = cursor{b: ack}
	for a.next() {
		if a.f.num != fAckIDs {
			continue
		}
		var id uuid.UUID
		if !structuredID(a.f.v, &id) {
			return nil, false
		}
		ids = append(ids, id)
	}
	return ids, true
}
