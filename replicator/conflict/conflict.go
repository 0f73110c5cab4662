// Package conflict is DITTO_CONFLICT_POLICY: what becomes of events that a
// destination refuses because its stream diverged (sinks.Conflict), such as
// a stream written on both sides of an active/active pair, or the tail a
// failed cluster never sent before clients moved to the other side. The
// replicator applies it; a diverged stream is never overwritten, whatever
// the policy.
package conflict

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"

	"github.com/ditto-replicator/ditto/policy"
	"github.com/ditto-replicator/ditto/sinks"
)

// Policy is a conflict policy. Its String is the value of
// DITTO_CONFLICT_POLICY and the policy label of ditto_events_conflicts_total.
type Policy int

const (
	// Park nacks the events with park and the reason: they wait in the
	// source's parked-message stream of the group until replayed.
	Park Policy = iota
	// Stream appends each event, with the reason in its metadata, to the
	// link's conflicts stream on the destination, and acks it.
	Stream
	// Skip acks the events without writing them anywhere; each is counted
	// and logged.
	Skip
)

// Policies lists every Policy, in order.
var Policies = []Policy{Park, Stream, Skip}

func (p Policy) String() string {
	switch p {
	case Park:
		return "park"
	case Stream:
		return "conflict-stream"
	case Skip:
		return "skip"
	}
	return fmt.Sprintf("policy(%d)", int(p))
}

// Parse reads a value of DITTO_CONFLICT_POLICY.
func Parse(s string) (Policy, error) {
	var names []string
	for _, p := range Policies {
		if s == p.String() {
			return p, nil
		}
		names = append(names, p.String())
	}
	return 0, fmt.Errorf("expected %s", strings.Join(names, ", "))
}

// StreamName is the default conflicts stream of the link from origin to
// destination (DITTO_ORIGIN_NAME, DITTO_DESTINATION_NAME), or
// ditto-conflicts where either is not named.
func StreamName(origin, destination string) string {
	if origin == "" || destination == "" {
		return "ditto-conflicts"
	}
	return "ditto-conflicts-" + origin + "-" + destination
}

// Record is ev as it is appended to a conflicts stream: the same id, type,
// content type and data, its metadata (with provenance, if written) plus
// $conflictReason and $conflictStreamId (dest, the destination stream that
// diverged). Its $originalStreamId and $originalEventNumber say where it
// comes from even where provenance is not written. It fails on metadata
// that is not a JSON object, which cannot carry the reason.
func Record(ev sinks.Event, dest, reason string) (sinks.Event, error) {
	md, err := policy.Extend(ev.Metadata,
		[]string{policy.KeyOriginalStreamID, policy.KeyOriginalEventNumber, policy.KeyConflictStreamID, policy.KeyConflictReason},
		[]json.RawMessage{policy.String(ev.Stream), strconv.AppendUint(nil, ev.Number, 10), policy.String(dest), policy.String(reason)})
	if err != nil {
		return sinks.Event{}, err
	}
	ev.Metadata = md
	ev.AtEnd = true
	return ev, nil
}
