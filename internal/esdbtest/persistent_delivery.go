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
	pos := ev.Original().Position
	var evPlan, linkPlan psRecordedPlan
	n := 1 + protowire.SizeVarint(pos) + 1 + protowire.SizeVarint(uint64(int64(retry)))
	if ev.Event != nil {
		if !utf8.ValidString(ev.Event.Type) {
			return nil, false
		}
		evPlan.init(ev.Event, pos, stringIDs, nil)
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
		linkPlan.init(ev.Link, pos, stringIDs, same)
		n += psLenSize(linkPlan.size)
	}
	b := a.alloc(psLenSize(n))
	b = psAppendLen(b, psfRespEvent, n)
	if ev.Event != nil {
		b = psAppendLen(b, psfEvent, evPlan.size)
		b = evPlan.append(b, pos, stringIDs)
	}
	if ev.Link != nil {
		b = psAppendLen(b, psfLink, linkPlan.size)
		b = linkPlan.append(b, pos, stringIDs)
	}
	// Both oneofs are set, so written even when zero.
	b = psAppendUvarint(append(b, psTag(psfCommitPosition, protowire.VarintType)), pos)
	b = psAppendUvarint(append(b, psTag(psfRetryCount, protowire.VarintType)), uint64(int64(retry)))
	return b, true
}

// psRecordedPlan is what sizing a RecordedEvent works out, kept for writing
// it: the created ticks and the id's structured halves are computed once.
type psRecordedPlan struct {
	r           *Record
	created     [20]byte // ticks, in created[:createdLen]
	createdLen  int
	most, least uint64 // the structured id
	structSize  int    // the shared.UUID.Structured's contents
	idSize      int    // the shared.UUID's contents
	size        int    // the RecordedEvent's contents
}

// init sizes r's RecordedEvent. same, if not nil, is the plan of a record
// created at the same instant, whose ticks are reused: a link and the event
// it was projected from are written in one commit.
func (p *psRecordedPlan) init(r *Record, pos uint64, stringIDs bool, same *psRecordedPlan) {
	p.r = r
	if same != nil {
		p.created, p.createdLen = same.created, same.createdLen
	} else {
		p.createdLen = len(psCreated(p.created[:0], r))
	}
	if stringIDs {
		p.idSize = psLenSize(36)
	} else {
		p.most, p.least = psUUIDHalves(r.ID)
		p.structSize = psVarintSize(p.most) + psVarintSize(p.least)
		p.idSize = psLenSize(p.structSize)
	}
	p.size = psLenSize(p.idSize) +
		psLenSize(psBytesSize(len(r.Stream))) +
		psVarintSize(uint64(r.Number)) +
		2*psVarintSize(pos) +
		psEntrySize(len("content-type"), len(r.ContentType())) +
		psEntrySize(len("created"), p.createdLen) +
		psEntrySize(len("type"), len(r.Type)) +
		psBytesSize(len(r.Metadata)) +
		psBytesSize(len(r.Data))
}

// append appends the RecordedEvent's contents (without its tag and length)
// in field order, as pbwire writes psRecorded's message.
func (p *psRecordedPlan) append(b []byte, pos uint64, stringIDs bool) []byte {
	r := p.r
	b = psAppendLen(b, psfRecID, p.idSize)
	if stringIDs {
		b = appendUUID(psAppendLen(b, psfUUIDString, 36), r.ID)
	} else {
		b = psAppendLen(b, psfUUIDStructured, p.structSize)
		b = psAppendVarint(b, psfMost, p.most)
		b = psAppendVarint(b, psfLeast, p.least)
	}
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
	b = psAppendEntry(b, psfRecMetadata, "created", p.created[:p.createdLen])
	b = psAppendEntry(b, psfRecMetadata, "type", r.Type)
	b = psAppendBytes(b, psfRecCustom, r.Metadata)
	return psAppendBytes(b, psfRecData, r.Data)
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

// psUUIDHalves are the structured form of an id: two big-endian int64s.
func psUUIDHalves(id uuid.UUID) (most, least uint64) {
	return binary.BigEndian.Uint64(id[:8]), binary.BigEndian.Uint64(id[8:])
}
