package esdbtest

import (
	"math"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/uuid"
)

func proposed(n int) []ProposedEvent {
	out := make([]ProposedEvent, n)
	for i := range out {
		out[i] = ProposedEvent{ID: uuid.New(), Type: "E", IsJSON: true, Data: []byte(`{"i":1}`), Metadata: []byte(`{}`)}
	}
	return out
}

func TestStoreReloadsEverything(t *testing.T) {
	dir := t.TempDir()
	s, err := NewStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	batch := proposed(3)
	if _, err := s.Append("reload-1", Expected{Kind: ExpectNoStream}, batch); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Delete("reload-1", Expected{Kind: ExpectAny}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Append("reload-1", Expected{Kind: ExpectAny}, proposed(1)); err != nil {
		t.Fatal(err)
	}
	if _, err := s.TombstoneStream("reload-2", Expected{Kind: ExpectNoStream}); err != nil {
		t.Fatal(err)
	}
	before := s.ReadAll(0, true, math.MaxInt32, false)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s2, err := NewStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	after := s2.ReadAll(0, true, math.MaxInt32, false)
	if len(after) != len(before) {
		t.Fatalf("%d records after reload, want %d (no second set of system events either)", len(after), len(before))
	}
	for i := range before {
		a, b := before[i].Event, after[i].Event
		if a.Position != b.Position || a.ID != b.ID || a.Stream != b.Stream || a.Number != b.Number ||
			a.Type != b.Type || string(a.Data) != string(b.Data) || !a.Created.Equal(b.Created) {
			t.Fatalf("record %d differs: %+v vs %+v", i, a, b)
		}
	}
	// Indexes and metadata are rebuilt: $tb from the undelete, the
	// tombstone, and the ids used by the idempotency check.
	recs, err := s2.ReadStream("reload-1", 0, true, 10, false)
	if err != nil || len(recs) != 1 || recs[0].Event.Number != 3 {
		t.Fatalf("reload-1 after reload: %+v, %v", recs, err)
	}
	if _, err := s2.ReadStream("reload-2", 0, true, 10, false); err == nil {
		t.Fatal("reload-2 should still be tombstoned")
	}
	res, err := s2.Append("reload-1", Expected{Kind: ExpectNoStream}, batch)
	if err != nil || res.CurrentRevision != 2 {
		t.Fatalf("idempotent retry after reload: %+v, %v", res, err)
	}
	if res, err := s2.Append("reload-3", Expected{Kind: ExpectAny}, proposed(1)); err != nil || res.Position <= after[len(after)-1].Event.Position {
		t.Fatalf("append after reload: %+v, %v", res, err)
	}
}

func TestStoreCutsTornTail(t *testing.T) {
	dir := t.TempDir()
	s, err := NewStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Append("torn-1", Expected{Kind: ExpectAny}, proposed(2)); err != nil {
		t.Fatal(err)
	}
	s.Close()
	path := filepath.Join(dir, logFileName)
	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.Write([]byte{200, 0, 0, 0, 1, 2, 3}) // half a frame, as a killed write leaves
	f.Close()

	s2, err := NewStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s2.Append("torn-1", Expected{Kind: ExpectRevision, Revision: 1}, proposed(1)); err != nil {
		t.Fatal(err)
	}
	s2.Close()
	s3, err := NewStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s3.Close()
	if last := s3.LastEventNumber("torn-1"); last != 2 {
		t.Fatalf("last event %d after the torn tail was cut, want 2", last)
	}
}

func TestChangedIsClosedByCommits(t *testing.T) {
	s, err := NewStore("")
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ch := s.Changed()
	select {
	case <-ch:
		t.Fatal("closed before any commit")
	default:
	}
	done := make(chan struct{})
	go func() {
		<-ch
		close(done)
	}()
	if _, err := s.Append("changed-1", Expected{Kind: ExpectAny}, proposed(1)); err != nil {
		t.Fatal(err)
	}
	<-done
	if s.Changed() == ch {
		t.Fatal("Changed must hand out a fresh channel after a commit")
	}
}
