package verify

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/EventStore/EventStore-Client-Go/v4/esdb"
	"github.com/google/uuid"
)

// These tests cover what the test servers cannot produce on demand: event numbers that do not
// start at 0 (truncated streams) and the progress output of thousands of streams. They read
// from in-memory pages with the same contract as a server read; everything else is tested
// against real servers in verify_test.go.

// memStreams serves pages from memory: events of a stream at numbers >= from, at most count.
type memStreams map[string][]*esdb.RecordedEvent

func (m memStreams) read(_ context.Context, stream string, from uint64, count int) ([]*esdb.RecordedEvent, error) {
	evs, ok := m[stream]
	if !ok {
		return nil, fmt.Errorf("read %q: %w", stream, errStreamNotFound)
	}
	var page []*esdb.RecordedEvent
	for _, ev := range evs {
		if ev.EventNumber >= from && len(page) < count {
			page = append(page, ev)
		}
	}
	return page, nil
}

func recorded(number uint64) *esdb.RecordedEvent {
	return &esdb.RecordedEvent{EventID: uuid.New(), EventType: "T", ContentType: "application/json", EventNumber: number, Data: []byte("{}")}
}

// A source truncated by $maxCount starts at a later number than its replica: the destination's
// older events are extra, and the merge by number must not misalign the rest.
func TestTruncatedSourceStartsLater(t *testing.T) {
	var full []*esdb.RecordedEvent
	for n := range uint64(10) {
		full = append(full, recorded(n))
	}
	src := memStreams{"s": full[5:]}
	dst := memStreams{"s": full}
	rep, err := compare(t.Context(), src.read, dst.read, Options{Streams: []string{"s"}, PageSize: 3})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Extra != 5 || rep.Missing+rep.Altered+rep.OutOfOrder != 0 || rep.SourceEvents != 5 || rep.DestinationEvents != 10 {
		t.Fatalf("report = %+v", rep)
	}
	for i, d := range rep.Divergences {
		if d.Kind != KindExtra || d.EventNumber != uint64(i) {
			t.Errorf("divergence %d = %+v, want extra at %d", i, d, i)
		}
	}
}

func TestProgressEveryThousandStreams(t *testing.T) {
	streams := memStreams{}
	var names []string
	for i := range 2000 {
		name := fmt.Sprintf("s-%d", i)
		streams[name] = []*esdb.RecordedEvent{recorded(0)}
		names = append(names, name)
	}
	var progress bytes.Buffer
	rep, err := compare(t.Context(), streams.read, streams.read, Options{Streams: names, Progress: &progress})
	if err != nil {
		t.Fatal(err)
	}
	if !rep.OK() || rep.Streams != 2000 {
		t.Fatalf("report = %+v", rep)
	}
	for _, want := range []string{"verify: 1000/2000 streams", "verify: 2000/2000 streams", "verify: done in"} {
		if !strings.Contains(progress.String(), want) {
			t.Errorf("progress output lacks %q:\n%s", want, progress.String())
		}
	}
}

func TestParseLink(t *testing.T) {
	for _, tc := range []struct {
		data, stream string
		ok           bool
	}{
		{"0@customer-1", "customer-1", true},
		{"42@order-1-x", "order-1-x", true},
		{"9223372036854775807@customer-1", "customer-1", true}, // tombstone link
		{"3@$$customer-1", "customer-1", true},                 // soft-delete link
		{"customer-1", "", false},
		{"x@customer-1", "", false},
		{"1@", "", false},
		{"1@$ce-customer", "", false},
		{"", "", false},
		{"{\"json\":1}", "", false},
	} {
		stream, ok := parseLink([]byte(tc.data))
		if stream != tc.stream || ok != tc.ok {
			t.Errorf("parseLink(%q) = %q, %v; want %q, %v", tc.data, stream, ok, tc.stream, tc.ok)
		}
	}
}

func TestCategoryStream(t *testing.T) {
	for in, want := range map[string]string{"customer": "$ce-customer", "$ce-customer": "$ce-customer", "": ""} {
		if got := CategoryStream(in); got != want {
			t.Errorf("CategoryStream(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestListFlag(t *testing.T) {
	var l listFlag
	for _, v := range []string{"a,b", " c ", ",,d,"} {
		if err := l.Set(v); err != nil {
			t.Fatal(err)
		}
	}
	if got := l.String(); got != "a,b,c,d" {
		t.Errorf("list = %q, want a,b,c,d", got)
	}
}
