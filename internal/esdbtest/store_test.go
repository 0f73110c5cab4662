package esdbtest

import (
	"errors"
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
