package esdbtest

// This file is the contract between the store (log, streams, metadata,
// projections, persistence) and the gRPC/HTTP services built on top of it:
// the exported types and the write path (Append, Delete, TombstoneStream
// with the checks of §2 and §7). Reads are in store_read.go, the commit
// machinery in store_commit.go, the projections in projections.go and the
// file format in persist.go.
//
// Lock order: Store.mu is the only lock; nothing is called with it held
// that takes another.

import (
	crand "crypto/rand"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"
)

// Tombstone is the event number of a stream's $streamDeleted record.
const Tombstone int64 = math.MaxInt64

// Record is one stored event of the log. Records are immutable once stored;
// callers must not modify them.
type Record struct {
	Stream   string
	Number   int64 // event number within Stream (Tombstone for $streamDeleted)
	ID       uuid.UUID
	Type     string
	IsJSON   bool   // content type application/json, else application/octet-stream
	target   uint32 // of a link: its target stream's ref, 0 if unknown (see resolve)
	Data     []byte
	Metadata []byte // custom (user) metadata
	Created  time.Time
	Position uint64 // log position: commit == prepare == Position; > 0 and strictly increasing
}

// ContentType is the content type the server reports for the record.
func (r *Record) ContentType() string {
	if r.IsJSON {
		return "application/json"
	}
	return "application/octet-stream"
}

// ResolvedRecord is a record as returned by a read. For a $> link read with
// link resolution, Link is the link record and Event its target (nil when the
// link cannot be resolved). Otherwise Event is the record and Link is nil.
type ResolvedRecord struct {
	Event *Record
	Link  *Record
}

// Original is the record that was read from the stream: the link if present,
// else the event.
func (r ResolvedRecord) Original() *Record {
	if r.Link != nil {
		return r.Link
	}
	return r.Event
}

// ExpectedKind selects the optimistic concurrency check of an append, delete
// or tombstone.
type ExpectedKind int

const (
	ExpectAny ExpectedKind = iota
	ExpectNoStream
	ExpectStreamExists
	ExpectRevision
)

// Expected is an expected stream revision.
type Expected struct {
	Kind     ExpectedKind
	Revision uint64 // only for ExpectRevision
}

// ProposedEvent is an event offered to Append.
type ProposedEvent struct {
	ID       uuid.UUID
	Type     string
	IsJSON   bool
	Data     []byte
	Metadata []byte
}

// AppendResult describes a successful (or idempotently accepted) append.
type AppendResult struct {
	CurrentRevision int64  // last event number; -1 when the stream has no events
	Position        uint64 // log position of the last event written (or of the idempotent match)
}

// ErrStreamNotFound: the stream never had events, or is soft-deleted.
var ErrStreamNotFound = errors.New("stream not found")

// StreamDeletedError: the stream is tombstoned (or stream_exists on a soft-deleted stream).
type StreamDeletedError struct{ Stream string }

func (e *StreamDeletedError) Error() string {
	return fmt.Sprintf("Event stream '%s' is deleted.", e.Stream)
}

// WrongExpectedVersionError: the expected-version check failed.
// Current is -1 when the stream has no events.
type WrongExpectedVersionError struct {
	Stream   string
	Expected Expected
	Current  int64
}

func (e *WrongExpectedVersionError) Error() string {
	return fmt.Sprintf("wrong expected version for stream %q: current %d", e.Stream, e.Current)
}

// Store is the in-memory (optionally file-backed) event log. All methods are
// safe for concurrent use.
//
// Appends to non-system streams run the standard projections synchronously,
// in the same commit: $ce-<category>, $et-<type>, $streams, $category-<c>
// (see kurrentdb-wire-semantics.md §4), so that a reader that sees an event
// also sees its links.
type Store struct {
	// mu guards everything below. Appends take it exclusively for the whole
	// commit (checks, projections, file write), readers share it.
	mu      sync.RWMutex
	log     []*Record               // every record, ascending Position
	streams map[string]*streamState // by stream name, including $$ metastreams
	refs    []*streamState          // by streamState.ref; refs[0] is nil
	ids     map[uuid.UUID]idRef     // committed event ids, for idempotency
	changed chan struct{}           // closed and replaced at each commit
	nextPos uint64                  // position of the next record
	file    *logFile                // nil for a memory-only store
	failed  error                   // set when the file could not be written; later appends fail
	closed  bool

	// Per-commit scratch state, reused to keep the append path
	// allocation-light. Guarded by mu.
	pending []*Record // records of the running commit, in log order
	slab    []Record  // preallocated records handed out by newRecord
	bytes   []byte    // preallocated byte space handed out by keep
	scratch []byte    // builder for link data and metadata
	corrSrc *Record   // record whose $correlationId corrVal holds (projections)
	corrVal json.RawMessage
	rng     *rand.PCG               // link event ids; crypto strength is not needed
	now     time.Time               // timestamp of the running commit
	et      map[string]*streamState // $et-<type> by type, a projection cache
	types   map[string]string       // the event types appended, each kept once (ownType)
}

// idRef locates a committed event by id. The id only counts for
// idempotency when the retried append targets the same stream.
type idRef struct {
	st     *streamState
	number int64
}

// streamState is the index of one stream.
type streamState struct {
	name      string
	ref       uint32    // index in Store.refs; 0 when they are full
	events    []*Record // events[i].Number == i; hidden ones included
	tombstone *Record   // the $streamDeleted record, once hard-deleted
	meta      streamMeta
	hasMeta   bool         // $$name has at least one event
	ce        *streamState // $ce-<category> of this stream, once looked up
	cat       string       // the category, "" when the stream has none
	ceDone    bool         // ce and cat are valid
}

// streamMeta is the parsed latest $$S event (§7). Zero values mean unset.
type streamMeta struct {
	tb       int64
	maxCount int64
	maxAge   time.Duration
	raw      map[string]json.RawMessage // for the $tb rewrite after an undelete
}

// last is the stream's last event number, -1 without events. Hidden events
// of a soft-deleted stream count.
func (st *streamState) last() int64 {
	if st == nil {
		return -1
	}
	return int64(len(st.events)) - 1
}

func (st *streamState) tombstoned() bool  { return st != nil && st.tombstone != nil }
func (st *streamState) softDeleted() bool { return st != nil && st.meta.tb == math.MaxInt64 }

// isMetastream reports whether name is a $$S metadata stream.
func isMetastream(name string) bool { return strings.HasPrefix(name, "$$") }

// NewStore opens a store. dir == "" keeps everything in memory; otherwise the
// log is kept in an append-only file in dir and reloaded on open, so that
// everything acknowledged survives a kill -9.
func NewStore(dir string) (*Store, error) {
	var seed [16]byte
	if _, err := crand.Read(seed[:]); err != nil {
		return nil, fmt.Errorf("seed link ids: %w", err)
	}
	s := &Store{
		streams: make(map[string]*streamState),
		refs:    []*streamState{nil},
		ids:     make(map[uuid.UUID]idRef),
		et:      make(map[string]*streamState),
		types:   make(map[string]string),
		changed: make(chan struct{}),
		nextPos: firstPosition,
		rng:     rand.NewPCG(binary.LittleEndian.Uint64(seed[:8]), binary.LittleEndian.Uint64(seed[8:])),
	}
	if dir != "" {
		f, err := openLogFile(dir, s.reload)
		if err != nil {
			return nil, err
		}
		s.file = f
	}
	if len(s.log) == 0 {
		if err := s.writeSystemEvents(); err != nil {
			s.Close()
			return nil, err
		}
	}
	return s, nil
}

// Close flushes and closes the backing file, if any.
func (s *Store) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	if s.failed == nil {
		s.failed = errStoreClosed
	}
	if s.file != nil {
		if err := s.file.close(); err != nil {
			return fmt.Errorf("close log file: %w", err)
		}
	}
	return nil
}

var errStoreClosed = errors.New("store closed")

// Append writes events to stream with the expected-version and idempotency
// rules of §2. Errors: *WrongExpectedVersionError, *StreamDeletedError.
func (s *Store) Append(stream string, exp Expected, events []ProposedEvent) (AppendResult, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.failed != nil {
		return AppendResult{}, s.failed
	}
	st := s.streams[stream]
	res, write, err := s.checkAppend(st, stream, exp, events)
	if err != nil || !write {
		return res, err
	}
	s.begin()
	st = s.stream(stream)
	undelete := st.softDeleted()
	first := st.last() + 1
	var lastRec *Record
	for i := range events {
		e := &events[i]
		rec := s.newRecord()
		rec.Stream = st.name
		rec.Number = first + int64(i)
		rec.ID = e.ID
		rec.Type = s.ownType(e.Type)
		rec.IsJSON = e.IsJSON
		rec.Data = s.keep(e.Data)
		rec.Metadata = s.keep(e.Metadata)
		s.add(rec)
		lastRec = rec
	}
	if undelete {
		// SoftUndeleteStream: keep the old events hidden behind $tb.
		s.writeUndelete(st, first)
	}
	s.project()
	if err := s.commit(); err != nil {
		return AppendResult{}, err
	}
	return AppendResult{CurrentRevision: lastRec.Number, Position: lastRec.Position}, nil
}

// checkAppend applies the expected-version and idempotency rules of §2. It
// reports whether the events must be written; when they must not, res is
// the (idempotent or check-only) success.
//
// Lock must be held.
func (s *Store) checkAppend(st *streamState, stream string, exp Expected, events []ProposedEvent) (res AppendResult, write bool, err error) {
	cur := st.last()
	n := len(events)
	wev := &WrongExpectedVersionError{Stream: stream, Expected: exp, Current: cur}
	if st.tombstoned() {
		if n == 0 && (exp.Kind == ExpectAny || exp.Kind == ExpectNoStream) {
			return AppendResult{CurrentRevision: cur}, false, nil
		}
		return res, false, &StreamDeletedError{Stream: stream}
	}
	soft := st.softDeleted()
	switch exp.Kind {
	case ExpectAny, ExpectStreamExists:
		if exp.Kind == ExpectStreamExists {
			if soft {
				return res, false, &StreamDeletedError{Stream: stream}
			}
			if cur < 0 && (st == nil || !st.hasMeta) {
				return res, false, wev
			}
		}
		if n == 0 {
			return AppendResult{CurrentRevision: cur}, false, nil
		}
		// Weak check: only a known first id makes this a retry.
		ref, ok := s.ids[events[0].ID]
		if !ok || ref.st != st {
			return res, true, nil
		}
		for i := 1; i < n; i++ {
			ref, ok = s.ids[events[i].ID]
			if !ok || ref.st != st {
				return res, false, wev // corrupted idempotency
			}
		}
		return AppendResult{CurrentRevision: ref.number, Position: st.events[ref.number].Position}, false, nil
	default:
		r := int64(-1)
		if exp.Kind == ExpectRevision {
			if exp.Revision > math.MaxInt64 {
				return res, false, wev
			}
			r = int64(exp.Revision)
		}
		if n == 0 {
			if r == cur || (exp.Kind == ExpectNoStream && soft) {
				return AppendResult{CurrentRevision: cur}, false, nil
			}
			return res, false, wev
		}
		switch {
		case r == cur:
			return res, true, nil // no duplicate check at the current revision
		case r > cur:
			return res, false, wev
		}
		// Strong check: the request must match the stored events after r.
		for i := range events {
			num := r + 1 + int64(i)
			if num > cur {
				return res, false, wev
			}
			if st.events[num].ID != events[i].ID {
				if i == 0 && exp.Kind == ExpectNoStream && soft {
					return res, true, nil
				}
				return res, false, wev
			}
		}
		last := st.events[r+int64(n)]
		return AppendResult{CurrentRevision: last.Number, Position: last.Position}, false, nil
	}
}

// checkDelete is the expected-version check of Delete and Tombstone (§7).
//
// Lock must be held.
func checkDelete(st *streamState, stream string, exp Expected) error {
	if st.tombstoned() {
		return &StreamDeletedError{Stream: stream}
	}
	cur := st.last()
	wev := &WrongExpectedVersionError{Stream: stream, Expected: exp, Current: cur}
	soft := st.softDeleted()
	switch exp.Kind {
	case ExpectNoStream:
		if cur != -1 && !soft {
			return wev
		}
	case ExpectStreamExists:
		if soft {
			return &StreamDeletedError{Stream: stream}
		}
		if cur < 0 && (st == nil || !st.hasMeta) {
			return wev
		}
	case ExpectRevision:
		if exp.Revision > math.MaxInt64 || int64(exp.Revision) != cur {
			return wev
		}
	}
	return nil
}

// Delete soft-deletes stream (§7). Returns the position of the metadata event.
func (s *Store) Delete(stream string, exp Expected) (uint64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.failed != nil {
		return 0, s.failed
	}
	st := s.streams[stream]
	if st == nil || (len(st.events) == 0 && !st.hasMeta && st.tombstone == nil) {
		return 0, &WrongExpectedVersionError{Stream: stream, Expected: exp, Current: -1}
	}
	if err := checkDelete(st, stream, exp); err != nil {
		return 0, err
	}
	s.begin()
	rec := s.newRecord()
	rec.Stream = s.stream("$$" + stream).name
	rec.Number = s.stream(rec.Stream).last() + 1
	rec.ID = s.newID()
	rec.Type = "$metadata"
	rec.IsJSON = true
	rec.Data = s.keep([]byte(`{"$tb":9223372036854775807}`))
	s.add(rec)
	s.project()
	if err := s.commit(); err != nil {
		return 0, err
	}
	return rec.Position, nil
}

// TombstoneStream hard-deletes stream (§7). Returns the tombstone's position.
func (s *Store) TombstoneStream(stream string, exp Expected) (uint64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.failed != nil {
		return 0, s.failed
	}
	if err := checkDelete(s.streams[stream], stream, exp); err != nil {
		return 0, err
	}
	s.begin()
	rec := s.newRecord()
	rec.Stream = s.stream(stream).name
	rec.Number = Tombstone
	rec.ID = s.newID()
	rec.Type = "$streamDeleted"
	s.add(rec)
	s.project()
	if err := s.commit(); err != nil {
		return 0, err
	}
	return rec.Position, nil
}

// writeUndelete appends the $$S event that makes a soft-deleted stream
// visible again from event first on: the latest metadata with $tb = first.
//
// Lock must be held, inside a commit.
func (s *Store) writeUndelete(st *streamState, first int64) {
	m := make(map[string]json.RawMessage, len(st.meta.raw)+1)
	for k, v := range st.meta.raw {
		m[k] = v
	}
	m["$tb"] = json.RawMessage(strconv.FormatInt(first, 10))
	data, _ := json.Marshal(m) // a map of raw JSON values always marshals
	s.emitMeta(st, data)
}

// LastEventNumber is the stream's last event number, -1 if it has none
// (hidden events of a soft-deleted stream count).
func (s *Store) LastEventNumber(stream string) int64 {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.streams[stream].last()
}

// HeadPosition is the position of the last record in the log (0 when empty).
func (s *Store) HeadPosition() uint64 {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if len(s.log) == 0 {
		return 0
	}
	return s.log[len(s.log)-1].Position
}

// Changed returns a channel that is closed at the next commit to the log.
// Readers that caught up wait on it, then read again.
func (s *Store) Changed() <-chan struct{} {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.changed
}
