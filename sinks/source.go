package sinks

import (
	"context"

	"github.com/google/uuid"
)

// Source is what a sink may ask of ditto's source and policy where the
// policy stage changes what a destination stream holds (see package
// policy): a filter inside streams or a consolidated stream, where
// destination numbers are the destination's own, the copy of source
// stream metadata, and a destination that takes writes of its own. ditto
// hands it to every sink in Env.Source; a sink that needs none of it
// ignores it.
type Source interface {
	// Sequenced reports whether destination numbers are the destination's
	// own. A sink that writes exactly once then orders by Event.Seq: an
	// event is written only when every seq before it in its lane is on the
	// destination or dropped (see Covered), and never again once a later
	// one is there (see Recorded).
	Sequenced() bool
	// Recorded returns the Seq that a written event's metadata records, in
	// the sequence that ev belongs to. An error says it records none, or
	// another sequence's: the destination stream holds events ditto did not
	// write from this sequence.
	Recorded(metadata []byte, ev *Event) (uint64, error)
	// Covered reads the source and reports whether every seq in [from, to]
	// of ev's sequence is dropped by the policy (filtered out, deleted, an
	// unresolved link, parked for its metadata) or goes to another
	// destination stream than dest. A seq that is not covered is an event
	// on its way, possibly held by another ditto process.
	Covered(ctx context.Context, dest string, ev *Event, from, to uint64) (bool, error)
	// Guarded reports whether the destination takes writes of its own
	// (DITTO_DESTINATION_NAME is set: active/active, a failback). A sink
	// that keeps source numbers then appends an event after one it has not
	// written or checked itself only once EventID shows that the
	// destination's event there is the source's: a diverged stream stays
	// diverged, nothing is appended after foreign events.
	Guarded() bool
	// EventID returns the id of event n of the source stream; ok is false
	// if the source no longer has it.
	EventID(ctx context.Context, stream string, n uint64) (id uuid.UUID, ok bool, err error)
	// CopiesStreamMetadata reports whether source stream metadata is to be
	// copied to the destination streams (DITTO_COPY_STREAM_METADATA).
	CopiesStreamMetadata() bool
	// StreamMetadata returns what to copy of the source stream's metadata.
	StreamMetadata(ctx context.Context, stream string) (StreamMetadata, error)
}

// StreamMetadata is a source stream's metadata as it is to be set on a
// destination stream.
type StreamMetadata struct {
	// JSON is the metadata object, without what is not copied ($tb; $acl
	// unless DITTO_COPY_STREAM_ACL); nil if the stream has none.
	JSON []byte
	// Revision is the number of the metadata's event in the source's
	// metadata stream ($$stream), which changes with every change; -1 if
	// there is none.
	Revision int64
}
