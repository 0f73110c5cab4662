package policy

import (
	"context"
	"fmt"

	"github.com/EventStore/EventStore-Client-Go/v4/esdb"
	"github.com/google/uuid"

	"github.com/ditto-replicator/ditto/sinks"
)

// Reader reads the source. ditto implements it with its source client.
type Reader interface {
	// Read returns up to count events of stream from number from on,
	// forwards, links resolved; none if the stream does not exist.
	Read(ctx context.Context, stream string, from uint64, count int) ([]*esdb.ResolvedEvent, error)
	// Last returns the last event of stream, or nil if it has none.
	Last(ctx context.Context, stream string) (*esdb.RecordedEvent, error)
}

// Source is the policy's side of sinks.Source: what a sink needs to know
// about the source where the policy changes what a destination stream
// holds.
type Source struct {
	p                 *Policy
	r                 Reader
	copyMeta, copyACL bool
}

var _ sinks.Source = (*Source)(nil)

// coveredPage is how many source events Covered reads per call.
const coveredPage = 500

// NewSource returns p's sinks.Source reading through r. copyMeta and
// copyACL are DITTO_COPY_STREAM_METADATA and DITTO_COPY_STREAM_ACL.
func NewSource(p *Policy, r Reader, copyMeta, copyACL bool) *Source {
	return &Source{p: p, r: r, copyMeta: copyMeta, copyACL: copyACL}
}

// Sequenced implements sinks.Source.
func (s *Source) Sequenced() bool { return s.p.Sequenced() }

// Recorded implements sinks.Source: the source event number recorded in a
// filtered stream, the subscription's number in a consolidated one.
func (s *Source) Recorded(metadata []byte, ev *sinks.Event) (uint64, error) {
	prov, ok := ParseProvenance(metadata)
	if !ok {
		return 0, fmt.Errorf("its last event carries no provenance (%s): it was not written by ditto under this policy", KeyOriginalStreamID)
	}
	if s.p.mode == Consolidated {
		want := s.p.SeqStream(ev.Stream)
		if prov.SubscriptionStreamID != want || !prov.HasSubscriptionNumber {
			return 0, fmt.Errorf("its last event was consolidated from %q, not from %s", prov.SubscriptionStreamID, want)
		}
		return prov.SubscriptionEventNumber, nil
	}
	if prov.OriginalStreamID != ev.Stream || !prov.HasOriginalEventNumber {
		return 0, fmt.Errorf("its last event comes from source stream %q, not %s (does DITTO_STREAM_TEMPLATE map two streams to one?)", prov.OriginalStreamID, ev.Stream)
	}
	return prov.OriginalEventNumber, nil
}

// Covered implements sinks.Source. It reads [from, to] of ev's sequence
// stream in pages and stops at the first event that would be written to
// dest; events no longer on the source count as dropped.
func (s *Source) Covered(ctx context.Context, dest string, ev *sinks.Event, from, to uint64) (bool, error) {
	stream := s.p.SeqStream(ev.Stream)
	for from <= to {
		n := int(min(uint64(coveredPage), to-from+1))
		page, err := s.r.Read(ctx, stream, from, n)
		if err != nil {
			return false, fmt.Errorf("reading %s from %d on the source: %w", stream, from, err)
		}
		for _, re := range page {
			at := re.OriginalEvent().EventNumber
			if at > to {
				return true, nil
			}
			if !s.dropped(dest, re.Event) {
				return false, nil
			}
		}
		if len(page) < n {
			return true, nil // the rest is no longer on the source
		}
		from = page[len(page)-1].OriginalEvent().EventNumber + 1
	}
	return true, nil
}

// dropped reports whether rec (nil for an unresolved link) would not be
// written to dest.
func (s *Source) dropped(dest string, rec *esdb.RecordedEvent) bool { return !s.p.Writes(dest, rec) }

// Guarded implements sinks.Source: the destination takes writes of its
// own where it is named (DITTO_DESTINATION_NAME).
func (s *Source) Guarded() bool { return s.p.destination != "" }

// EventID implements sinks.Source.
func (s *Source) EventID(ctx context.Context, stream string, n uint64) (uuid.UUID, bool, error) {
	page, err := s.r.Read(ctx, stream, n, 1)
	if err != nil {
		return uuid.UUID{}, false, fmt.Errorf("reading %s@%d on the source: %w", stream, n, err)
	}
	if len(page) == 0 || page[0].Event == nil || page[0].Event.EventNumber != n {
		return uuid.UUID{}, false, nil
	}
	return page[0].Event.EventID, true, nil
}

// CopiesStreamMetadata implements sinks.Source.
func (s *Source) CopiesStreamMetadata() bool { return s.copyMeta }

// StreamMetadata implements sinks.Source: the last event of the source's
// $$stream, without $tb (ditto copies events, not deletions or
// truncations) and without $acl unless DITTO_COPY_STREAM_ACL.
func (s *Source) StreamMetadata(ctx context.Context, stream string) (sinks.StreamMetadata, error) {
	none := sinks.StreamMetadata{Revision: -1}
	rec, err := s.r.Last(ctx, "$$"+stream)
	if err != nil {
		return none, fmt.Errorf("reading the metadata of %s on the source: %w", stream, err)
	}
	if rec == nil {
		return none, nil
	}
	ms, err := members(nil, rec.Data)
	if err != nil {
		return none, nil // not metadata ditto can copy
	}
	out := []byte{'{'}
	for _, m := range ms {
		if m.key == "$tb" || (m.key == "$acl" && !s.copyACL) {
			continue
		}
		if len(out) > 1 {
			out = append(out, ',')
		}
		out = appendString(out, m.key)
		out = append(out, ':')
		out = append(out, m.value...)
	}
	out = append(out, '}')
	return sinks.StreamMetadata{JSON: out, Revision: int64(rec.EventNumber)}, nil
}
