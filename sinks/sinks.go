// Package sinks holds what every destination shares: the event as ditto
// carries it, and the classification of write failures that decides whether
// the replicator acks, retries or parks.
package sinks

import (
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"
)

// Event is one source event on its way to a destination, in the coordinates
// of its original stream. Write's stream argument is the destination stream
// (the original one unless DITTO_STREAM_TEMPLATE maps it).
type Event struct {
	Stream string // original stream, e.g. customer-42
	Number uint64 // event number in Stream
	// Seq orders the event in its lane (its destination stream): Number,
	// or for a consolidated stream the delivery's number in the
	// subscription's stream. Events of one Write have increasing Seqs.
	Seq uint64
	// SeqFrom (at most Seq) says that every seq in [SeqFrom, Seq) is
	// known to be dropped by the policy. Sinks that write by Number
	// ignore it.
	SeqFrom     uint64
	ID          uuid.UUID
	Type        string
	ContentType string // application/json or application/octet-stream
	Data        []byte
	Metadata    []byte // user metadata
	Created     time.Time
	// AtEnd marks an event written to a stream other than its own, such as
	// a record in a conflicts stream: the sink appends it at the end of the
	// stream given to Write, in the order of the batch, instead of at its
	// Number or Seq, and once per ID where the destination can tell.
	AtEnd bool
}

// Size is the event's weight against a destination's append-size limit
// (data + metadata + the type in UTF-16, as KurrentDB counts it).
func (e *Event) Size() int { return len(e.Data) + len(e.Metadata) + 2*len(e.Type) }

// Kind classifies a failed write.
type Kind int

const (
	// Transient failures (unavailable, timeouts, connection resets) are retried.
	Transient Kind = iota
	// Behind means an earlier event of the stream has not reached the
	// destination yet (another consumer holds it); retried later.
	Behind
	// Permanent failures (too large, stream deleted, access denied) park the
	// failing event with the reason.
	Permanent
	// Conflict means the destination stream holds other events at the same
	// numbers (it diverged); DITTO_CONFLICT_POLICY says what becomes of the
	// failing events (see package conflict).
	Conflict
)

func (k Kind) String() string {
	switch k {
	case Transient:
		return "transient"
	case Behind:
		return "behind"
	case Permanent:
		return "permanent"
	case Conflict:
		return "conflict"
	}
	return fmt.Sprintf("kind(%d)", int(k))
}

// WriteError is the only error a sink's Write returns. Written events (a
// prefix of the batch) are durable and may be acked whatever the Kind.
type WriteError struct {
	Kind    Kind
	Written int    // leading events of the batch that are durable
	Reason  string // why, naming the cause; the park reason for Permanent and Conflict
	Err     error  // underlying error, if any
}

func (e *WriteError) Error() string {
	if e.Err != nil {
		return fmt.Sprintf("%s: %s: %v", e.Kind, e.Reason, e.Err)
	}
	return fmt.Sprintf("%s: %s", e.Kind, e.Reason)
}

func (e *WriteError) Unwrap() error { return e.Err }

// Classify returns err as a *WriteError; any other error is Transient with
// nothing written.
func Classify(err error) *WriteError {
	var we *WriteError
	if errors.As(err, &we) {
		return we
	}
	return &WriteError{Kind: Transient, Reason: "write failed", Err: err}
}
