package esdbtest

// This file is the contract between the store (log, streams, metadata,
// projections, persistence) and the gRPC/HTTP services built on top of it.
// Bodies marked "not implemented" are filled in by store_impl work; the
// signatures and documented semantics are fixed.

import (
	"errors"
	"fmt"
	"math"
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
	IsJSON   bool // content type application/json, else application/octet-stream
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

func (e *StreamDeletedError) Error() string { return fmt.Sprintf("Event stream '%s' is deleted.", e.Stream) }

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
	// fields added by the implementation
}

// NewStore opens a store. dir == "" keeps everything in memory; otherwise the
// log is kept in an append-only file in dir and reloaded on open, so that
// everything acknowledged survives a kill -9.
func NewStore(dir string) (*Store, error) { panic("not implemented") }

// Close flushes and closes the backing file, if any.
func (s *Store) Close() error { panic("not implemented") }

// Append writes events to stream with the expected-version and idempotency
// rules of §2. Errors: *WrongExpectedVersionError, *StreamDeletedError.
func (s *Store) Append(stream string, exp Expected, events []ProposedEvent) (AppendResult, error) {
	panic("not implemented")
}

// ReadStream reads up to max events of stream starting at event number from
// (inclusive; from < 0 means the last event when backwards), forwards or
// backwards, applying $tb, $maxCount and $maxAge ($$S streams have an implicit
// $maxCount of 1). Errors: ErrStreamNotFound, *StreamDeletedError.
// An existing stream with nothing visible returns an empty slice, nil.
func (s *Store) ReadStream(stream string, from int64, forward bool, max int, resolveLinks bool) ([]ResolvedRecord, error) {
	panic("not implemented")
}

// ReadAll reads up to max records of the whole log. Forwards returns records
// with Position >= from; backwards returns records with Position < from
// (from == math.MaxUint64 means from the end). Stream metadata is not applied.
func (s *Store) ReadAll(from uint64, forward bool, max int, resolveLinks bool) []ResolvedRecord {
	panic("not implemented")
}

// Resolve resolves rec if it is a $> link ("<n>@<stream>" data), applying the
// target stream's deletion, $tb, $maxCount and $maxAge; otherwise it returns
// ResolvedRecord{Event: rec}.
func (s *Store) Resolve(rec *Record) ResolvedRecord { panic("not implemented") }

// LastEventNumber is the stream's last event number, -1 if it has none
// (hidden events of a soft-deleted stream count).
func (s *Store) LastEventNumber(stream string) int64 { panic("not implemented") }

// HeadPosition is the position of the last record in the log (0 when empty).
func (s *Store) HeadPosition() uint64 { panic("not implemented") }

// Changed returns a channel that is closed at the next commit to the log.
// Readers that caught up wait on it, then read again.
func (s *Store) Changed() <-chan struct{} { panic("not implemented") }

// Delete soft-deletes stream (§7). Returns the position of the metadata event.
func (s *Store) Delete(stream string, exp Expected) (uint64, error) { panic("not implemented") }

// TombstoneStream hard-deletes stream (§7). Returns the tombstone's position.
func (s *Store) TombstoneStream(stream string, exp Expected) (uint64, error) {
	panic("not implemented")
}
