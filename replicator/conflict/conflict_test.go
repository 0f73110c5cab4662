package conflict

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/google/uuid"

	"github.com/ditto-replicator/ditto/internal/metrics"
	"github.com/ditto-replicator/ditto/policy"
	"github.com/ditto-replicator/ditto/sinks"
)

func TestParseAndLabels(t *testing.T) {
	var names []string
	for _, p := range Policies {
		got, err := Parse(p.String())
		if err != nil || got != p {
			t.Errorf("Parse(%q) = %v, %v", p, got, err)
		}
		names = append(names, p.String())
	}
	if strings.Join(names, ",") != strings.Join(metrics.ConflictPolicies, ",") {
		t.Fatalf("policies %q, labels of ditto_events_conflicts_total %q", names, metrics.ConflictPolicies)
	}
	if _, err := Parse("overwrite"); err == nil || err.Error() != "expected park, conflict-stream, skip" {
		t.Fatalf("Parse(overwrite): %v", err)
	}
	if p, _ := Parse("park"); p != Park {
		t.Fatal("park is not the zero value")
	}
}

func TestStreamName(t *testing.T) {
	if got := StreamName("eu", "us"); got != "ditto-conflicts-eu-us" {
		t.Fatal(got)
	}
	if got := StreamName("eu", ""); got != "ditto-conflicts" {
		t.Fatal(got)
	}
}

// A record is the event with the reason and its coordinates added to its
// metadata; its content signature is the event's, so it still verifies.
func TestRecord(t *testing.T) {
	ev := sinks.Event{Stream: "customer-1", Number: 8, ID: uuid.New(), Type: "Renamed", ContentType: "application/json",
		Data: []byte(`{"name":"Zoë"}`), Metadata: []byte(`{"$correlationId":"c","$origin":["eu"]}`)}
	sig, err := policy.Signature(ev.Type, ev.Data, ev.Metadata)
	if err != nil {
		t.Fatal(err)
	}
	rec, err := Record(ev, "dr-customer-1", "destination stream dr-customer-1 diverged at 8")
	if err != nil {
		t.Fatal(err)
	}
	if !rec.AtEnd || rec.ID != ev.ID || rec.Type != ev.Type || string(rec.Data) != string(ev.Data) || rec.Number != 8 {
		t.Fatalf("record %+v", rec)
	}
	var md map[string]any
	if err := json.Unmarshal(rec.Metadata, &md); err != nil {
		t.Fatal(err)
	}
	want := map[string]any{"$correlationId": "c", "$origin": []any{"eu"}, "$originalStreamId": "customer-1", "$originalEventNumber": 8.0,
		"$conflictStreamId": "dr-customer-1", "$conflictReason": "destination stream dr-customer-1 diverged at 8"}
	if len(md) != len(want) {
		t.Fatalf("metadata %s", rec.Metadata)
	}
	for k, v := range want {
		if b, _ := json.Marshal(md[k]); string(b) != mustJSON(v) {
			t.Errorf("%s = %s, want %s", k, b, mustJSON(v))
		}
	}
	if got, _ := policy.Signature(rec.Type, rec.Data, rec.Metadata); got != sig {
		t.Fatalf("the record's signature %s differs from the event's %s", got, sig)
	}
	ev.Metadata = []byte{0xc3, 0x28}
	if _, err := Record(ev, "x", "r"); err == nil {
		t.Fatal("a record of binary metadata")
	}
}

func mustJSON(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}
