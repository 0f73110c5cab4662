package esdbtest

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math"
	"strings"
	"time"

	"github.com/google/uuid"
)

// firstPosition is the position of the first record. Real logs never start
// at 0, and the client tests require positions > 0.
const firstPosition uint64 = 128

// slabSize and byteSlabSize size the preallocated chunks that records and
// their payloads are carved from: records live as long as the store, so one
// allocation per chunk instead of several per event keeps appends cheap.
const (
	slabSize     = 512
	byteSlabSize = 256 << 10
	ownAllocSize = 8 << 10 // payloads at least this big get their own allocation
)

// begin starts a commit.
//
// Lock must be held.
func (s *Store) begin() {
	s.pending = s.pending[:0]
	s.now = time.Now()
}

// newRecord hands out a zeroed record from the slab.
//
// Lock must be held.
func (s *Store) newRecord() *Record {
	if len(s.slab) == 0 {
		s.slab = make([]Record, slabSize)
	}
	r := &s.slab[0]
	s.slab = s.slab[1:]
	return r
}

// keep copies b into store-owned memory, so callers may reuse their buffers.
// nil and empty stay nil.
//
// Lock must be held.
func (s *Store) keep(b []byte) []byte {
	if len(b) == 0 {
		return nil
	}
	if len(b) >= ownAllocSize {
		return append([]byte(nil), b...)
	}
	if cap(s.bytes)-len(s.bytes) < len(b) {
		s.bytes = make([]byte, 0, byteSlabSize)
	}
	start := len(s.bytes)
	s.bytes = append(s.bytes, b...)
	return s.bytes[start:len(s.bytes):len(s.bytes)]
}

// ownType is the store's own copy of an event type, as keep is of bytes: a
// caller's string may point into a received message (the generated decoder's
// strings do, see package pbwire), which a record holding it would keep alive
// whole. Types repeat, so each is copied once.
//
// Lock must be held.
func (s *Store) ownType(t string) string {
	if own, ok := s.types[t]; ok {
		return own
	}
	own := strings.Clone(t)
	s.types[own] = own
	return own
}

// newID is a random (version 4) event id for records the server writes.
//
// Lock must be held.
func (s *Store) newID() uuid.UUID {
	var id uuid.UUID
	binary.LittleEndian.PutUint64(id[:8], s.rng.Uint64())
	binary.LittleEndian.PutUint64(id[8:], s.rng.Uint64())
	id[6] = id[6]&0x0f | 0x40
	id[8] = id[8]&0x3f | 0x80
	return id
}

// stream returns the index entry of name, creating it.
//
// Lock must be held.
func (s *Store) stream(name string) *streamState {
	st := s.streams[name]
	if st == nil {
		st = &streamState{name: name}
		s.streams[name] = st
		if uint64(len(s.refs)) <= math.MaxUint32 {
			st.ref = uint32(len(s.refs))
			s.refs = append(s.refs, st)
		}
	}
	return st
}

// add stamps rec with its position and creation time, indexes it and queues
// it for the file. Indexing at once lets later steps of the same commit
// (projections, undelete) see it.
//
// Lock must be held, inside a commit.
func (s *Store) add(rec *Record) {
	rec.Created = s.now
	rec.Position = s.nextPos
	s.index(rec)
	s.pending = append(s.pending, rec)
}

// index adds a stored record to the in-memory indexes. It is also the
// reload path of the log file, so it must not depend on commit state.
//
// Lock must be held (or the store not yet shared).
func (s *Store) index(rec *Record) {
	st := s.stream(rec.Stream)
	rec.Stream = st.name // share one string per stream
	s.log = append(s.log, rec)
	s.nextPos = rec.Position + recordSpan(rec)
	if rec.Number == Tombstone {
		st.tombstone = rec
	} else {
		st.events = append(st.events, rec)
	}
	if isMetastream(rec.Stream) {
		target := s.stream(rec.Stream[2:])
		target.meta = parseMeta(rec)
		target.hasMeta = true
	}
	// Links and tombstones carry fresh random ids and are never retried
	// by clients, so they stay out of the idempotency index.
	if rec.Type != linkType && rec.Number != Tombstone {
		if ref, ok := s.ids[rec.ID]; !ok || ref.st != st {
			s.ids[rec.ID] = idRef{st: st, number: rec.Number}
		}
	}
}

// reload indexes a record read back from the log file. A link whose target
// stream exists already (as the target of a projected link always does)
// gets that stream's ref, as emitLink gives it to the links it writes, when
// linkNumber reads its number (no sign).
//
// Lock must be held (or the store not yet shared).
func (s *Store) reload(rec *Record) {
	if rec.Type == linkType {
		if _, name, ok := parseLink(rec.Data); ok && rec.Data[0] != '-' {
			if st := s.streams[string(name)]; st != nil {
				rec.target = st.ref
			}
		}
	}
	s.index(rec)
}

// recordSpan is how far a record advances the log position: roughly its
// size on disk, like a real transaction file, and always > 0.
func recordSpan(rec *Record) uint64 {
	return uint64(64 + len(rec.Stream) + len(rec.Type) + len(rec.Data) + len(rec.Metadata))
}

// commit makes the running commit durable (one buffered write per commit,
// flushed so that a killed process keeps it) and wakes waiting readers.
//
// Lock must be held.
func (s *Store) commit() error {
	if s.file != nil {
		if err := s.file.write(s.pending); err != nil {
			// The records are indexed already; refuse further writes
			// rather than let memory and file diverge silently.
			s.failed = fmt.Errorf("write log file: %w", err)
			s.wake()
			return s.failed
		}
	}
	s.wake()
	return nil
}

// wake closes the Changed channel and installs a fresh one.
//
// Lock must be held.
func (s *Store) wake() {
	close(s.changed)
	s.changed = make(chan struct{})
}

// parseMeta reads the stream metadata of a $$S event. The server only
// honours JSON-flagged events; malformed JSON or wrong value types mean
// empty metadata, and non-positive $maxCount/$maxAge are ignored (§7).
func parseMeta(rec *Record) streamMeta {
	var m streamMeta
	if !rec.IsJSON {
		return m
	}
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(rec.Data, &raw); err != nil {
		return m
	}
	m.raw = raw
	num := func(key string) (int64, bool) {
		v, ok := raw[key]
		if !ok {
			return 0, true
		}
		var n int64
		if err := json.Unmarshal(v, &n); err != nil {
			return 0, false
		}
		return n, true
	}
	tb, ok1 := num("$tb")
	mc, ok2 := num("$maxCount")
	ma, ok3 := num("$maxAge")
	if !ok1 || !ok2 || !ok3 || tb < 0 {
		return streamMeta{raw: raw}
	}
	m.tb = tb
	if mc > 0 {
		m.maxCount = mc
	}
	if ma > 0 && ma < math.MaxInt64/int64(time.Second) {
		m.maxAge = time.Duration(ma) * time.Second
	}
	return m
}
