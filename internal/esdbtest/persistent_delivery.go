package esdbtest

import (
	"encoding/binary"
	"strconv"
	"sync"
	"unicode/utf8"
	"unsafe"

	"github.com/google/uuid"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"

	"github.com/ditto-replicator/ditto/internal/pbwire"
)

// Deliveries are encoded here straight from the stored records into one
// exactly sized buffer (a recycled one, from psArena), handed to the
// transport as a psWire. Building a persistent.ReadResp
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

// psArena hands out the exactly sized buffers of deliveries and wraps them
// for the transport. Buffers come from pool (psBuffers when nil) and go back
// to it once the transport has written them: grpc frees what it is given
// to send. A replication run's deliveries thus reuse a few hundred buffers
// instead of leaving one allocation each to the collector, which in the
// benchmark shared the test servers' process with every append's records.
// The zero value is ready.
type psArena struct {
	pool mem.BufferPool
	last *[]byte // the buffer alloc handed out last, which wire wraps
	// The one-buffer slices of psWire, allocated psArenaWires at a time;
	// never written once handed out (the transport only reads them).
	slices []mem.Buffer
}

// psArenaWires is the number of psWire slices allocated at once.
const psArenaWires = 64

// psBufferCap is the capacity of pooled delivery buffers; larger deliveries
// get buffers of their own. It is above grpc's pooling threshold, so that
// the transport frees them to the pool.
const psBufferCap = 2 << 10

// psBuffers recycles delivery buffers of psBufferCap bytes. Their bytes are
// not cleared: every delivery overwrites what it sends.
var psBuffers mem.BufferPool = &psBufferPool{}

type psBufferPool struct{ p sync.Pool }

func (p *psBufferPool) Get(n int) *[]byte {
	if n > psBufferCap {
		b := make([]byte, n)
		return &b
	}
	if b, ok := p.p.Get().(*[]byte); ok {
		*b = (*b)[:n]
		return b
	}
	b := make([]byte, n, psBufferCap)
	return &b
}

func (p *psBufferPool) Put(b *[]byte) {
	if cap(*b) == psBufferCap {
		p.p.Put(b)
	}
}

// alloc returns an empty buffer with capacity n, nil arena included.
func (a *psArena) alloc(n int) []byte {
	if a == nil {
		return make([]byte, 0, n)
	}
	if a.pool == nil {
		a.pool = psBuffers
	}
	a.last = a.pool.Get(n)
	return (*a.last)[:0:n]
}

// psWire is a delivery as the transport takes it: its bytes as a
// one-buffer mem.BufferSlice, which serverCodec hands over as it is.
// Marshaling a pbwire.Raw instead boxes the bytes into a mem.Buffer and
// allocates the slice, for each message.
type psWire struct{ data mem.BufferSlice }

// wire wraps b, the bytes written into the buffer alloc returned last, for
// the transport, which returns the buffer to the pool once it has sent them.
func (a *psArena) wire(b []byte) psWire {
	var buf mem.Buffer
	if a.last != nil && len(b) > 0 && unsafe.SliceData(b) == unsafe.SliceData(*a.last) {
		*a.last = (*a.last)[:len(b)] // the pool's capacity, not b's
		buf = mem.NewBuffer(a.last, a.pool)
	} else {
		buf = mem.SliceBuffer(b) // not from alloc: the collector frees it
	}
	a.last = nil
	if len(a.slices) == cap(a.slices) {
		a.slices = make([]mem.Buffer, 0, psArenaWires)
	}
	a.slices = append(a.slices, buf)
	n := len(a.slices)
	return psWire{data: a.slices[n-1 : n : n]}
}

// psDelivery encodes the ReadResp of one delivery, in a buffer from a (nil:
// its own): the message psEventResp builds. ok is false when a record's
// type is not valid UTF-8, which the protobuf runtime refuses to encode: the
// caller then sends psEventResp's message, so that send fails as it always
// did.
func psDelivery(a *psArena, ev ResolvedRecord, retry int32, stringIDs bool) (raw pbwire.Raw, ok bool) {
	// The position is written up to five times: encode it once.
	var pos psUvarint
	pos.set(ev.Original().Position)
	var evPlan, linkPlan psRecordedPlan
	n := 1 + pos.n + 1 + protowire.SizeVarint(uint64(int64(retry)))
	if ev.Event != nil {
		if !utf8.ValidString(ev.Event.Type) {
			return nil, false
		}
		evPlan.init(ev.Event, &pos, stringIDs, nil)
		n += psLenSize(evPlan.size)
	}
	if ev.Link != nil {
		if !utf8.ValidString(ev.Link.Type) {
			return nil, false
		}
		var same *psRecordedPlan
		if ev.Event != nil && ev.Link.Created.Equal(ev.Event.Created) {
			same = &evPlan
		}
		linkPlan.init(ev.Link, &pos, stringIDs, same)
		n += psLenSize(linkPlan.size)
	}
	b := a.alloc(psLenSize(n))
	b = psAppendLen(b, psfRespEvent, n)
	if ev.Event != nil {
		b = psAppendLen(b, psfEvent, evPlan.size)
		b = evPlan.append(b, &pos)
	}
	if ev.Link != nil {
		b = psAppendLen(b, psfLink, linkPlan.size)
		b = linkPlan.append(b, &pos)
	}
	// Both oneofs are set, so written even when zero.
	b = append(append(b, psTag(psfCommitPosition, protowire.VarintType)), pos.bytes()...)
	b = psAppendUvarint(append(b, psTag(psfRetryCount, protowire.VarintType)), uint64(int64(retry)))
	return b, true
}

// psUvarint is a value's varint, encoded once for repeated use.
type psUvarint struct {
	v   uint64
	n   int
	buf [binary.MaxVarintLen64]byte
}

func (u *psUvarint) set(v uint64) { u.v, u.n = v, binary.PutUvarint(u.buf[:], v) }

func (u *psUvarint) bytes() []byte { return u.buf[:u.n] }

// fieldSize is the size of a scalar field holding the value; zero values
// are not written.
func (u *psUvarint) fieldSize() int {
	if u.v == 0 {
		return 0
	}
	return 1 + u.n
}

// appendField appends a scalar field holding the value, unless it is zero.
func (u *psUvarint) appendField(b []byte, num protowire.Number) []byte {
	if u.v == 0 {
		return b
	}
	return append(append(b, psTag(num, protowire.VarintType)), u.bytes()...)
}

// psRecordedPlan is what sizing a RecordedEvent works out, kept for writing
// it: the id field and the created entry, whose sizes take as long to work
// out as their bytes, are encoded while sizing.
type psRecordedPlan struct {
	r          *Record
	id         [psIDFieldMax]byte // the id field, in id[:idLen]
	idLen      int
	created    [psCreatedEntryMax]byte // the created metadata entry, in created[:createdLen]
	createdLen int
	size       int // the RecordedEvent's contents
}

// The largest id field (tag and length of the shared.UUID, then those of the
// hyphenated string and its 36 bytes; the structured form takes at most 26)
// and the largest created entry (tag and length of the entry, of its key
// and of its value, the key and up to 20 digits of ticks).
const (
	psIDFieldMax      = 2 + 2 + 36
	psCreatedEntryMax = 2 + 2 + len("created") + 2 + 20
)

// init sizes r's RecordedEvent. same, if not nil, is the plan of a record
// created at the same instant, whose created entry is reused: a link and the
// event it was projected from are written in one commit.
func (p *psRecordedPlan) init(r *Record, pos *psUvarint, stringIDs bool, same *psRecordedPlan) {
	p.r = r
	if same != nil {
		p.created, p.createdLen = same.created, same.createdLen
	} else {
		p.createdLen = psCreatedEntry(&p.created, r)
	}
	p.idLen = psIDField(&p.id, r.ID, stringIDs)
	p.size = p.idLen +
		psLenSize(psBytesSize(len(r.Stream))) +
		psVarintSize(uint64(r.Number)) +
		2*pos.fieldSize() +
		len(psContentTypeEntry(r)) +
		p.createdLen +
		psEntrySize(len("type"), len(r.Type)) +
		psBytesSize(len(r.Metadata)) +
		psBytesSize(len(r.Data))
}

// psIDField encodes the RecordedEvent's id field into b and returns its
// length.
func psIDField(b *[psIDFieldMax]byte, id uuid.UUID, stringIDs bool) int {
	b[0] = psTag(psfRecID, protowire.BytesType)
	if stringIDs {
		b[1], b[2], b[3] = 2+36, psTag(psfUUIDString, protowire.BytesType), 36
		appendUUID(b[4:4], id)
		return 4 + 36
	}
	b[2] = psTag(psfUUIDStructured, protowire.BytesType)
	n := 4
	for i, v := range psUUIDHalves(id) {
		if v != 0 { // zero halves are not written
			b[n] = psTag(protowire.Number(psfMost+i), protowire.VarintType)
			n += 1 + binary.PutUvarint(b[n+1:], v)
		}
	}
	b[1], b[3] = byte(n-2), byte(n-4)
	return n
}

// psCreatedEntry encodes the RecordedEvent's created metadata entry into b
// and returns its length: .NET ticks since the Unix epoch, as psRecorded
// writes them.
func psCreatedEntry(b *[psCreatedEntryMax]byte, r *Record) int {
	const key = "created"
	const value = 2 + 2 + len(key) // the value's tag and length start here
	b[0], b[2], b[3] = psTag(psfRecMetadata, protowire.BytesType), psTag(psfMapKey, protowire.BytesType), byte(len(key))
	copy(b[4:], key)
	b[value] = psTag(psfMapValue, protowire.BytesType)
	n := len(strconv.AppendInt(b[value+2:value+2], r.Created.UnixNano()/100, 10))
	b[1], b[value+1] = byte(value+n), byte(n)
	return value + 2 + n
}

// append appends the RecordedEvent's contents (without its tag and length)
// in field order, as pbwire writes psRecorded's message.
func (p *psRecordedPlan) append(b []byte, pos *psUvarint) []byte {
	r := p.r
	b = append(b, p.id[:p.idLen]...)
	b = psAppendLen(b, psfRecStream, psBytesSize(len(r.Stream)))
	if r.Stream != "" {
		b = psAppendLen(b, psfStreamName, len(r.Stream))
		b = append(b, r.Stream...)
	}
	b = psAppendVarint(b, psfRecRevision, uint64(r.Number))
	b = pos.appendField(b, psfRecPrepare)
	b = pos.appendField(b, psfRecCommit)
	// The map in key order, as deterministic protobuf writes it.
	b = append(b, psContentTypeEntry(r)...)
	b = append(b, p.created[:p.createdLen]...)
	b = psAppendEntry(b, psfRecMetadata, "type", r.Type)
	b = psAppendBytes(b, psfRecCustom, r.Metadata)
	return psAppendBytes(b, psfRecData, r.Data)
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

// psEntrySize is the size of a map<string, string> entry field. Both key and
// value are always written, even empty. Below psShortEntry, every length in
// it takes one byte.
func psEntrySize(keyLen, valueLen int) int {
	if keyLen+valueLen < psShortEntry {
		return 6 + keyLen + valueLen
	}
	return psLongEntrySize(keyLen, valueLen)
}

// psLongEntrySize is psEntrySize's general case, apart so that the short
// one inlines.
func psLongEntrySize(keyLen, valueLen int) int {
	return psLenSize(psLenSize(keyLen) + psLenSize(valueLen))
}

// psShortEntry bounds the key and value lengths of a map entry whose
// lengths (key, value and the entry's, 4 bytes more) are all below 128.
const psShortEntry = 0x80 - 4

// psContentTypeEntry is the record's content-type entry of the metadata map.
func psContentTypeEntry(r *Record) []byte {
	if r.IsJSON {
		return psJSONEntry
	}
	return psBinaryEntry
}

// The content-type entries of the metadata map, encoded once.
var (
	psJSONEntry   = psAppendEntry(nil, psfRecMetadata, "content-type", (&Record{IsJSON: true}).ContentType())
	psBinaryEntry = psAppendEntry(nil, psfRecMetadata, "content-type", (&Record{}).ContentType())
)

// psAppendEntry appends a map<string, string> entry field.
func psAppendEntry[V string | []byte](b []byte, num protowire.Number, key string, value V) []byte {
	if len(key)+len(value) < psShortEntry {
		b = append(b, psTag(num, protowire.BytesType), byte(4+len(key)+len(value)), psTag(psfMapKey, protowire.BytesType), byte(len(key)))
		b = append(b, key...)
		b = append(b, psTag(psfMapValue, protowire.BytesType), byte(len(value)))
		return append(b, value...)
	}
	b = psAppendLen(b, num, psLenSize(len(key))+psLenSize(len(value)))
	b = psAppendLen(b, psfMapKey, len(key))
	b = append(b, key...)
	b = psAppendLen(b, psfMapValue, len(value))
	return append(b, value...)
}

// psAppendLen appends the tag and length of a length-delimited field; the
// one-byte case (most lengths here) in one append.
func psAppendLen(b []byte, num protowire.Number, n int) []byte {
	if uint(n) < 0x80 {
		return append(b, psTag(num, protowire.BytesType), byte(n))
	}
	return protowire.AppendVarint(append(b, psTag(num, protowire.BytesType)), uint64(n))
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

// psUUIDHalves are the structured form of an id: two big-endian int64s,
// most then least significant.
func psUUIDHalves(id uuid.UUID) [2]uint64 {
	return [2]uint64{binary.BigEndian.Uint64(id[:8]), binary.BigEndian.Uint64(id[8:])}
}
