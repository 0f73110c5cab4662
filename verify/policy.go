package verify

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"

	"github.com/EventStore/EventStore-Client-Go/v4/esdb"

	"github.com/ditto-replicator/ditto/policy"
)

// compareMapped compares source stream stream with the destination stream the policy maps it
// to. In the plain and mapped modes both have the same numbers. Where events are filtered
// inside streams, the source's kept events are merged with the destination's events numbered
// by the source number their provenance records ($originalEventNumber).
func compareMapped(ctx context.Context, src, dst readPageFunc, pol *policy.Policy, stream string, pageSize int, rep *Report, prog *progress) (StreamResult, error) {
	dest := pol.Destination(stream)
	res := StreamResult{Stream: stream}
	if dest != stream {
		res.Destination = dest
	}
	if dest == "" {
		res.Skipped = true
		res.Note = "DITTO_STREAM_TEMPLATE maps the stream to an empty name (ditto parks its events); skipped"
		return res, nil
	}
	s, d := newSide(src, stream, pageSize), newSide(dst, dest, pageSize)
	r := &rules{userMetadata: pol.Provenance()}
	if pol.Sequenced() {
		s.pages = &keepPager{inner: s.pages, size: pageSize, keep: func(ev *esdb.RecordedEvent) bool { return pol.Writes(dest, ev) }}
		recorded := func(ev *esdb.RecordedEvent) (uint64, string) {
			prov, ok := policy.ParseProvenance(ev.UserMetadata)
			switch {
			case !ok || !prov.HasOriginalEventNumber:
				return 0, "carries no provenance (" + policy.KeyOriginalEventNumber + ")"
			case prov.OriginalStreamID != stream:
				return 0, fmt.Sprintf("comes from source stream %q", prov.OriginalStreamID)
			}
			return prov.OriginalEventNumber, ""
		}
		renumber(d, r, recorded)
	}
	return compareSides(ctx, s, d, res, r, rep, prog)
}

// renumber numbers d's events by what their provenance records, and makes r report those that
// record none as extra.
func renumber(d *side, r *rules, recorded func(*esdb.RecordedEvent) (uint64, string)) {
	d.renumbered = true
	d.pages = &mapPager{inner: d.pages, fn: func(ev *esdb.RecordedEvent) *esdb.RecordedEvent {
		n, why := recorded(ev)
		if why != "" {
			return ev
		}
		c := *ev
		c.EventNumber = n
		return &c
	}}
	r.foreign = func(ev *esdb.RecordedEvent) string {
		_, why := recorded(ev)
		return why
	}
}

// compareConsolidated compares, for each subscription stream in opts.Categories, the events
// the policy keeps of it, in its order, with each destination stream they consolidate into,
// whose events are numbered by the subscription number their provenance records
// ($subscriptionEventNumber). Each source stream's kept events are then in the destination
// stream in order, and interleaved as the subscription delivered them.
func compareConsolidated(ctx context.Context, rd readers, pol *policy.Policy, opts Options) (*Report, error) {
	if len(opts.Streams) > 0 {
		return nil, errors.New("verify: streams are consolidated (DITTO_STREAM_TEMPLATE): compare the subscription streams they come from, with --category")
	}
	if len(opts.Categories) == 0 {
		return nil, errors.New("verify: no subscription streams to compare")
	}
	if rd.srcResolved == nil {
		return nil, errors.New("verify: consolidated streams need a source reader that resolves links")
	}
	rep := newReport()
	prog := newProgress(opts.Progress)
	type pair struct{ seq, dest string }
	var pairs []pair
	for _, cat := range dedupe(opts.Categories) {
		seq := CategoryStream(cat)
		names, note, err := enumerateCategory(ctx, rd.src, seq, opts.PageSize, prog)
		if err != nil {
			return nil, err
		}
		if note != "" {
			rep.Notes = append(rep.Notes, note)
		}
		dests := map[string]bool{}
		for _, name := range names {
			if pol.KeepsStream(name) {
				dests[pol.Destination(name)] = true
			}
		}
		for _, dest := range slices.Sorted(maps.Keys(dests)) {
			pairs = append(pairs, pair{seq, dest})
		}
	}
	for i, p := range pairs {
		s, d := newSide(rd.srcResolved, p.seq, opts.PageSize), newSide(rd.dst, p.dest, opts.PageSize)
		s.pages = &keepPager{inner: s.pages, size: opts.PageSize, keep: func(ev *esdb.RecordedEvent) bool { return pol.Writes(p.dest, ev) }}
		r := &rules{userMetadata: true}
		renumber(d, r, func(ev *esdb.RecordedEvent) (uint64, string) {
			prov, ok := policy.ParseProvenance(ev.UserMetadata)
			switch {
			case !ok || !prov.HasSubscriptionNumber:
				return 0, "carries no provenance (" + policy.KeySubscriptionEventNumber + ")"
			case prov.SubscriptionStreamID != p.seq:
				return 0, fmt.Sprintf("was consolidated from %q", prov.SubscriptionStreamID)
			}
			return prov.SubscriptionEventNumber, ""
		})
		res, err := compareSides(ctx, s, d, StreamResult{Stream: p.seq, Destination: p.dest}, r, rep, prog)
		if err != nil {
			return nil, err
		}
		rep.addStream(res)
		prog.streamDone(i+1, len(pairs), rep)
	}
	prog.finish(rep)
	return rep, nil
}

// resolvingReader reads pages of a stream of links with the links resolved: each element is
// the linked event, numbered by its link's number in the stream read (an unresolved link is a
// "$"-stream placeholder, which no policy writes).
func resolvingReader(c *esdb.Client) readPageFunc {
	return pageReader(c, true, func(ev *esdb.ResolvedEvent) *esdb.RecordedEvent {
		orig := ev.OriginalEvent()
		switch {
		case orig == nil:
			return nil
		case ev.Event == nil:
			return &esdb.RecordedEvent{StreamID: "$unresolved", EventNumber: orig.EventNumber}
		}
		rec := *ev.Event
		rec.EventNumber = orig.EventNumber
		return &rec
	})
}
