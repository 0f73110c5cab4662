package verify

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"

	"github.com/EventStore/EventStore-Client-Go/v4/esdb"
	"github.com/google/uuid"

	"github.com/ditto-replicator/ditto/policy"
)

// side is one stream on one server, read a page at a time. Only the current page is held; its
// ids form the window in which a displaced event is recognised as out-of-order.
type side struct {
	pages pager

	page   []*esdb.RecordedEvent
	pos    int  // next event of page to compare
	eof    bool // no page after the current one
	window map[uuid.UUID]uint64
	total  int
	// renumbered says the events' numbers are not their places in the stream (a filtered or
	// consolidated destination, numbered by the provenance ditto wrote): an id in the window is
	// elsewhere whatever its number.
	renumbered bool
}

func newSide(read readPageFunc, stream string, pageSize int) *side {
	return &side{pages: &rawPager{read: read, stream: stream, size: pageSize}, window: map[uuid.UUID]uint64{}}
}

// pager hands out a stream's events a page at a time, in order; eof says no page follows.
type pager interface {
	next(ctx context.Context) (page []*esdb.RecordedEvent, eof bool, err error)
}

// rawPager reads a stream as it is.
type rawPager struct {
	read   readPageFunc
	stream string
	size   int
	from   uint64
}

func (p *rawPager) next(ctx context.Context) ([]*esdb.RecordedEvent, bool, error) {
	page, err := p.read(ctx, p.stream, p.from, p.size)
	if err != nil {
		return nil, false, err
	}
	if len(page) > 0 {
		p.from = page[len(page)-1].EventNumber + 1
	}
	return page, len(page) < p.size, nil
}

// keepPager hands out the events of inner that keep accepts, reading on until it has a page
// of them or the stream ends.
type keepPager struct {
	inner pager
	size  int
	keep  func(*esdb.RecordedEvent) bool
}

func (p *keepPager) next(ctx context.Context) ([]*esdb.RecordedEvent, bool, error) {
	var out []*esdb.RecordedEvent
	for {
		page, eof, err := p.inner.next(ctx)
		if err != nil {
			return nil, false, err
		}
		for _, ev := range page {
			if p.keep(ev) {
				out = append(out, ev)
			}
		}
		if eof || len(out) >= p.size {
			return out, eof, nil
		}
	}
}

// mapPager hands out the events of inner as fn maps them.
type mapPager struct {
	inner pager
	fn    func(*esdb.RecordedEvent) *esdb.RecordedEvent
}

func (p *mapPager) next(ctx context.Context) ([]*esdb.RecordedEvent, bool, error) {
	page, eof, err := p.inner.next(ctx)
	out := make([]*esdb.RecordedEvent, len(page))
	for i, ev := range page {
		out[i] = p.fn(ev)
	}
	return out, eof, err
}

// needsPage reports whether the current page is used up and another may follow.
func (s *side) needsPage() bool {
	return s.pos >= len(s.page) && !s.eof
}

// fetch reads the next page. An empty page keeps the previous window, so that an event
// displaced to the very end of the other side is still recognised.
func (s *side) fetch(ctx context.Context) error {
	page, eof, err := s.pages.next(ctx)
	if err != nil {
		return err
	}
	s.page, s.pos = page, 0
	s.eof = eof
	if len(page) == 0 {
		return nil
	}
	s.total += len(page)
	clear(s.window)
	for _, ev := range page {
		s.window[ev.EventID] = ev.EventNumber
	}
	return nil
}

// head returns the next event to compare, or nil at the end of the stream. Call it only after
// fetching when needsPage says so.
func (s *side) head() *esdb.RecordedEvent {
	if s.pos < len(s.page) {
		return s.page[s.pos]
	}
	return nil
}

// elsewhere returns the number at which id sits in the window, if it is not number itself (or,
// on a renumbered side, wherever it is: it is not where the merge looks for it).
func (s *side) elsewhere(id uuid.UUID, number uint64) (uint64, bool) {
	n, ok := s.window[id]
	return n, ok && (n != number || s.renumbered)
}

// fetchBoth refills whichever sides need a page; when both do (the usual case, since both sides
// are read in lockstep from the same numbers) the two reads run concurrently.
func fetchBoth(ctx context.Context, src, dst *side) (srcErr, dstErr error) {
	switch {
	case src.needsPage() && dst.needsPage():
		var wg sync.WaitGroup
		wg.Go(func() { dstErr = dst.fetch(ctx) })
		srcErr = src.fetch(ctx)
		wg.Wait()
	case src.needsPage():
		srcErr = src.fetch(ctx)
	case dst.needsPage():
		dstErr = dst.fetch(ctx)
	}
	return srcErr, dstErr
}

// compareStream compares one stream and records its divergences in rep.
//
// Both sides are merged by event number. Every source event is classified exactly once: equal,
// altered, out-of-order (its id is on the destination at another number within the current
// page) or missing; every destination event at a number the source lacks is extra.
func compareStream(ctx context.Context, srcRead, dstRead readPageFunc, stream string, pageSize int, rep *Report, prog *progress) (StreamResult, error) {
	return compareSides(ctx, newSide(srcRead, stream, pageSize), newSide(dstRead, stream, pageSize), StreamResult{Stream: stream}, &rules{}, rep, prog)
}

// rules are what a policy changes in the comparison of two events.
type rules struct {
	// userMetadata compares metadata without the keys ditto writes (provenance).
	userMetadata bool
	// foreign, if set, says why a destination event cannot stand for any source event here
	// (it carries no provenance of this stream), or "".
	foreign func(*esdb.RecordedEvent) string
}

// compareSides merges src and dst, as compareStream describes, into res.
func compareSides(ctx context.Context, src, dst *side, res StreamResult, rules *rules, rep *Report, prog *progress) (StreamResult, error) {
	stream := res.Stream
	report := func(kind string, ev *esdb.RecordedEvent, detail string) {
		switch kind {
		case KindMissing:
			res.Missing++
		case KindExtra:
			res.Extra++
		case KindAltered:
			res.Altered++
		case KindOutOfOrder:
			res.OutOfOrder++
		case KindCorrupted:
			res.Corrupted++
		}
		rep.add(Divergence{Stream: stream, Kind: kind, EventNumber: ev.EventNumber, EventID: ev.EventID.String(), Detail: detail})
	}

	for {
		if err := ctx.Err(); err != nil {
			return res, fmt.Errorf("verify %q: %w", stream, err)
		}
		srcErr, dstErr := fetchBoth(ctx, src, dst)
		switch {
		case errors.Is(srcErr, errStreamNotFound), errors.Is(srcErr, errStreamDeleted):
			if src.total == 0 {
				res.Skipped = true
				res.Note = "source stream not found (never written or deleted); skipped"
				if errors.Is(srcErr, errStreamDeleted) {
					res.Note = "source stream is tombstoned; skipped"
				}
				// The destination is not judged, so its events (a page may have been read
				// concurrently) are not counted either.
				return res, nil
			}
			// Deleted while being compared: what was read so far cannot be judged either.
			return res, fmt.Errorf("verify %q: source stream vanished during the comparison: %w", stream, srcErr)
		case srcErr != nil:
			return res, fmt.Errorf("verify %q on source: %w", stream, srcErr)
		}
		switch {
		case errors.Is(dstErr, errStreamNotFound), errors.Is(dstErr, errStreamDeleted):
			// Nothing readable on the destination: every source event is missing.
			dst.page, dst.pos, dst.eof = nil, 0, true
			if res.Note == "" {
				res.Note = "destination stream not found"
				if errors.Is(dstErr, errStreamDeleted) {
					res.Note = "destination stream is tombstoned"
				}
			}
		case dstErr != nil:
			return res, fmt.Errorf("verify %q on destination: %w", stream, dstErr)
		}

		s, d := src.head(), dst.head()
		if d != nil && rules.foreign != nil {
			if why := rules.foreign(d); why != "" {
				report(KindExtra, d, why)
				dst.pos++
				continue
			}
		}
		switch {
		case s == nil && d == nil:
			res.SourceEvents, res.DestinationEvents = src.total, dst.total
			return res, nil
		case d == nil || (s != nil && s.EventNumber < d.EventNumber):
			if n, ok := dst.elsewhere(s.EventID, s.EventNumber); ok {
				report(KindOutOfOrder, s, fmt.Sprintf("on the destination at event number %d", n))
			} else {
				report(KindMissing, s, "")
			}
			src.pos++
		case s == nil || d.EventNumber < s.EventNumber:
			detail := ""
			if n, ok := src.elsewhere(d.EventID, d.EventNumber); ok {
				detail = fmt.Sprintf("same id as source event number %d", n)
			}
			report(KindExtra, d, detail)
			dst.pos++
		default:
			compareEvents(s, d, src, dst, rules, report)
			src.pos++
			dst.pos++
		}
		if src.pos == len(src.page) {
			prog.page(stream, src.total)
		}
	}
}

// compareEvents classifies a source event against the destination event at the same number.
func compareEvents(s, d *esdb.RecordedEvent, src, dst *side, rules *rules, report func(string, *esdb.RecordedEvent, string)) {
	if s.EventID != d.EventID {
		if n, ok := dst.elsewhere(s.EventID, s.EventNumber); ok {
			report(KindOutOfOrder, s, fmt.Sprintf("on the destination at event number %d", n))
			return
		}
		if n, ok := src.elsewhere(d.EventID, d.EventNumber); ok {
			// The destination holds a displaced copy of source event n here; this event itself
			// is not on the destination (as far as the window shows).
			report(KindMissing, s, fmt.Sprintf("destination has source event number %d (%s) at this number", n, d.EventID))
			return
		}
	}
	if why := signatureMismatch(d); why != "" {
		report(KindCorrupted, s, why)
		return
	}
	if diffs := fieldDiffs(s, d, rules.userMetadata); len(diffs) > 0 {
		report(KindAltered, s, strings.Join(diffs, "; "))
	}
}

// signatureMismatch says how d differs from the content signature it carries, or "" if it
// carries none or it matches.
func signatureMismatch(d *esdb.RecordedEvent) string {
	if !bytes.Contains(d.UserMetadata, []byte(`"`+policy.KeySignature+`"`)) {
		return ""
	}
	prov, ok := policy.ParseProvenance(d.UserMetadata)
	if !ok || prov.Signature == "" {
		return ""
	}
	got, err := policy.Signature(d.EventType, d.Data, d.UserMetadata)
	if err != nil || got != prov.Signature {
		return fmt.Sprintf("its type, data or metadata no longer match its %s %s", policy.KeySignature, prov.Signature)
	}
	return ""
}

// fieldDiffs lists, in words, the fields in which two events differ; with userMetadata,
// metadata is compared without the keys ditto writes where both are JSON objects.
func fieldDiffs(s, d *esdb.RecordedEvent, userMetadata bool) []string {
	var diffs []string
	if s.EventID != d.EventID {
		diffs = append(diffs, fmt.Sprintf("id: source %s, destination %s", s.EventID, d.EventID))
	}
	if s.EventType != d.EventType {
		diffs = append(diffs, fmt.Sprintf("type: source %q, destination %q", s.EventType, d.EventType))
	}
	if s.ContentType != d.ContentType {
		diffs = append(diffs, fmt.Sprintf("content type: source %q, destination %q", s.ContentType, d.ContentType))
	}
	if diff := bytesDiff(s.Data, d.Data); diff != "" {
		diffs = append(diffs, "data: "+diff)
	}
	sm, dm := s.UserMetadata, d.UserMetadata
	if userMetadata {
		if su, err := policy.UserMetadata(sm); err == nil {
			if du, err := policy.UserMetadata(dm); err == nil {
				sm, dm = su, du
			}
		}
	}
	if diff := bytesDiff(sm, dm); diff != "" {
		diffs = append(diffs, "metadata: "+diff)
	}
	return diffs
}

// bytesDiff describes where two byte slices first differ, or returns "" when they are equal.
// It never prints the bytes themselves: they may be large, binary or confidential.
func bytesDiff(a, b []byte) string {
	if bytes.Equal(a, b) {
		return ""
	}
	i := 0
	for i < len(a) && i < len(b) && a[i] == b[i] {
		i++
	}
	return fmt.Sprintf("first difference at byte %d (source %d bytes, destination %d bytes)", i, len(a), len(b))
}
