// Package verify compares the streams of a source and a destination EventStoreDB/KurrentDB, event by event, so that an operator (and the end-to-end tests) can prove a replication is byte-identical.
package verify

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sort"
	"time"

	"github.com/EventStore/EventStore-Client-Go/v4/esdb"

	"github.com/ditto-replicator/ditto/policy"
)

// DefaultPageSize is the number of events read per page and side when Options.PageSize is not
// set. Memory use of a comparison is about one page per side, whatever the stream length.
const DefaultPageSize = 500

// MaxDivergences caps Report.Divergences: a badly diverged destination can differ in millions of
// events, and the first thousand are enough to diagnose it while the counters stay exact.
const MaxDivergences = 1000

// Kinds of divergence, the values of Divergence.Kind.
const (
	// KindMissing: the event is on the source but not on the destination.
	KindMissing = "missing"
	// KindExtra: the destination has an event at a number the source does not have.
	KindExtra = "extra"
	// KindAltered: both sides have an event at this number but they differ; Detail says in which fields.
	KindAltered = "altered"
	// KindOutOfOrder: the source event's id is on the destination, but at another number.
	KindOutOfOrder = "out-of-order"
	// KindCorrupted: the destination event no longer matches the content signature ($signature)
	// ditto wrote with it: its type, data or metadata changed in transit or at rest.
	KindCorrupted = "corrupted"
)

// Options says what to compare.
type Options struct {
	// Streams are original streams (such as "customer-42") to compare. When empty, the streams
	// linked from Categories are compared instead.
	Streams []string
	// Categories are category streams such as "$ce-customer". Every original stream that has a
	// link in the category on the source is compared. Ignored when Streams is set.
	Categories []string
	// PageSize is the number of events read per request and side; 0 means DefaultPageSize.
	PageSize int
	// Progress, when set, receives a progress line every 1000 streams and at least every
	// 10 seconds of a long run, so that an operator can tell a slow verify from a stuck one.
	Progress io.Writer
	// Policy, when set, is the selective-replication policy ditto replicates under: streams it
	// drops are not compared, each kept stream is compared with the destination stream it maps
	// to, and metadata is compared without the provenance keys ditto writes. Where events are
	// filtered inside streams, a source stream's kept events are matched in order with the
	// destination's events by their provenance; where streams are consolidated, the Categories
	// (subscription streams) are compared in their order with the destination streams.
	Policy *policy.Policy
}

// Divergence is one event that differs between source and destination.
type Divergence struct {
	Stream string `json:"stream"`
	// Kind is KindMissing, KindExtra, KindAltered, KindOutOfOrder or KindCorrupted.
	Kind string `json:"kind"`
	// EventNumber is the number of the event on the source, or on the destination for KindExtra.
	EventNumber uint64 `json:"event_number"`
	// EventID is the id of the source event, or of the destination event for KindExtra.
	EventID string `json:"event_id"`
	// Detail says what differs, in words.
	Detail string `json:"detail,omitempty"`
}

// StreamResult is the outcome for one stream.
type StreamResult struct {
	Stream string `json:"stream"`
	// Destination is the destination stream compared with Stream, where it is another.
	Destination       string `json:"destination,omitempty"`
	SourceEvents      int    `json:"source_events"`
	DestinationEvents int    `json:"destination_events"`
	Missing           int    `json:"missing,omitempty"`
	Extra             int    `json:"extra,omitempty"`
	Altered           int    `json:"altered,omitempty"`
	OutOfOrder        int    `json:"out_of_order,omitempty"`
	Corrupted         int    `json:"corrupted,omitempty"`
	// Skipped is set when the stream could not be compared because the source stream does not
	// exist (never written, or deleted); Note says why.
	Skipped bool   `json:"skipped,omitempty"`
	Note    string `json:"note,omitempty"`
}

// OK reports whether the stream is identical on both sides (a skipped stream counts as OK).
func (s *StreamResult) OK() bool { return s.divergences() == 0 }

// divergences is how many events of the stream diverge, of every kind.
func (s *StreamResult) divergences() int {
	return s.Missing + s.Extra + s.Altered + s.OutOfOrder + s.Corrupted
}

// Report is the result of Compare. The counters are exact; Divergences holds at most
// MaxDivergences entries, and Truncated says whether more were found.
type Report struct {
	// Streams is the number of streams compared, skipped ones included.
	Streams           int `json:"streams"`
	Skipped           int `json:"skipped"`
	SourceEvents      int `json:"source_events"`
	DestinationEvents int `json:"destination_events"`
	Missing           int `json:"missing"`
	Extra             int `json:"extra"`
	Altered           int `json:"altered"`
	OutOfOrder        int `json:"out_of_order"`
	Corrupted         int `json:"corrupted"`

	Divergences []Divergence `json:"divergences"`
	Truncated   bool         `json:"truncated"`

	// Results has one entry per stream, in the order compared.
	Results []StreamResult `json:"results"`
	// Notes are remarks that concern no single stream, such as an empty category.
	Notes []string `json:"notes,omitempty"`
}

// OK reports whether no divergence was found. Skipped streams do not count as divergences: a
// source stream that was deleted is, by design, no longer replicated.
func (r *Report) OK() bool { return r.divergences() == 0 }

// divergences is how many events diverge, of every kind.
func (r *Report) divergences() int {
	return r.Missing + r.Extra + r.Altered + r.OutOfOrder + r.Corrupted
}

// newReport is an empty report, whose lists are empty rather than null in JSON.
func newReport() *Report { return &Report{Divergences: []Divergence{}, Results: []StreamResult{}} }

// addStream counts a compared stream's result in the totals.
func (r *Report) addStream(res StreamResult) {
	r.Streams++
	if res.Skipped {
		r.Skipped++
	}
	r.SourceEvents += res.SourceEvents
	r.DestinationEvents += res.DestinationEvents
	r.Results = append(r.Results, res)
}

func (r *Report) add(d Divergence) {
	switch d.Kind {
	case KindMissing:
		r.Missing++
	case KindExtra:
		r.Extra++
	case KindAltered:
		r.Altered++
	case KindOutOfOrder:
		r.OutOfOrder++
	case KindCorrupted:
		r.Corrupted++
	}
	if len(r.Divergences) < MaxDivergences {
		r.Divergences = append(r.Divergences, d)
	} else {
		r.Truncated = true
	}
}

// Compare reads every selected stream from src and dst, page by page in lockstep, and reports
// how they differ. It only reads: neither side is ever written to.
//
// The streams are those of opts.Streams or, when that is empty, those linked from
// opts.Categories on the source (read without resolving links, so the set of names is all that
// is held in memory). A stream that does not exist on the source is skipped with a note; one
// that does not exist on the destination has all its events reported missing.
//
// Compare returns an error, and no report, when a read fails for another reason (connection,
// permission, cancelled ctx).
func Compare(ctx context.Context, src, dst *esdb.Client, opts Options) (*Report, error) {
	if src == nil || dst == nil {
		return nil, errors.New("verify: source and destination clients are required")
	}
	return compareWith(ctx, readers{src: clientReader(src), dst: clientReader(dst), srcResolved: resolvingReader(src)}, opts)
}

// readers are how compare reads each side.
type readers struct {
	src, dst readPageFunc
	// srcResolved reads the source with links resolved (for consolidated streams).
	srcResolved readPageFunc
}

// compare is Compare over readPageFuncs, so that the comparison itself does not depend on how
// pages are fetched.
func compare(ctx context.Context, src, dst readPageFunc, opts Options) (*Report, error) {
	return compareWith(ctx, readers{src: src, dst: dst}, opts)
}

func compareWith(ctx context.Context, rd readers, opts Options) (*Report, error) {
	src, dst := rd.src, rd.dst
	pol := opts.Policy
	if pol != nil && pol.Trivial() {
		pol = nil
	}
	if opts.PageSize <= 0 {
		opts.PageSize = DefaultPageSize
	}
	if pol != nil && pol.Mode() == policy.Consolidated {
		return compareConsolidated(ctx, rd, pol, opts)
	}
	if len(opts.Streams) == 0 && len(opts.Categories) == 0 {
		return nil, errors.New("verify: no streams or categories to compare")
	}
	rep := newReport()
	prog := newProgress(opts.Progress)

	streams := dedupe(opts.Streams)
	if len(streams) == 0 {
		for _, cat := range dedupe(opts.Categories) {
			names, note, err := enumerateCategory(ctx, src, cat, opts.PageSize, prog)
			if err != nil {
				return nil, err
			}
			if note != "" {
				rep.Notes = append(rep.Notes, note)
			}
			for _, name := range names {
				if pol == nil || pol.KeepsStream(name) {
					streams = append(streams, name)
				}
			}
		}
		// Categories can share streams only through odd naming, but a stream must be compared once.
		streams = dedupe(streams)
		sort.Strings(streams)
	}

	for i, stream := range streams {
		var res StreamResult
		var err error
		if pol == nil {
			res, err = compareStream(ctx, src, dst, stream, opts.PageSize, rep, prog)
		} else {
			res, err = compareMapped(ctx, src, dst, pol, stream, opts.PageSize, rep, prog)
		}
		if err != nil {
			return nil, err
		}
		rep.addStream(res)
		prog.streamDone(i+1, len(streams), rep)
	}
	prog.finish(rep)
	return rep, nil
}

// dedupe returns the non-empty names in order of first appearance.
func dedupe(names []string) []string {
	seen := make(map[string]struct{}, len(names))
	out := make([]string, 0, len(names))
	for _, n := range names {
		if n == "" {
			continue
		}
		if _, ok := seen[n]; ok {
			continue
		}
		seen[n] = struct{}{}
		out = append(out, n)
	}
	return out
}

// progress writes the optional progress lines. It is only used from the goroutine running
// compare.
type progress struct {
	w       io.Writer
	every   int
	period  time.Duration
	last    time.Time
	started time.Time
}

func newProgress(w io.Writer) *progress {
	now := time.Now()
	return &progress{w: w, every: 1000, period: 10 * time.Second, last: now, started: now}
}

// due reports whether a time-based line is owed; long single streams and long enumerations
// call it once per page.
func (p *progress) due() bool {
	return p.w != nil && time.Since(p.last) >= p.period
}

func (p *progress) printf(format string, args ...any) {
	if p.w == nil {
		return
	}
	p.last = time.Now()
	// Progress is best effort: a broken progress writer must not fail the verification.
	_, _ = fmt.Fprintf(p.w, "verify: "+format+"\n", args...)
}

func (p *progress) streamDone(done, total int, r *Report) {
	if p.w == nil || (done%p.every != 0 && !p.due()) {
		return
	}
	p.printf("%d/%d streams, %d source events, %d destination events, %d divergences",
		done, total, r.SourceEvents, r.DestinationEvents, r.divergences())
}

func (p *progress) page(stream string, events int) {
	if p.due() {
		p.printf("%s: %d source events compared so far", stream, events)
	}
}

func (p *progress) enumerating(category string, links, streams int) {
	if p.due() {
		p.printf("%s: %d links read, %d streams found so far", category, links, streams)
	}
}

func (p *progress) finish(r *Report) {
	if p.w == nil {
		return
	}
	p.printf("done in %s: %d streams, %d divergences", time.Since(p.started).Round(time.Millisecond),
		r.Streams, r.divergences())
}
