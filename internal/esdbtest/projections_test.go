package esdbtest

import (
	"encoding/json"
	"fmt"
	"math"
	"testing"

	"github.com/EventStore/EventStore-Client-Go/v4/esdb"
	"github.com/google/uuid"
)

// TestCategoryLinks checks the $ce-, $et-, $streams and $category-
// projections (§4) and how $ce- links resolve after the source stream is
// soft-deleted, then tombstoned (§3, §7).
func TestCategoryLinks(t *testing.T) {
	_, c := startInsecure(t)
	ctx := testCtx(t)
	e := ev("OrderPlaced")
	e.Metadata = []byte(`{"$correlationId":"corr-1"}`)
	w, err := c.AppendToStream(ctx, "order-1-x", esdb.AppendToStreamOptions{}, e, ev("OrderPaid"))
	if err != nil {
		t.Fatal(err)
	}
	// Streams without a category produce no $ce- link.
	if _, err := c.AppendToStream(ctx, "nocategory", esdb.AppendToStreamOptions{}, ev("OrderPlaced")); err != nil {
		t.Fatal(err)
	}

	raw, err := readAllOf(ctx, c, "$ce-order", false)
	if err != nil || len(raw) != 2 {
		t.Fatalf("$ce-order: %d links, %v; want 2", len(raw), err)
	}
	link := raw[0].Event
	if link.EventType != "$>" || string(link.Data) != "0@order-1-x" || link.ContentType != "application/octet-stream" {
		t.Fatalf("raw link %+v", link)
	}
	var meta map[string]any
	if err := json.Unmarshal(link.UserMetadata, &meta); err != nil {
		t.Fatalf("link metadata %q: %v", link.UserMetadata, err)
	}
	wantPos := float64(w.CommitPosition) - 0 // first event's position is below the last one's
	if meta["$o"] != "order-1-x" || meta["$causedBy"] != e.EventID.String() || meta["$correlationId"] != "corr-1" ||
		meta["$c"] != meta["$p"] || meta["$c"].(float64) > wantPos {
		t.Fatalf("link metadata %s", link.UserMetadata)
	}

	resolved, err := readAllOf(ctx, c, "$ce-order", true)
	if err != nil || len(resolved) != 2 || resolved[0].Event == nil || resolved[0].Event.EventID != e.EventID ||
		resolved[0].Link == nil || resolved[0].Link.StreamID != "$ce-order" {
		t.Fatalf("resolved $ce-order: %+v, %v", resolved, err)
	}
	for stream, want := range map[string]string{"$et-OrderPlaced": "0@order-1-x", "$streams": "0@order-1-x"} {
		evs, err := readAllOf(ctx, c, stream, false)
		if err != nil || len(evs) == 0 || string(evs[0].Event.Data) != want {
			t.Fatalf("%s: %+v, %v; want a link %s", stream, evs, err, want)
		}
	}
	cat, err := readAllOf(ctx, c, "$category-order", false)
	if err != nil || len(cat) != 1 || cat[0].Event.EventType != "$@" || string(cat[0].Event.Data) != "order-1-x" {
		t.Fatalf("$category-order: %+v, %v", cat, err)
	}
	if _, err := c.GetStreamMetadata(ctx, "$ce-order", esdb.ReadStreamOptions{}); err != nil {
		t.Fatalf("$$$ce-order should hold the ACL metadata: %v", err)
	}

	// Soft delete: links stay, but no longer resolve; a deletion link is added.
	if _, err := c.DeleteStream(ctx, "order-1-x", esdb.DeleteStreamOptions{}); err != nil {
		t.Fatal(err)
	}
	after, err := readAllOf(ctx, c, "$ce-order", true)
	if err != nil || len(after) != 3 {
		t.Fatalf("$ce-order after delete: %d, %v; want 3", len(after), err)
	}
	for i := 0; i < 2; i++ {
		if after[i].Event != nil || after[i].Link == nil {
			t.Fatalf("link %d should be unresolved after a soft delete: %+v", i, after[i])
		}
	}
	// It points at the $$S event and resolves to it.
	if del := after[2].Link; del == nil || string(del.Data) != "0@$$order-1-x" || !hasDeleted(del.UserMetadata) ||
		after[2].Event == nil || after[2].Event.EventType != "$metadata" {
		t.Fatalf("deletion link %+v", after[2])
	}

	// Recreate, then tombstone: the new link resolves until the tombstone.
	if _, err := c.AppendToStream(ctx, "order-1-x", esdb.AppendToStreamOptions{}, ev("OrderReopened")); err != nil {
		t.Fatal(err)
	}
	again, _ := readAllOf(ctx, c, "$ce-order", true)
	if last := again[len(again)-1]; last.Event == nil || last.Event.EventNumber != 2 {
		t.Fatalf("link to the recreated stream should resolve: %+v", last)
	}
	if _, err := c.TombstoneStream(ctx, "order-1-x", esdb.TombstoneStreamOptions{}); err != nil {
		t.Fatal(err)
	}
	final, err := readAllOf(ctx, c, "$ce-order", true)
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range final {
		if r.Event != nil {
			t.Fatalf("link %d resolved after the tombstone: %+v", i, r.Event)
		}
	}
	tomb := final[len(final)-1].Link
	if string(tomb.Data) != fmt.Sprintf("%d@order-1-x", int64(math.MaxInt64)) || !hasDeleted(tomb.UserMetadata) {
		t.Fatalf("tombstone link %q %s", tomb.Data, tomb.UserMetadata)
	}
	// The events themselves are still in $all.
	if _, err := readAllOf(ctx, c, "order-1-x", false); errCode(t, err) != esdb.ErrorCodeStreamDeleted {
		t.Fatalf("read of a tombstoned stream: %v", err)
	}
}

func hasDeleted(meta []byte) bool {
	var m map[string]any
	return json.Unmarshal(meta, &m) == nil && m["$deleted"] == float64(-1)
}

func TestAppendUUIDMatchesString(t *testing.T) {
	for i := 0; i < 100; i++ {
		id := uuid.New()
		if got := string(appendUUID(nil, id)); got != id.String() {
			t.Fatalf("appendUUID = %s, want %s", got, id)
		}
	}
}

// TestCorrelationID: the shortcut for a leading plain-string $correlationId
// agrees with a full JSON parse.
func TestCorrelationID(t *testing.T) {
	for meta, want := range map[string]string{
		`{"$correlationId":"c-1","producer":"x"}`:   `"c-1"`,
		`{"$correlationId":"c\"1"}`:                 `"c\"1"`,
		`{"producer":"x","$correlationId":"c-2"}`:   `"c-2"`,
		`{"$correlationId":42}`:                     `42`,
		`{ "$correlationId" : "c-3" }`:              `"c-3"`,
		`{"$correlationId":"c-4"`:                   ``, // not JSON
		`{"$correlationId":"c-5"}garbage`:           ``,
		`{"other":"\"$correlationId\""}`:            ``,
		`{"$correlationId":"c-6","$correlationId":`: ``,
	} {
		if got := string(correlationID([]byte(meta))); got != want {
			t.Errorf("correlationID(%s) = %s, want %s", meta, got, want)
		}
	}
}
