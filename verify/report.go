package verify

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
)

// WriteText writes a human summary: one headline, the totals, the notes, one line per stream,
// then the recorded divergences.
func (r *Report) WriteText(w io.Writer) error {
	ew := &errWriter{w: w}
	status := "IDENTICAL"
	if !r.OK() {
		status = "DIVERGED"
	}
	ew.printf("verify: %s: %d streams (%d skipped), %d source events, %d destination events\n",
		status, r.Streams, r.Skipped, r.SourceEvents, r.DestinationEvents)
	ew.printf("missing %d, extra %d, altered %d, out-of-order %d", r.Missing, r.Extra, r.Altered, r.OutOfOrder)
	if r.Corrupted > 0 {
		ew.printf(", corrupted %d", r.Corrupted)
	}
	ew.printf("\n")
	for _, n := range r.Notes {
		ew.printf("note: %s\n", n)
	}
	for i := range r.Results {
		s := &r.Results[i]
		name := s.Stream
		if s.Destination != "" {
			name += " → " + s.Destination
		}
		switch {
		case s.Skipped:
			ew.printf("stream %s: skipped: %s\n", name, s.Note)
		case s.OK():
			ew.printf("stream %s: ok, %d events\n", name, s.SourceEvents)
		default:
			ew.printf("stream %s: DIVERGED, source %d events, destination %d events: %s\n",
				name, s.SourceEvents, s.DestinationEvents, streamCounts(s))
		}
	}
	if len(r.Divergences) > 0 {
		total := r.divergences()
		if r.Truncated {
			ew.printf("divergences (first %d of %d):\n", len(r.Divergences), total)
		} else {
			ew.printf("divergences:\n")
		}
		for _, d := range r.Divergences {
			ew.printf("  %s@%d %s %s", d.Stream, d.EventNumber, d.Kind, d.EventID)
			if d.Detail != "" {
				ew.printf(": %s", d.Detail)
			}
			ew.printf("\n")
		}
	}
	return ew.err
}

// streamCounts lists the non-zero divergence counters of a stream, and its note if any.
func streamCounts(s *StreamResult) string {
	var parts []string
	for _, c := range []struct {
		name string
		n    int
	}{{KindMissing, s.Missing}, {KindExtra, s.Extra}, {KindAltered, s.Altered}, {KindOutOfOrder, s.OutOfOrder}, {KindCorrupted, s.Corrupted}} {
		if c.n > 0 {
			parts = append(parts, fmt.Sprintf("%s %d", c.name, c.n))
		}
	}
	out := strings.Join(parts, ", ")
	if s.Note != "" {
		out += " (" + s.Note + ")"
	}
	return out
}

// WriteJSON writes the report as one indented JSON object, with an extra "ok" field so that
// scripts need not add the counters up themselves.
func (r *Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	if err := enc.Encode(struct {
		OK bool `json:"ok"`
		*Report
	}{r.OK(), r}); err != nil {
		return fmt.Errorf("write JSON report: %w", err)
	}
	return nil
}

// errWriter keeps the first write error so that a long report is not checked line by line.
type errWriter struct {
	w   io.Writer
	err error
}

func (e *errWriter) printf(format string, args ...any) {
	if e.err != nil {
		return
	}
	if _, err := fmt.Fprintf(e.w, format, args...); err != nil {
		e.err = fmt.Errorf("write report: %w", err)
	}
}
