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
)

// side is one stream on one server, read a page at a time. Only the current page is held; its
// ids form the window in which a displaced event is recognised as out-of-order.
type side struct {
	read     readPageFunc
	stream   string
	pageSize int

	page   []*esdb.RecordedEvent
	pos    int    // next event of page to compare
	next   uint64 // event number the next page starts at
	eof    bool   // no page after the current one
	window map[uuid.UUID]uint64
	total  int
}

func newSide(read readPageFunc, stream string, pageSize int) *side {
	return &side{read: read, stream: stream, pageSize: pageSize, window: map[uuid.UUID]uint64{}}
}

// needsPage reports whether the current page is used up and another may follow.
func (s *side) needsPage() bool {
	return s.pos >= len(s.page) && !s.eof
}

// fetch reads the next page. An empty page keeps the previous window, so that an event
// displaced to the very end of the other side is still recognised.
func (s *side) fetch(ctx context.Context) error {
	page, err := s.read(ctx, s.stream, s.next, s.pageSize)
	if err != nil {
		return err
	}
	s.page, s.pos = page, 0
	if len(page) < s.pageSize {
		s.eof = true
	}
	if len(page) == 0 {
		return nil
	}
	s.total += len(page)
	s.next = page[len(page)-1].EventNumber + 1
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

// elsewhere returns the number at which id sits in the window, if it is not number itself.
func (s *side) elsewhere(id uuid.UUID, number uint64) (uint64, bool) {
	n, ok := s.window[id]
	return n, ok && n != number
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
	res := StreamResult{Stream: stream}
	src := newSide(srcRead, stream, pageSize)
	dst := newSide(dstRead, stream, pageSize)
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
			compareEvents(s, d, src, dst, report)
			src.pos++
			dst.pos++
		}
		if src.pos == len(src.page) {
			prog.page(stream, src.total)
		}
	}
}

// compareEvents classifies a source event against the destination event at the same number.
func compareEvents(s, d *esdb.RecordedEvent, src, dst *side, report func(string, *esdb.RecordedEvent, string)) {
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
	if diffs := fieldDiffs(s, d); len(diffs) > 0 {
		report(KindAltered, s, strings.Join(diffs, "; "))
	}
}

// fieldDiffs lists, in words, the fields in which two events differ.
func fieldDiffs(s, d *esdb.RecordedEvent) []string {
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
	if diff := bytesDiff(s.UserMetadata, d.UserMetadata); diff != "" {
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
