// Package groups copies persistent subscription groups from a source to its
// replica, so that consumers that fail over find their groups there, each
// placed where its source checkpoint says: no event after the checkpoint is
// skipped.
//
// Numbers of a category stream ($ce-customer) differ between the clusters,
// since the destination interleaves the original streams as ditto wrote
// them, so a checkpoint cannot be copied as a number. It is mapped through
// the original events instead: each $ce- link's data is "n@stream". The
// events after the source checkpoint are read from the source; for each
// original stream the first of them is looked up in the destination's
// category stream, and the destination group starts at the smallest of
// those positions. Events at or after that position that the source had
// already delivered before its checkpoint (other streams' events that
// ditto wrote later than on the source) are delivered again: the replays.
package groups

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/EventStore/EventStore-Client-Go/v4/esdb"

	"github.com/ditto-replicator/ditto/internal/esdbconn"
)

// Group names a persistent subscription group on a stream.
type Group struct {
	Stream string `json:"stream"`
	Name   string `json:"group"`
}

func (g Group) String() string { return g.Stream + "::" + g.Name }

// Outcomes of a group's copy, the values of Result.Outcome.
const (
	OutcomeCreated  = "created"
	OutcomeReplaced = "replaced"
	OutcomeExists   = "exists" // on the destination already, left as it is
	OutcomePlanned  = "planned"
	OutcomeFailed   = "failed"
)

// Result is what happened to one group.
type Result struct {
	Group
	Outcome string `json:"outcome"`
	// Checkpoint is the source group's last checkpointed event number in
	// Stream, or nil without a checkpoint (the group's own start applies,
	// as on a restart of the source).
	Checkpoint *uint64 `json:"source_checkpoint,omitempty"`
	// Next is the source position of the first event after the checkpoint.
	Next uint64 `json:"source_next"`
	// After is how many events follow the checkpoint on the source (events
	// of system streams, which ditto does not copy, left out).
	After int `json:"events_after_checkpoint"`
	// NotYetCopied is how many of the original streams with events after
	// the checkpoint do not have the first of them on the destination yet;
	// they will arrive after Start.
	NotYetCopied int `json:"streams_not_yet_copied"`
	// Start is the destination group's start revision in Stream.
	Start uint64 `json:"destination_start"`
	// Replays is how many events from Start to the destination stream's
	// current end were before the checkpoint on the source (or are not from
	// it): the group delivers them again.
	Replays int `json:"replays"`
	// Error says why the group could not be copied.
	Error string `json:"error,omitempty"`
}

// Options say what to copy.
type Options struct {
	// Groups to copy. Empty: every group of Streams on the source, except
	// those named in Exclude.
	Groups  []Group
	Streams []string
	// Exclude are groups never copied (ditto's own groups, which only ditto
	// reads).
	Exclude []Group
	// Replace deletes a group that exists on the destination and creates it
	// anew; without it such a group is left as it is.
	Replace bool
	// DryRun computes every placement and creates nothing.
	DryRun bool
	// PageSize is the events read per request; 0 means 500.
	PageSize int
}

// Copy copies the groups and returns a result for each. It returns an error
// only when the groups to copy cannot be listed; a group that fails has
// OutcomeFailed and its error.
func Copy(ctx context.Context, src, dst *esdb.Client, opts Options) ([]Result, error) {
	if opts.PageSize <= 0 {
		opts.PageSize = 500
	}
	groups := opts.Groups
	if len(groups) == 0 {
		var err error
		if groups, err = list(ctx, src, opts.Streams, opts.Exclude); err != nil {
			return nil, err
		}
	}
	out := make([]Result, 0, len(groups))
	for _, g := range groups {
		r := Result{Group: g}
		if err := copyGroup(ctx, src, dst, opts, &r); err != nil {
			r.Outcome, r.Error = OutcomeFailed, err.Error()
		}
		out = append(out, r)
	}
	return out, nil
}

// list returns the source's groups on streams, less exclude.
func list(ctx context.Context, src *esdb.Client, streams []string, exclude []Group) ([]Group, error) {
	skip := map[Group]bool{}
	for _, g := range exclude {
		skip[g] = true
	}
	var out []Group
	for _, stream := range streams {
		infos, err := src.ListPersistentSubscriptionsForStream(ctx, stream, esdb.ListPersistentSubscriptionsOptions{})
		if hasCode(err, esdb.ErrorCodeResourceNotFound) {
			continue // no group was ever created on the stream
		}
		if err != nil {
			return nil, fmt.Errorf("listing the groups of %s on the source: %w", stream, err)
		}
		for _, info := range infos {
			g := Group{Stream: stream, Name: info.GroupName}
			if !skip[g] {
				out = append(out, g)
			}
		}
	}
	return out, nil
}

func copyGroup(ctx context.Context, src, dst *esdb.Client, opts Options, r *Result) error {
	info, err := src.GetPersistentSubscriptionInfo(ctx, r.Stream, r.Name, esdb.GetPersistentSubscriptionOptions{})
	if err != nil {
		return fmt.Errorf("reading the group on the source: %w", err)
	}
	if info.Settings == nil {
		return errors.New("the source reported no settings for the group")
	}
	switch st := info.Settings.ConsumerStrategyName; st {
	case esdb.ConsumerStrategyRoundRobin, esdb.ConsumerStrategyDispatchToSingle, esdb.ConsumerStrategyPinned:
	default:
		// The client can create groups with these three only.
		return fmt.Errorf("the group's consumer strategy %q cannot be created through the client; create the group on the destination by hand", st)
	}
	if err := place(ctx, src, dst, info, opts.PageSize, r); err != nil {
		return err
	}
	exists := true
	if _, err := dst.GetPersistentSubscriptionInfo(ctx, r.Stream, r.Name, esdb.GetPersistentSubscriptionOptions{}); hasCode(err, esdb.ErrorCodeResourceNotFound) {
		exists = false
	} else if err != nil {
		return fmt.Errorf("looking for the group on the destination: %w", err)
	}
	switch {
	case opts.DryRun:
		r.Outcome = OutcomePlanned
		if exists && !opts.Replace {
			r.Outcome = OutcomeExists
		}
		return nil
	case exists && !opts.Replace:
		r.Outcome = OutcomeExists
		return nil
	case exists:
		if err := dst.DeletePersistentSubscription(ctx, r.Stream, r.Name, esdb.DeletePersistentSubscriptionOptions{}); err != nil {
			return fmt.Errorf("deleting the group on the destination: %w", err)
		}
	}
	settings := *info.Settings
	settings.StartFrom = nil
	if err := dst.CreatePersistentSubscription(ctx, r.Stream, r.Name, esdb.PersistentStreamSubscriptionOptions{
		Settings: &settings, StartFrom: esdb.Revision(r.Start),
	}); err != nil {
		return fmt.Errorf("creating the group on the destination: %w", err)
	}
	r.Outcome = OutcomeCreated
	if exists {
		r.Outcome = OutcomeReplaced
	}
	return nil
}

// place computes where the destination group starts (see the package doc).
func place(ctx context.Context, src, dst *esdb.Client, info *esdb.PersistentSubscriptionInfo, page int, r *Result) error {
	srcLast, err := esdbconn.LastNumber(ctx, src, r.Stream)
	if err != nil {
		return fmt.Errorf("reading %s on the source: %w", r.Stream, err)
	}
	r.Next, r.Checkpoint = Next(info, srcLast)
	// The first event after the checkpoint of each original stream.
	first := map[string]uint64{}
	var order []string
	if srcLast >= 0 && r.Next <= uint64(srcLast) {
		err := readForwards(ctx, src, r.Stream, r.Next, page, func(ev *esdb.RecordedEvent) bool {
			stream, n, ok := original(ev)
			if !ok || strings.HasPrefix(stream, "$") {
				return true // not copied by ditto
			}
			r.After++
			if _, seen := first[stream]; !seen {
				first[stream] = n
				order = append(order, stream)
			}
			return true
		})
		if err != nil {
			return fmt.Errorf("reading %s on the source from %d: %w", r.Stream, r.Next, err)
		}
	}
	dstLast, err := esdbconn.LastNumber(ctx, dst, r.Stream)
	if err != nil {
		return fmt.Errorf("reading %s on the destination: %w", r.Stream, err)
	}
	r.Start = uint64(dstLast + 1)
	// Streams whose first event after the checkpoint is on the destination
	// already; the others' events arrive after the destination's end.
	wanted := map[string]bool{}
	for _, stream := range order {
		ok, err := has(ctx, dst, stream, first[stream])
		if err != nil {
			return fmt.Errorf("reading %s on the destination: %w", stream, err)
		}
		if ok {
			wanted[stream] = true
		} else {
			r.NotYetCopied++
		}
	}
	if len(wanted) == 0 || dstLast < 0 {
		return nil
	}
	// Back from the destination's end until every wanted event's link is
	// found: the last found is the start, and what was read on the way
	// that is not after the checkpoint is replayed.
	replays := 0
	err = readBackwards(ctx, dst, r.Stream, page, func(ev *esdb.RecordedEvent) bool {
		stream, n, ok := original(ev)
		after, known := first[stream]
		if !ok || !known || n < after {
			replays++
			return true
		}
		if n == after && wanted[stream] {
			delete(wanted, stream)
			r.Start = ev.EventNumber
			r.Replays = replays
		}
		return len(wanted) > 0
	})
	if err != nil {
		return fmt.Errorf("reading %s on the destination: %w", r.Stream, err)
	}
	// A wanted event whose link is not in the destination's stream (the
	// stream was truncated there) is never delivered by the group anyway.
	return nil
}

// Next returns the position in the group's stream of the first event after
// its checkpoint, and the checkpoint. Without a checkpoint it is the group's
// own start (for End, the stream's end now, sourceLast being its last event
// number or -1), where the source itself would resume after a restart.
func Next(info *esdb.PersistentSubscriptionInfo, sourceLast int64) (uint64, *uint64) {
	if st := info.Stats; st != nil && st.LastCheckpointedEventRevision != nil {
		c := *st.LastCheckpointedEventRevision
		return c + 1, &c
	}
	var from any
	if info.Settings != nil {
		from = info.Settings.StartFrom
	}
	switch from := from.(type) {
	case esdb.StreamRevision:
		return from.Value, nil
	case esdb.End:
		return uint64(sourceLast + 1), nil
	}
	return 0, nil // esdb.Start
}

// original returns the original stream and number an event of a
// subscription stream stands for: a link's target ("n@stream"), or the
// event itself.
func original(ev *esdb.RecordedEvent) (string, uint64, bool) {
	if ev.EventType != "$>" {
		return ev.StreamID, ev.EventNumber, true
	}
	return esdbconn.ParseLink(ev.Data)
}

// has reports whether stream holds event number n.
func has(ctx context.Context, c *esdb.Client, stream string, n uint64) (bool, error) {
	evs, err := readPage(ctx, c, stream, esdb.ReadStreamOptions{From: esdb.Revision(n)}, 1)
	return len(evs) == 1 && evs[0].EventNumber == n, err
}

// readForwards calls fn with the events of stream from number from on, in
// pages, until the end or until fn returns false.
func readForwards(ctx context.Context, c *esdb.Client, stream string, from uint64, page int, fn func(*esdb.RecordedEvent) bool) error {
	for {
		evs, err := readPage(ctx, c, stream, esdb.ReadStreamOptions{From: esdb.Revision(from)}, page)
		if err != nil {
			return err
		}
		for _, ev := range evs {
			if !fn(ev) {
				return nil
			}
		}
		if len(evs) < page {
			return nil
		}
		from = evs[len(evs)-1].EventNumber + 1
	}
}

// readBackwards calls fn with the events of stream from its end back, in
// pages, until the start or until fn returns false.
func readBackwards(ctx context.Context, c *esdb.Client, stream string, page int, fn func(*esdb.RecordedEvent) bool) error {
	var from esdb.StreamPosition = esdb.End{}
	for {
		evs, err := readPage(ctx, c, stream, esdb.ReadStreamOptions{Direction: esdb.Backwards, From: from}, page)
		if err != nil {
			return err
		}
		for _, ev := range evs {
			if !fn(ev) {
				return nil
			}
		}
		if len(evs) == 0 {
			return nil
		}
		last := evs[len(evs)-1].EventNumber
		if len(evs) < page || last == 0 {
			return nil
		}
		from = esdb.Revision(last - 1)
	}
}

// readPage reads up to n events without resolving links; a stream that
// does not exist reads as empty.
func readPage(ctx context.Context, c *esdb.Client, stream string, opts esdb.ReadStreamOptions, n int) ([]*esdb.RecordedEvent, error) {
	rs, err := c.ReadStream(ctx, stream, opts, uint64(n))
	if err != nil {
		if hasCode(err, esdb.ErrorCodeResourceNotFound) {
			return nil, nil
		}
		return nil, err
	}
	defer rs.Close()
	var out []*esdb.RecordedEvent
	for len(out) < n {
		ev, err := rs.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if hasCode(err, esdb.ErrorCodeResourceNotFound) {
			return nil, nil
		}
		if err != nil {
			return nil, err
		}
		out = append(out, ev.OriginalEvent())
	}
	return out, nil
}

func hasCode(err error, code esdb.ErrorCode) bool {
	var e *esdb.Error
	return errors.As(err, &e) && e.Code() == code
}
