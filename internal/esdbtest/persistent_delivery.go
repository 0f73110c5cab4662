package esdbtest

import (
	"encoding/binary"
	"strconv"
	"unicode/utf8"

	"github.com/google/uuid"
	"google.golang.org/protobuf/encoding/protowire"

	"github.com/ditto-replicator/ditto/internal/pbwire"
)

// Deliveries are encoded here straight from the stored records into one
// exactly sized buffer, sent as a pbwire.Raw. Building a persistent.ReadResp
// per delivery (a dozen allocations and a fresh metadata map) and encoding it
// cost about a fifth of the test server's CPU in replication runs.
//
// The bytes are those pbwire's encoder produces for psEventResp's message,
// with the metadata map entries in key order, which is also protobuf's
// deterministic order (tests compare both).
//
// Nothing is cached per record. A delivery carries the positions of the
// record it was read as (the link, if any), so the target of a $> link
// encodes differently through $ce-, $et- and its own stream; and a group
// delivers each record once unless it is retried, so a cache filled on first
// delivery would add a copy and an allocation to the only delivery a
// replication run makes, and hold a second copy of every record.

// Field numbers, from the KurrentDB protos.
const (
	// persistent.ReadResp
	psfRespEvent = 1
	// persistent.ReadResp.ReadEvent
	psfEvent          = 1
	psfLink           = 2
	psfCommitPosition = 3
	psfRetryCount     = 5
	// persistent.ReadResp.ReadEvent.RecordedEvent
	psfRecID       = 1
	psfRecStream   = 2
	psfRecRevision = 3
	psfRecPrepare  = 4
	psfRecCommit   = 5
	psfRecMetadata = 6
	psfRecCustom   = 7
	psfRecData     = 8
	// shared.UUID, shared.UUID.Structured, shared.StreamIdentifier
	psfUUIDStructured = 1
	psfUUIDString     = 2
	psfMost           = 1
	psfLeast          = 2
	psfStreamName     = 3
	// map entries
	psfMapKey   = 1
	psfMapValue = 2
)

// psDelivery encodes the ReadResp of one delivery: the message psEventResp
// builds. ok is false when a record's type is not valid UTF-8, which the
// protobuf runtime refuses to encode: the caller then sends psEventResp's
// message, so that send fails as it always did.
func psDelivery(ev ResolvedRecord, retry int32, stringIDs bool) (raw pbwire.Raw, ok bool) {
	pos := ev.Original().Position
	// Created ticks, formatted once for sizing and writing.
	var evBuf, linkBuf [20]byte
	var evCreated, linkCreated []byte
	var evSize, linkSize int
	n := 1 + protowire.SizeVarint(pos) + 1 + protowire.SizeVarint(uint64(int64(retry)))
	if ev.Event != nil {
		if !utf8.ValidString(ev.Event.Type) {
			return nil, false
		}
		evCreated = psCreated(evBuf[:0], ev.Event)
		evSize = psRecordedSize(ev.Event, pos, stringIDs, len(evCreated))
		n += psLenSize(evSize)
	}
	if ev.Link != nil {
		if !utf8.ValidString(ev.Link.Type) {
			return nil, false
		}
		linkCreated = psCreated(linkBuf[:0], ev.Link)
		linkSize = psRecordedSize(ev.Link, pos, stringIDs, len(linkCreated))
		n += psLenSize(linkSize)
	}
	b := make([]byte, 0, psLenSize(n))
	b = psAppendLen(b, psfRespEvent, n)
	if ev.Event != nil {
		b = psAppendLen(b, psfEvent, evSize)
		b = psAppendRecorded(b, ev.Event, pos, stringIDs, evCreated)
	}
	if ev.Link != nil {
		b = psAppendLen(b, psfLink, linkSize)
		b = psAppendRecorded(b, ev.Link, pos, stringIDs, linkCreated)
	}
	// Both oneofs are set, so written even when zero.
	b = psAppendUvarint(append(b, psTag(psfCommitPosition, protowire.VarintType)), pos)
	b = psAppendUvarint(append(b, psTag(psfRetryCount, protowire.VarintType)), uint64(int64(retry)))
	return b, true
}

// psCreated appends the record's created metadata: .NET ticks since the
// Unix epoch, as psRecorded writes them.
func psCreated(b []byte, r *Record) []byte {
	return strconv.AppendInt(b, r.Created.UnixNano()/100, 10)
}

// psLenSize is the size of a length-delimited field of n bytes (field
// numbers below 16 have one-byte tags).
func psLenSize(n int) int { return 1 + protowire.SizeVarint(uint64(n)) + n }

// psVarintSize is the size of a scalar field; zero values are not written.
func psVarintSize(v uint64) int {
	if v == 0 {
		return 0
	}
	return 1 + protowire.SizeVarint(v)
}

// psBytesSize is the size of a bytes field; empty ones are not written.
func psBytesSize(n int) int {
	if n == 0 {
		return 0
	}
	return psLenSize(n)
}

// psRecordedSize is the size of a RecordedEvent's contents as psRecorded
// builds it, with created ticks of createdLen digits.
func psRecordedSize(r *Record, pos uint64, stringIDs bool, createdLen int) int {
	return psLenSize(psUUIDSize(r.ID, stringIDs)) +
		psLenSize(psBytesSize(len(r.Stream))) +
		psVarintSize(uint64(r.Number)) +
		2*psVarintSize(pos) +
		psEntrySize(len("content-type"), len(r.ContentType())) +
		psEntrySize(len("created"), createdLen) +
		psEntrySize(len("type"), len(r.Type)) +
		psBytesSize(len(r.Metadata)) +
		psBytesSize(len(r.Data))
}

// psEntrySize is the size of a map<string, string> entry field. Both key and
// value are always written, even empty.
func psEntrySize(keyLen, valueLen int) int {
	return psLenSize(psLenSize(keyLen) + psLenSize(valueLen))
}

// The content-type entries of the metadata map, encoded once.
var (
	psJSONEntry   = psAppendEntry(nil, psfRecMetadata, "content-type", (&Record{IsJSON: true}).ContentType())
	psBinaryEntry = psAppendEntry(nil, psfRecMetadata, "content-type", (&Record{}).ContentType())
)

// psAppendEntry appends a map<string, string> entry field.
func psAppendEntry[V string | []byte](b []byte, num protowire.Number, key string, value V) []byte {
	b = psAppendLen(b, num, psLenSize(len(key))+psLenSize(len(value)))
	b = psAppendLen(b, psfMapKey, len(key))
	b = append(b, key...)
	b = psAppendLen(b, psfMapValue, len(value))
	return append(b, value...)
}

// psAppendLen appends the tag and length of a length-delimited field.
func psAppendLen(b []byte, num protowire.Number, n int) []byte {
	return psAppendUvarint(append(b, psTag(num, protowire.BytesType)), uint64(n))
}

func psAppendVarint(b []byte, num protowire.Number, v uint64) []byte {
	if v == 0 {
		return b
	}
	return psAppendUvarint(append(b, psTag(num, protowire.VarintType)), v)
}

// psTag is protowire.EncodeTag for the field numbers below 16 used here:
// one byte.
func psTag(num protowire.Number, typ protowire.Type) byte { return byte(num)<<3 | byte(typ) }

// psAppendUvarint is protowire.AppendVarint with the one-byte case (most
// lengths here) inline; profiles showed the call itself as the top cost.
func psAppendUvarint(b []byte, v uint64) []byte {
	if v < 0x80 {
		return append(b, byte(v))
	}
	return protowire.AppendVarint(b, v)
}

func psAppendBytes(b []byte, num protowire.Number, v []byte) []byte {
	if len(v) == 0 {
		return b
	}
	b = psAppendLen(b, num, len(v))
	return append(b, v...)
}

// psAppendRecorded appends a RecordedEvent's contents (without its tag and
// length) in field order, as pbwire writes psRecorded's message.
func psAppendRecorded(b []byte, r *Record, pos uint64, stringIDs bool, created []byte) []byte {
	b = psAppendLen(b, psfRecID, psUUIDSize(r.ID, stringIDs))
	b = psAppendUUID(b, r.ID, stringIDs)
	b = psAppendLen(b, psfRecStream, psBytesSize(len(r.Stream)))
	if r.Stream != "" {
		b = psAppendLen(b, psfStreamName, len(r.Stream))
		b = append(b, r.Stream...)
	}
	b = psAppendVarint(b, psfRecRevision, uint64(r.Number))
	b = psAppendVarint(b, psfRecPrepare, pos)
	b = psAppendVarint(b, psfRecCommit, pos)
	// The map in key order, as deterministic protobuf writes it.
	if r.IsJSON {
		b = append(b, psJSONEntry...)
	} else {
		b = append(b, psBinaryEntry...)
	}
	b = psAppendEntry(b, psfRecMetadata, "created", created)
	b = psAppendEntry(b, psfRecMetadata, "type", r.Type)
	b = psAppendBytes(b, psfRecCustom, r.Metadata)
	return psAppendBytes(b, psfRecData, r.Data)
}

// psUUIDHalves are the structured form of an id: two big-endian int64s.
func psUUIDHalves(id uuid.UUID) (most, least uint64) {
	return binary.BigEndian.Uint64(id[:8]), binary.BigEndian.Uint64(id[8:])
}

// psUUIDSize is the size of a shared.UUID's contents as psProtoUUID builds
// it.
func psUUIDSize(id uuid.UUID, asString bool) int {
	if asString {
		return psLenSize(36)
	}
	most, least := psUUIDHalves(id)
	return psLenSize(psVarintSize(most) + psVarintSize(least))
}

// psAppendUUID appends a shared.UUID's contents: the structured halves, or
// the hyphenated lower-case string of uuid.UUID.String.
func psAppendUUID(b []byte, id uuid.UUID, asString bool) []byte {
	if asString {
		return appendUUID(psAppendLen(b, psfUUIDString, 36), id)
	}
	most, least := psUUIDHalves(id)
	b = psAppendLen(b, psfUUIDStructured, psVarintSize(most)+psVarintSize(least))
	b = psAppendVarint(b, psfMost, most)
	return psAppendVarint(b, psfLeast, least)
}
