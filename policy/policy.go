// Package policy is the stage between the consumer and the lanes that decides
// what reaches a sink: filters by stream, event type and metadata, the
// destination stream's name (a template, or one consolidated stream), and
// the provenance and content signature written into an event's metadata.
// Every sink gets the same events. A compiled Policy is immutable and safe
// for concurrent use; its functions are pure, except Source's reads.
package policy

import (
	"fmt"
	"strings"

	"github.com/EventStore/EventStore-Client-Go/v4/esdb"
)

// Spec is the policy as configured: the raw values of its DITTO_* variables.
type Spec struct {
	IncludeStreams, ExcludeStreams       string
	IncludeEventTypes, ExcludeEventTypes string
	IncludeMetadata, ExcludeMetadata     string
	IncludeSystemEventTypes              bool
	StreamTemplate                       string // "" means {stream}
	Provenance                           bool
	OriginName                           string
	// DestinationName names the destination cluster: an event whose
	// $origin chain holds it came from there and is not written back.
	DestinationName string
	// Subscriptions are the streams of DITTO_SUBSCRIPTIONS, such as
	// $ce-customer: a consolidated stream must be fed by one of them.
	Subscriptions []string
}

// Mode says how destination numbers relate to source numbers; README states
// what holds in each.
type Mode int

const (
	// Plain copies kept streams 1:1 under their own names: destination
	// numbers are source numbers.
	Plain Mode = iota
	// Mapped copies kept streams 1:1 under names from DITTO_STREAM_TEMPLATE.
	Mapped
	// Filtered drops some events inside streams: destination numbers are
	// the destination's own, and exactly-once rests on provenance.
	Filtered
	// Consolidated writes many source streams into one destination stream,
	// in the order of the subscription.
	Consolidated
)

func (m Mode) String() string {
	switch m {
	case Plain:
		return "plain copy"
	case Mapped:
		return "mapped"
	case Filtered:
		return "filtered within a stream"
	case Consolidated:
		return "consolidated"
	}
	return fmt.Sprintf("mode(%d)", int(m))
}

// Reason says why an event was filtered out; its String is the reason label
// of ditto_events_filtered_total (a bounded set).
type Reason int

const (
	// ByStream: the stream is not included, or excluded.
	ByStream Reason = iota
	// BySystemEventType: a $-prefixed event type, dropped by default where
	// destination numbers are the destination's own.
	BySystemEventType
	// ByEventType: the event type is not included, or excluded.
	ByEventType
	// ByMetadata: the metadata does not match an include, or matches an
	// exclude.
	ByMetadata
	// ByOrigin: the event's $origin chain holds DITTO_DESTINATION_NAME, so
	// it came from the destination (active/active): writing it back would
	// loop.
	ByOrigin
)

// Reasons lists every Reason, in order.
var Reasons = []Reason{ByStream, BySystemEventType, ByEventType, ByMetadata, ByOrigin}

func (r Reason) String() string {
	switch r {
	case ByStream:
		return "stream"
	case BySystemEventType:
		return "system_event_type"
	case ByEventType:
		return "event_type"
	case ByMetadata:
		return "metadata"
	case ByOrigin:
		return "origin"
	}
	return fmt.Sprintf("reason(%d)", int(r))
}

// Policy is a compiled Spec.
type Policy struct {
	streams, types matchers
	metadata       metaMatchers
	systemTypes    bool // $-prefixed types are kept
	template       template
	mode           Mode
	provenance     bool
	origin         string
	destination    string // DITTO_DESTINATION_NAME; "" means no loop check
	// needs names the variables that make provenance required, for the
	// park reason of an event whose metadata cannot carry it.
	needs string
	// subs are the subscription streams; seqStream finds the one that
	// feeds a consolidated stream.
	subs []string
}

// Compile checks spec and compiles it. Every problem names its variable.
func Compile(spec Spec) (*Policy, []string) {
	var problems []string
	p := &Policy{systemTypes: spec.IncludeSystemEventTypes, provenance: spec.Provenance, origin: spec.OriginName,
		destination: spec.DestinationName, subs: spec.Subscriptions}
	compile := func(name, value string) []matcher {
		m, errs := parseMatchers(name, value)
		problems = append(problems, errs...)
		return m
	}
	p.streams.include = compile("DITTO_INCLUDE_STREAMS", spec.IncludeStreams)
	p.streams.exclude = compile("DITTO_EXCLUDE_STREAMS", spec.ExcludeStreams)
	p.types.include = compile("DITTO_INCLUDE_EVENT_TYPES", spec.IncludeEventTypes)
	p.types.exclude = compile("DITTO_EXCLUDE_EVENT_TYPES", spec.ExcludeEventTypes)
	var errs []string
	p.metadata.include, errs = parseMetaMatchers("DITTO_INCLUDE_METADATA", spec.IncludeMetadata)
	problems = append(problems, errs...)
	p.metadata.exclude, errs = parseMetaMatchers("DITTO_EXCLUDE_METADATA", spec.ExcludeMetadata)
	problems = append(problems, errs...)
	tmpl := spec.StreamTemplate
	if tmpl == "" {
		tmpl = "{stream}"
	}
	var err error
	if p.template, err = parseTemplate(tmpl); err != nil {
		problems = append(problems, fmt.Sprintf("DITTO_STREAM_TEMPLATE=%q: %v", tmpl, err))
	}
	control := func(r rune) bool { return r < ' ' || r == 0x7f }
	if strings.ContainsFunc(spec.OriginName, control) {
		problems = append(problems, fmt.Sprintf("DITTO_ORIGIN_NAME=%q must not contain control characters", spec.OriginName))
	}
	if strings.ContainsFunc(spec.DestinationName, control) {
		problems = append(problems, fmt.Sprintf("DITTO_DESTINATION_NAME=%q must not contain control characters", spec.DestinationName))
	}

	var needs []string
	for _, v := range []struct{ name, value string }{
		{"DITTO_INCLUDE_EVENT_TYPES", spec.IncludeEventTypes}, {"DITTO_EXCLUDE_EVENT_TYPES", spec.ExcludeEventTypes},
		{"DITTO_INCLUDE_METADATA", spec.IncludeMetadata}, {"DITTO_EXCLUDE_METADATA", spec.ExcludeMetadata},
	} {
		if strings.TrimSpace(v.value) != "" {
			needs = append(needs, v.name)
		}
	}
	switch {
	case p.template.consolidates():
		p.mode = Consolidated
		needs = []string{fmt.Sprintf("DITTO_STREAM_TEMPLATE=%s", tmpl)}
	case len(needs) > 0:
		p.mode = Filtered
	case tmpl != "{stream}":
		p.mode = Mapped
	}
	p.needs = strings.Join(needs, ", ")
	if p.mode >= Filtered {
		p.provenance = true
	}
	if p.mode == Consolidated && len(spec.Subscriptions) > 1 {
		// A consolidated stream is written in the order of one
		// subscription's stream; two subscriptions have two orders.
		ok := p.template.has(partCategory)
		for _, s := range spec.Subscriptions {
			ok = ok && strings.HasPrefix(s, "$ce-")
		}
		if !ok {
			problems = append(problems, fmt.Sprintf("DITTO_STREAM_TEMPLATE=%q consolidates the events of %d subscriptions (DITTO_SUBSCRIPTIONS) into one stream: a consolidated stream keeps the order of one subscription's stream, so use one subscription, or category streams ($ce-…) with {category} in the template", tmpl, len(spec.Subscriptions)))
		}
	}
	if spec.OriginName != "" && !p.provenance {
		problems = append(problems, fmt.Sprintf("DITTO_ORIGIN_NAME=%q is written into provenance metadata, which this configuration does not write: set DITTO_PROVENANCE=true", spec.OriginName))
	}
	// Loop prevention reads the chain that each hop extends with its
	// source's name: a hop that does not name its source leaves nothing
	// for the link back to recognise.
	switch d := spec.DestinationName; {
	case d == "":
	case spec.OriginName == "":
		problems = append(problems, fmt.Sprintf("DITTO_DESTINATION_NAME=%q needs DITTO_ORIGIN_NAME: loop prevention drops events whose $origin chain holds the destination's name, and works only if every deployment names its source cluster there", d))
	case d == spec.OriginName:
		problems = append(problems, fmt.Sprintf("DITTO_DESTINATION_NAME=%q is DITTO_ORIGIN_NAME too: the source and the destination must be different clusters with different names", d))
	case !p.provenance:
		problems = append(problems, fmt.Sprintf("DITTO_DESTINATION_NAME=%q: loop prevention reads the $origin chain of provenance metadata, which this configuration does not write: set DITTO_PROVENANCE=true", d))
	}
	if len(problems) > 0 {
		return nil, problems
	}
	return p, nil
}

// Mode is the policy's mode.
func (p *Policy) Mode() Mode { return p.mode }

// Sequenced reports whether destination numbers are the destination's own
// (modes Filtered and Consolidated): events then carry provenance, the
// lanes hold skip items for dropped events, and a sink writes exactly once
// by Seq instead of by event number.
func (p *Policy) Sequenced() bool { return p.mode >= Filtered }

// Provenance reports whether provenance is written into events' metadata.
func (p *Policy) Provenance() bool { return p.provenance }

// Trivial reports whether the policy changes nothing: no filter, no
// mapping, no provenance. The replicator then skips the stage.
func (p *Policy) Trivial() bool {
	return p.mode == Plain && !p.provenance && p.streams.empty()
}

// DestinationName is DITTO_DESTINATION_NAME: set where the destination
// takes writes of its own (active/active, a failback), "" otherwise.
func (p *Policy) DestinationName() string { return p.destination }

// Keep decides whether an event passes the filters; if not, it says why.
// stream is the event's original stream.
func (p *Policy) Keep(stream, eventType string, metadata []byte) (Reason, bool) {
	if !p.streams.match(stream) {
		return ByStream, false
	}
	if p.destination != "" && cameFrom(metadata, p.destination) {
		// In every mode: in a plain copy the destination holds the event
		// already, at its number (it came from there).
		return ByOrigin, false
	}
	if p.mode < Filtered {
		// Dropping an event inside a stream would break the n-1
		// numbering of modes Plain and Mapped: only whole streams go.
		return 0, true
	}
	if !p.systemTypes && strings.HasPrefix(eventType, "$") {
		return BySystemEventType, false
	}
	if !p.types.match(eventType) {
		return ByEventType, false
	}
	if !p.metadata.match(metadata) {
		return ByMetadata, false
	}
	return 0, true
}

// KeepsStream reports whether events of stream may pass at all (the stream
// filters alone).
func (p *Policy) KeepsStream(stream string) bool { return p.streams.match(stream) }

// Destination is the destination stream of events of the original stream,
// or "" if the template maps it to an empty name.
func (p *Policy) Destination(stream string) string { return p.template.render(stream) }

// SeqStream is the stream whose event numbers order the lane of events of
// the original stream: the stream itself, or, for a consolidated stream,
// the subscription stream that delivers it (see Compile's rule of one
// subscription per consolidated stream).
func (p *Policy) SeqStream(stream string) string {
	if p.mode != Consolidated {
		return stream
	}
	if len(p.subs) == 1 {
		return p.subs[0]
	}
	cat, _ := split(stream)
	return "$ce-" + cat
}

// Writes reports whether ditto writes rec, a source event (nil for an
// unresolved link), to the destination stream dest: it passes the filters,
// maps to dest, is no system event, and, where provenance is required, its
// metadata can carry it (else it is parked).
func (p *Policy) Writes(dest string, rec *esdb.RecordedEvent) bool {
	if rec == nil || strings.HasPrefix(rec.StreamID, "$") {
		return false
	}
	if _, keep := p.Keep(rec.StreamID, rec.EventType, rec.UserMetadata); !keep {
		return false
	}
	if p.Destination(rec.StreamID) != dest {
		return false
	}
	if p.Sequenced() {
		var mb memberBuf
		if _, err := members(mb[:0], rec.UserMetadata); err != nil {
			return false
		}
	}
	return true
}
