package esdbtest

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
)

func newMemStore(t *testing.T) *Store {
	t.Helper()
	s, err := NewStore("")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func setMeta(t *testing.T, s *Store, stream, json string) {
	t.Helper()
	if _, err := s.Append("$$"+stream, Expected{Kind: ExpectAny}, []ProposedEvent{{ID: uuid.New(), Type: "$metadata", IsJSON: true, Data: []byte(json)}}); err != nil {
		t.Fatal(err)
	}
}

// TestMaxAgeHidesEventsAndLinks: $maxAge applies at read time to the stream
// and to links that point into it, never to $all.
func TestMaxAgeHidesEventsAndLinks(t *testing.T) {
	s := newMemStore(t)
	if _, err := s.Append("aged-1", Expected{Kind: ExpectAny}, proposed(2)); err != nil {
		t.Fatal(err)
	}
	setMeta(t, s, "aged-1", `{"$maxAge":1}`)
	visible := func() int {
		recs, err := s.ReadStream("aged-1", 0, true, 10, false)
		if err != nil {
			t.Fatal(err)
		}
		return len(recs)
	}
	if n := visible(); n != 2 {
		t.Fatalf("%d visible right after the append, want 2", n)
	}
	waitFor(t, 10*time.Second, "events older than $maxAge to disappear", func() bool { return visible() == 0 })
	links, err := s.ReadStream("$ce-aged", 0, true, 10, true)
	if err != nil || len(links) != 2 || links[0].Event != nil || links[0].Link == nil {
		t.Fatalf("$ce-aged links should be unresolved once expired: %+v, %v", links, err)
	}
	n := 0
	for _, r := range s.ReadAll(0, true, 1000, false) {
		if r.Event.Stream == "aged-1" {
			n++
		}
	}
	if n != 2 {
		t.Fatalf("$all holds %d of the expired events, want 2", n)
	}
}

func TestMetadataRules(t *testing.T) {
	s := newMemStore(t)
	if _, err := s.Append("rules-1", Expected{Kind: ExpectAny}, proposed(5)); err != nil {
		t.Fatal(err)
	}
	numbers := func(forward bool) []int64 {
		recs, err := s.ReadStream("rules-1", -1, forward, 10, false)
		if forward {
			recs, err = s.ReadStream("rules-1", 0, forward, 10, false)
		}
		if err != nil {
			t.Fatal(err)
		}
		var out []int64
		for _, r := range recs {
			out = append(out, r.Event.Number)
		}
		return out
	}
	setMeta(t, s, "rules-1", `{"$maxCount":2,"$tb":1}`)
	if got := numbers(true); len(got) != 2 || got[0] != 3 {
		t.Fatalf("$maxCount 2 with $tb 1: %v, want [3 4]", got)
	}
	setMeta(t, s, "rules-1", `{"$maxCount":-1,"$tb":4}`)
	if got := numbers(false); len(got) != 1 || got[0] != 4 {
		t.Fatalf("$tb 4, negative $maxCount ignored: %v, want [4]", got)
	}
	// Malformed metadata, or metadata not flagged as JSON, counts as none.
	setMeta(t, s, "rules-1", `{"$tb":"x"}`)
	if got := numbers(true); len(got) != 5 {
		t.Fatalf("malformed metadata: %v, want all 5", got)
	}
	if _, err := s.Append("$$rules-1", Expected{Kind: ExpectAny}, []ProposedEvent{{ID: uuid.New(), Type: "$metadata", Data: []byte(`{"$tb":3}`)}}); err != nil {
		t.Fatal(err)
	}
	if got := numbers(true); len(got) != 5 {
		t.Fatalf("non-JSON metadata: %v, want all 5", got)
	}
	// $$S has an implicit $maxCount of 1: the latest metadata only.
	meta, err := s.ReadStream("$$rules-1", 0, true, 10, false)
	if err != nil || len(meta) != 1 || meta[0].Event.Number != 3 {
		t.Fatalf("$$rules-1 forwards: %+v, %v; want only event 3", meta, err)
	}
	if _, err := s.ReadStream("never-1", 0, true, 10, false); !errors.Is(err, ErrStreamNotFound) {
		t.Fatalf("missing stream: %v", err)
	}
}

func TestResolveLeavesNonLinksAlone(t *testing.T) {
	s := newMemStore(t)
	if _, err := s.Append("weird-1", Expected{Kind: ExpectAny}, []ProposedEvent{
		{ID: uuid.New(), Type: "$>", Data: []byte("not a link")},
		{ID: uuid.New(), Type: "$>", Data: []byte("7@missing")},
	}); err != nil {
		t.Fatal(err)
	}
	recs, err := s.ReadStream("weird-1", 0, true, 10, true)
	if err != nil || len(recs) != 2 {
		t.Fatal(recs, err)
	}
	if recs[0].Event == nil || recs[0].Link != nil {
		t.Fatalf("$> with non-link data must come back as a plain event: %+v", recs[0])
	}
	if recs[1].Event != nil || recs[1].Link == nil {
		t.Fatalf("a link to a missing stream must be unresolved: %+v", recs[1])
	}
}

// The links the store writes carry their target stream's ref
// (Record.target), so that resolving them skips the parse and the lookup of
// its name. They must resolve exactly as their data does, whatever later
// happens to the target ($tb, $maxCount, soft delete and undelete,
// tombstone), also when they were read back from the log file, which gives
// links written by clients a target too.
func TestLinkTargetsResolveAsTheirData(t *testing.T) {
	dir := t.TempDir()
	s, err := NewStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { s.Close() }()
	reopen := func() {
		t.Helper()
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		if s, err = NewStore(dir); err != nil {
			t.Fatal(err)
		}
	}
	clientLinks := []string{"1@tgt-2", "-1@tgt-2", "-0@tgt-2", "0@nowhere"}
	// check compares the resolution of every $ce-tgt link with that of its
	// data alone, and returns the "<stream>/<n>" of those that resolve.
	check := func(step string, want ...string) {
		t.Helper()
		links, err := s.ReadStream("$ce-tgt", 0, true, 1000, false)
		if err != nil {
			t.Fatalf("%s: %v", step, err)
		}
		var got []string
		for _, l := range links {
			rec := l.Event
			projected := !strings.Contains(string(rec.Data), "@$$") && !slices.Contains(clientLinks, string(rec.Data))
			if projected && rec.target == 0 {
				t.Fatalf("%s: link %q has no target", step, rec.Data)
			}
			bare := *rec
			bare.target = 0
			r, want := s.Resolve(rec), s.Resolve(&bare)
			if r.Event != want.Event || r.Link != rec || want.Link != &bare {
				t.Fatalf("%s: link %q resolves to %+v, its data to %+v", step, rec.Data, r.Event, want.Event)
			}
			if r.Event != nil {
				got = append(got, fmt.Sprintf("%s/%d", r.Event.Stream, r.Event.Number))
			}
		}
		if !slices.Equal(got, want) {
			t.Fatalf("%s: resolved %v, want %v", step, got, want)
		}
	}
	if _, err := s.Append("tgt-1", Expected{Kind: ExpectAny}, proposed(5)); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Append("tgt-2", Expected{Kind: ExpectAny}, proposed(2)); err != nil {
		t.Fatal(err)
	}
	// Links written by a client: $ce-tgt links to them point at their
	// targets, which they resolve to.
	for _, data := range clientLinks {
		if _, err := s.Append("tgt-3", Expected{Kind: ExpectAny}, []ProposedEvent{{ID: uuid.New(), Type: linkType, Data: []byte(data)}}); err != nil {
			t.Fatal(err)
		}
	}
	check("written", "tgt-1/0", "tgt-1/1", "tgt-1/2", "tgt-1/3", "tgt-1/4", "tgt-2/0", "tgt-2/1", "tgt-2/1", "tgt-2/0")
	reopen()
	check("written and reloaded", "tgt-1/0", "tgt-1/1", "tgt-1/2", "tgt-1/3", "tgt-1/4", "tgt-2/0", "tgt-2/1", "tgt-2/1", "tgt-2/0")
	setMeta(t, s, "tgt-1", `{"$tb":2}`)
	check("truncated", "tgt-1/2", "tgt-1/3", "tgt-1/4", "tgt-2/0", "tgt-2/1", "tgt-2/1", "tgt-2/0")
	setMeta(t, s, "tgt-1", `{"$maxCount":2}`)
	check("$maxCount", "tgt-1/3", "tgt-1/4", "tgt-2/0", "tgt-2/1", "tgt-2/1", "tgt-2/0")
	if _, err := s.Delete("tgt-2", Expected{Kind: ExpectAny}); err != nil {
		t.Fatal(err)
	}
	// The deletion link points at the $$tgt-2 event, which resolves.
	check("soft-deleted", "tgt-1/3", "tgt-1/4", "$$tgt-2/0")
	if _, err := s.Append("tgt-2", Expected{Kind: ExpectAny}, proposed(1)); err != nil {
		t.Fatal(err)
	}
	// The undelete's $$tgt-2 event hides the deletion's ($maxCount 1).
	check("undeleted", "tgt-1/3", "tgt-1/4", "tgt-2/2")
	if _, err := s.TombstoneStream("tgt-1", Expected{Kind: ExpectAny}); err != nil {
		t.Fatal(err)
	}
	check("tombstoned", "tgt-2/2")
	reopen()
	check("reloaded", "tgt-2/2")
	setMeta(t, s, "tgt-2", `{"$tb":3}`)
	check("truncated after the reload")
	if _, err := s.Append("nowhere", Expected{Kind: ExpectAny}, proposed(1)); err != nil {
		t.Fatal(err)
	}
	check("link target created after the reload", "nowhere/0")
}
