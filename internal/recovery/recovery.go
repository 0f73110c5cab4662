// Package recovery measures the recovery point of a replica: for each
// subscription group ditto reads, how many events of the group's stream
// are on the source and not yet on the destination, and how old the oldest
// of them is. That is what a failover to the destination would lose now.
//
// The events after the group's last checkpoint (see groups.Next) are read
// from the source; an event counts as copied when the destination holds its
// original stream up to its number (ditto keeps numbers and per-stream
// order), which the sink says through sinks.Holder. Events acked after the
// checkpoint are therefore not counted, nor are events of system streams
// and links whose event is gone, which ditto does not copy. Without a
// Holder (a sink that cannot tell, or an unreachable destination) every
// event after the checkpoint counts: an upper bound.
package recovery

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/EventStore/EventStore-Client-Go/v4/esdb"

	"github.com/ditto-replicator/ditto/internal/esdbconn"
	"github.com/ditto-replicator/ditto/internal/groups"
	"github.com/ditto-replicator/ditto/sinks"
)

// DefaultMaxScan is Options.MaxScan's default.
const DefaultMaxScan = 10_000

// Options tune a measurement.
type Options struct {
	// MaxScan caps the events after the checkpoint read from the source
	// per group; those beyond it all count as not copied (and the oldest
	// of them is the first one beyond, if none before is missing).
	MaxScan int
	// PageSize is the events read per request; 0 means 500.
	PageSize int
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// Point is one group's recovery point.
type Point struct {
	Stream string `json:"stream"`
	Group  string `json:"group"`
	// Events not yet on the destination.
	Events int64 `json:"events"`
	// Seconds is the age of the oldest of them (0 when there are none);
	// Oldest is its creation time on the source.
	Seconds float64   `json:"seconds"`
	Oldest  time.Time `json:"oldest,omitempty"`
	// Exact is false when the destination could not say what it holds:
	// every event after the checkpoint is counted.
	Exact bool `json:"exact"`
	// Checkpoint is the group's last checkpoint on the source, if any;
	// SourceLast the last event number of its stream (-1: empty).
	Checkpoint *uint64 `json:"source_checkpoint,omitempty"`
	SourceLast int64   `json:"source_last"`
	// AfterCheckpoint is how many events follow the checkpoint.
	AfterCheckpoint int64 `json:"events_after_checkpoint"`
	// Why the destination could not say what it holds, when not Exact.
	Unknown string `json:"unknown,omitempty"`
}

// entry is an event after the checkpoint.
type entry struct {
	stream  string
	number  uint64
	created time.Time
}

// Measure measures the recovery point of stream::group. holder may be nil.
func Measure(ctx context.Context, src *esdb.Client, holder sinks.Holder, stream, group string, opts Options) (Point, error) {
	if opts.MaxScan <= 0 {
		opts.MaxScan = DefaultMaxScan
	}
	if opts.PageSize <= 0 {
		opts.PageSize = 500
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	p := Point{Stream: stream, Group: group}
	info, err := src.GetPersistentSubscriptionInfo(ctx, stream, group, esdb.GetPersistentSubscriptionOptions{})
	if err != nil {
		return p, fmt.Errorf("reading the group %s::%s on the source: %w", stream, group, err)
	}
	if p.SourceLast, err = esdbconn.LastNumber(ctx, src, stream); err != nil {
		return p, fmt.Errorf("reading %s on the source: %w", stream, err)
	}
	var next uint64
	next, p.Checkpoint = groups.Next(info, p.SourceLast)
	if p.SourceLast < 0 || int64(next) > p.SourceLast {
		p.Exact = true
		return p, nil
	}
	p.AfterCheckpoint = p.SourceLast - int64(next) + 1

	// The events after the checkpoint, up to MaxScan of them.
	var entries []entry
	scanned, last := 0, int64(next)-1
	seen := map[string]bool{}
	var streams []string
	for from := next; scanned < opts.MaxScan && int64(from) <= p.SourceLast; {
		n := min(opts.PageSize, opts.MaxScan-scanned)
		evs, err := read(ctx, src, stream, from, n)
		if err != nil {
			return p, fmt.Errorf("reading %s on the source from %d: %w", stream, from, err)
		}
		for _, ev := range evs {
			scanned++
			last = int64(ev.OriginalEvent().EventNumber)
			rec := ev.Event
			if rec == nil || strings.HasPrefix(rec.StreamID, "$") {
				continue // gone, or a system event: ditto copies neither
			}
			entries = append(entries, entry{rec.StreamID, rec.EventNumber, rec.CreatedDate})
			if !seen[rec.StreamID] {
				seen[rec.StreamID] = true
				streams = append(streams, rec.StreamID)
			}
		}
		if len(evs) < n {
			break
		}
		from = uint64(last) + 1
	}

	var held map[string]int64
	p.Exact = true
	switch {
	case len(streams) == 0:
	case holder == nil:
		p.Exact, p.Unknown = false, "the destination cannot tell what it holds"
	default:
		if held, err = holder.Held(ctx, streams); err != nil {
			p.Exact, p.Unknown = false, err.Error()
		}
	}
	for _, e := range entries {
		if h, ok := held[e.stream]; ok && int64(e.number) <= h {
			continue
		}
		p.Events++
		if p.Oldest.IsZero() || e.created.Before(p.Oldest) {
			p.Oldest = e.created
		}
	}
	// Beyond the scan: all counted, the first one standing for the oldest.
	if rest := p.SourceLast - last; rest > 0 {
		p.Events += rest
		if p.Exact {
			p.Exact, p.Unknown = false, fmt.Sprintf("more than %d events after the checkpoint: those beyond are counted as not copied", opts.MaxScan)
		}
		if p.Oldest.IsZero() {
			if evs, err := read(ctx, src, stream, uint64(last)+1, 1); err == nil && len(evs) == 1 && evs[0].Event != nil {
				p.Oldest = evs[0].Event.CreatedDate
			}
		}
	}
	if p.Events > 0 && !p.Oldest.IsZero() {
		p.Seconds = max(0, opts.Now().Sub(p.Oldest).Seconds())
	}
	return p, nil
}

// read reads up to n events of stream from number from on, links resolved.
func read(ctx context.Context, c *esdb.Client, stream string, from uint64, n int) ([]*esdb.ResolvedEvent, error) {
	rs, err := c.ReadStream(ctx, stream, esdb.ReadStreamOptions{From: esdb.Revision(from), ResolveLinkTos: true}, uint64(n))
	if err != nil {
		return nil, err
	}
	defer rs.Close()
	var out []*esdb.ResolvedEvent
	for len(out) < n {
		ev, err := rs.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, err
		}
		out = append(out, ev)
	}
	return out, nil
}
