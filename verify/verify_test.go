package verify_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/EventStore/EventStore-Client-Go/v4/esdb"
	"github.com/google/uuid"

	"github.com/ditto-replicator/ditto/internal/esdbtest"
	"github.com/ditto-replicator/ditto/internal/testutil"
	"github.com/ditto-replicator/ditto/verify"
)

// These tests run against two in-process test servers, a source and a destination, and write
// the divergences they expect directly with the client.

func startServer(t *testing.T) *esdb.Client {
	t.Helper()
	srv := esdbtest.Start(t, esdbtest.Options{Insecure: true})
	return esdbtest.Connect(t, esdbtest.Config(t, srv.ConnectionString()))
}

// servers starts a source and a destination server.
func servers(t *testing.T) (src, dst *esdb.Client) {
	t.Helper()
	return startServer(t), startServer(t)
}

func ctxFor(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return ctx
}

func jsonEvent(typ string, n int) esdb.EventData {
	return esdb.EventData{
		EventID:     uuid.New(),
		EventType:   typ,
		ContentType: esdb.ContentTypeJson,
		Data:        fmt.Appendf(nil, `{"n":%d}`, n),
		Metadata:    fmt.Appendf(nil, `{"by":"test","n":%d}`, n),
	}
}

func jsonEvents(count int) []esdb.EventData {
	evs := make([]esdb.EventData, count)
	for i := range evs {
		evs[i] = jsonEvent("Happened", i)
	}
	return evs
}

func appendEvents(t *testing.T, c *esdb.Client, stream string, evs ...esdb.EventData) {
	t.Helper()
	if len(evs) == 0 {
		return
	}
	if _, err := c.AppendToStream(ctxFor(t), stream, esdb.AppendToStreamOptions{}, evs...); err != nil {
		t.Fatalf("append to %s: %v", stream, err)
	}
}

// mirror writes the same events, same ids, to both servers.
func mirror(t *testing.T, src, dst *esdb.Client, stream string, evs ...esdb.EventData) {
	t.Helper()
	appendEvents(t, src, stream, evs...)
	appendEvents(t, dst, stream, evs...)
}

func compare(t *testing.T, src, dst *esdb.Client, opts verify.Options) *verify.Report {
	t.Helper()
	rep, err := verify.Compare(ctxFor(t), src, dst, opts)
	if err != nil {
		t.Fatalf("Compare: %v", err)
	}
	return rep
}

type counts struct{ streams, skipped, src, dst, missing, extra, altered, outOfOrder int }

func checkCounts(t *testing.T, rep *verify.Report, want counts) {
	t.Helper()
	got := counts{rep.Streams, rep.Skipped, rep.SourceEvents, rep.DestinationEvents, rep.Missing, rep.Extra, rep.Altered, rep.OutOfOrder}
	if got != want {
		var text bytes.Buffer
		_ = rep.WriteText(&text)
		t.Fatalf("counts = %+v, want %+v\n%s", got, want, text.String())
	}
	divergences := want.missing + want.extra + want.altered + want.outOfOrder
	if rep.OK() != (divergences == 0) {
		t.Fatalf("OK() = %v with %d divergences", rep.OK(), divergences)
	}
	if len(rep.Divergences) != min(divergences, verify.MaxDivergences) {
		t.Fatalf("%d divergences recorded, want %d", len(rep.Divergences), divergences)
	}
}

// findDivergence returns the recorded divergence of stream at number, failing if there is none.
func findDivergence(t *testing.T, rep *verify.Report, stream string, number uint64) verify.Divergence {
	t.Helper()
	for _, d := range rep.Divergences {
		if d.Stream == stream && d.EventNumber == number {
			return d
		}
	}
	t.Fatalf("no divergence recorded for %s@%d in %+v", stream, number, rep.Divergences)
	return verify.Divergence{}
}

// lastPosition is the commit position of the last record in $all, used to prove that verify
// never writes.
func lastPosition(t *testing.T, c *esdb.Client) uint64 {
	t.Helper()
	rs, err := c.ReadAll(ctxFor(t), esdb.ReadAllOptions{Direction: esdb.Backwards, From: esdb.End{}}, 1)
	if err != nil {
		t.Fatalf("read $all: %v", err)
	}
	defer rs.Close()
	ev, err := rs.Recv()
	if errors.Is(err, io.EOF) {
		return 0
	}
	if err != nil {
		t.Fatalf("read $all: %v", err)
	}
	return ev.OriginalEvent().Position.Commit
}

func TestIdenticalStreamsAreOKAndNothingIsWritten(t *testing.T) {
	src, dst := servers(t)
	mirror(t, src, dst, "customer-1", jsonEvents(3)...)
	mirror(t, src, dst, "customer-2", jsonEvents(1)...)
	srcPos, dstPos := lastPosition(t, src), lastPosition(t, dst)

	rep := compare(t, src, dst, verify.Options{Streams: []string{"customer-1", "customer-2"}})
	checkCounts(t, rep, counts{streams: 2, src: 4, dst: 4})

	if got := lastPosition(t, src); got != srcPos {
		t.Errorf("source $all moved from %d to %d: verify wrote to the source", srcPos, got)
	}
	if got := lastPosition(t, dst); got != dstPos {
		t.Errorf("destination $all moved from %d to %d: verify wrote to the destination", dstPos, got)
	}
}

func TestMissingEvents(t *testing.T) {
	src, dst := servers(t)
	evs := jsonEvents(5)
	appendEvents(t, src, "customer-1", evs...)
	appendEvents(t, dst, "customer-1", evs[:3]...)
	appendEvents(t, src, "customer-2", jsonEvents(2)...) // never replicated

	rep := compare(t, src, dst, verify.Options{Streams: []string{"customer-1", "customer-2"}})
	checkCounts(t, rep, counts{streams: 2, src: 7, dst: 3, missing: 4})
	for _, n := range []uint64{3, 4} {
		d := findDivergence(t, rep, "customer-1", n)
		if d.Kind != verify.KindMissing || d.EventID != evs[n].EventID.String() {
			t.Errorf("customer-1@%d: got %+v, want missing %s", n, d, evs[n].EventID)
		}
	}
	for _, n := range []uint64{0, 1} {
		if d := findDivergence(t, rep, "customer-2", n); d.Kind != verify.KindMissing {
			t.Errorf("customer-2@%d: got %+v, want missing", n, d)
		}
	}
	if note := rep.Results[1].Note; !strings.Contains(note, "destination stream not found") {
		t.Errorf("customer-2 note = %q, want it to say the destination stream is not found", note)
	}
}

func TestExtraEvents(t *testing.T) {
	src, dst := servers(t)
	evs := jsonEvents(3)
	mirror(t, src, dst, "customer-1", evs[:2]...)
	appendEvents(t, dst, "customer-1", evs[2])

	rep := compare(t, src, dst, verify.Options{Streams: []string{"customer-1"}})
	checkCounts(t, rep, counts{streams: 1, src: 2, dst: 3, extra: 1})
	if d := findDivergence(t, rep, "customer-1", 2); d.Kind != verify.KindExtra || d.EventID != evs[2].EventID.String() {
		t.Errorf("got %+v, want extra %s", d, evs[2].EventID)
	}
}

func TestAlteredFields(t *testing.T) {
	src, dst := servers(t)
	orig := jsonEvents(5)
	changed := make([]esdb.EventData, len(orig))
	copy(changed, orig)
	changed[1].Data = []byte(`{"n":-1}`)
	changed[2].Metadata = []byte(`{"by":"someone else"}`)
	changed[3].EventType = "Renamed"
	changed[4].ContentType = esdb.ContentTypeBinary
	appendEvents(t, src, "customer-1", orig...)
	appendEvents(t, dst, "customer-1", changed...)

	rep := compare(t, src, dst, verify.Options{Streams: []string{"customer-1"}})
	checkCounts(t, rep, counts{streams: 1, src: 5, dst: 5, altered: 4})
	for n, field := range map[uint64]string{1: "data:", 2: "metadata:", 3: "type:", 4: "content type:"} {
		d := findDivergence(t, rep, "customer-1", n)
		if d.Kind != verify.KindAltered || !strings.HasPrefix(d.Detail, field) {
			t.Errorf("customer-1@%d: got %+v, want altered with detail starting %q", n, d, field)
		}
	}
}

func TestAlteredEventID(t *testing.T) {
	src, dst := servers(t)
	evs := jsonEvents(2)
	other := evs[1]
	other.EventID = uuid.New()
	appendEvents(t, src, "customer-1", evs...)
	appendEvents(t, dst, "customer-1", evs[0], other)

	rep := compare(t, src, dst, verify.Options{Streams: []string{"customer-1"}})
	checkCounts(t, rep, counts{streams: 1, src: 2, dst: 2, altered: 1})
	if d := findDivergence(t, rep, "customer-1", 1); !strings.HasPrefix(d.Detail, "id:") {
		t.Errorf("got %+v, want altered id", d)
	}
}

func TestOutOfOrder(t *testing.T) {
	src, dst := servers(t)
	evs := jsonEvents(4)
	appendEvents(t, src, "customer-1", evs...)
	appendEvents(t, dst, "customer-1", evs[0], evs[2], evs[1], evs[3])

	rep := compare(t, src, dst, verify.Options{Streams: []string{"customer-1"}})
	checkCounts(t, rep, counts{streams: 1, src: 4, dst: 4, outOfOrder: 2})
	for n, at := range map[uint64]uint64{1: 2, 2: 1} {
		d := findDivergence(t, rep, "customer-1", n)
		if d.Kind != verify.KindOutOfOrder || d.EventID != evs[n].EventID.String() ||
			!strings.Contains(d.Detail, fmt.Sprintf("event number %d", at)) {
			t.Errorf("customer-1@%d: got %+v, want out-of-order to %d", n, d, at)
		}
	}
}

// A destination that lost one event in the middle and has the rest shifted down by one: the lost
// event is missing, the shifted ones are out of order (they are there, at the wrong numbers).
func TestShiftedDestination(t *testing.T) {
	src, dst := servers(t)
	evs := jsonEvents(5)
	appendEvents(t, src, "customer-1", evs...)
	appendEvents(t, dst, "customer-1", evs[0], evs[1], evs[3], evs[4])

	rep := compare(t, src, dst, verify.Options{Streams: []string{"customer-1"}})
	checkCounts(t, rep, counts{streams: 1, src: 5, dst: 4, missing: 1, outOfOrder: 2})
	if d := findDivergence(t, rep, "customer-1", 2); d.Kind != verify.KindMissing {
		t.Errorf("customer-1@2: got %+v, want missing", d)
	}
}

// waitForLinks waits until the source's category stream holds at least want events: the
// $by_category projection may run asynchronously, as on a real server.
func waitForLinks(t *testing.T, c *esdb.Client, category string, want int) {
	t.Helper()
	testutil.Eventually(t, 30*time.Second, fmt.Sprintf("%s has %d events", category, want), func() bool {
		return countEvents(t, c, category) >= want
	})
}

func countEvents(t *testing.T, c *esdb.Client, stream string) int {
	t.Helper()
	rs, err := c.ReadStream(ctxFor(t), stream, esdb.ReadStreamOptions{}, 10_000)
	if err != nil {
		t.Fatalf("read %s: %v", stream, err)
	}
	defer rs.Close()
	n := 0
	for {
		_, err := rs.Recv()
		var esErr *esdb.Error
		switch {
		case errors.Is(err, io.EOF):
			return n
		case errors.As(err, &esErr) && esErr.Code() == esdb.ErrorCodeResourceNotFound:
			return 0
		case err != nil:
			t.Fatalf("read %s: %v", stream, err)
		}
		n++
	}
}

func TestCategoryEnumeration(t *testing.T) {
	src, dst := servers(t)
	c1 := jsonEvents(3)
	mirror(t, src, dst, "customer-1", c1...)
	c2 := jsonEvents(2)
	appendEvents(t, src, "customer-2", c2...)
	appendEvents(t, dst, "customer-2", c2[0])
	mirror(t, src, dst, "customer-3", jsonEvents(1)...)
	appendEvents(t, src, "order-1", jsonEvents(4)...) // another category: not compared
	waitForLinks(t, src, "$ce-customer", 6)

	// A page size smaller than the category forces the enumeration over several pages.
	rep := compare(t, src, dst, verify.Options{Categories: []string{"$ce-customer"}, PageSize: 2})
	checkCounts(t, rep, counts{streams: 3, src: 6, dst: 5, missing: 1})
	var names []string
	for _, r := range rep.Results {
		names = append(names, r.Stream)
	}
	if got := strings.Join(names, ","); got != "customer-1,customer-2,customer-3" {
		t.Errorf("streams compared = %s, want customer-1,customer-2,customer-3", got)
	}
	if d := findDivergence(t, rep, "customer-2", 1); d.Kind != verify.KindMissing {
		t.Errorf("got %+v, want customer-2@1 missing", d)
	}

	// The bare category name means the same.
	rep = compare(t, src, dst, verify.Options{Categories: []string{"customer"}})
	checkCounts(t, rep, counts{streams: 3, src: 6, dst: 5, missing: 1})
}

func TestEmptyCategoryIsANote(t *testing.T) {
	src, dst := servers(t)
	rep := compare(t, src, dst, verify.Options{Categories: []string{"$ce-nothing"}})
	checkCounts(t, rep, counts{})
	if len(rep.Notes) != 1 || !strings.Contains(rep.Notes[0], "$ce-nothing") {
		t.Errorf("notes = %q, want one naming $ce-nothing", rep.Notes)
	}
}

func TestBinaryData(t *testing.T) {
	src, dst := servers(t)
	// Not JSON, not even UTF-8: zero bytes and an invalid sequence.
	blob := []byte{0x00, 0xff, 0xfe, 0x80, '{', 0x00, 0xc3, 0x28}
	blobs := func() []esdb.EventData {
		return []esdb.EventData{
			{EventID: uuid.New(), EventType: "Blob", ContentType: esdb.ContentTypeBinary, Data: blob, Metadata: []byte{0x01, 0x00}},
			{EventID: uuid.New(), EventType: "Blob", ContentType: esdb.ContentTypeBinary, Data: blob},
		}
	}
	mirror(t, src, dst, "blob-1", blobs()...)
	rep := compare(t, src, dst, verify.Options{Streams: []string{"blob-1"}})
	checkCounts(t, rep, counts{streams: 1, src: 2, dst: 2})

	evs := blobs()
	flipped := evs[1]
	flipped.Data = bytes.Clone(blob)
	flipped.Data[5] ^= 0x01
	appendEvents(t, src, "blob-2", evs...)
	appendEvents(t, dst, "blob-2", evs[0], flipped)
	rep = compare(t, src, dst, verify.Options{Streams: []string{"blob-2"}})
	checkCounts(t, rep, counts{streams: 1, src: 2, dst: 2, altered: 1})
	if d := findDivergence(t, rep, "blob-2", 1); d.Detail != "data: first difference at byte 5 (source 8 bytes, destination 8 bytes)" {
		t.Errorf("detail = %q", d.Detail)
	}
}

func TestStreamsLargerThanOnePage(t *testing.T) {
	src, dst := servers(t)
	evs := jsonEvents(50)
	changed := make([]esdb.EventData, 47)
	copy(changed, evs)
	changed[23].Data = []byte(`{"n":"changed"}`)
	appendEvents(t, src, "customer-1", evs...)
	appendEvents(t, dst, "customer-1", changed...)
	mirror(t, src, dst, "customer-2", jsonEvents(21)...) // exactly three pages of 7

	rep := compare(t, src, dst, verify.Options{Streams: []string{"customer-1", "customer-2"}, PageSize: 7})
	checkCounts(t, rep, counts{streams: 2, src: 71, dst: 68, missing: 3, altered: 1})
	if d := findDivergence(t, rep, "customer-1", 23); d.Kind != verify.KindAltered {
		t.Errorf("customer-1@23: got %+v, want altered", d)
	}
	for _, n := range []uint64{47, 48, 49} {
		if d := findDivergence(t, rep, "customer-1", n); d.Kind != verify.KindMissing {
			t.Errorf("customer-1@%d: got %+v, want missing", n, d)
		}
	}
}

func TestDivergencesAreCapped(t *testing.T) {
	src, dst := servers(t)
	total := verify.MaxDivergences + 200
	for i := 0; i < total; i += 500 {
		appendEvents(t, src, "customer-1", jsonEvents(min(500, total-i))...)
	}
	rep := compare(t, src, dst, verify.Options{Streams: []string{"customer-1"}})
	checkCounts(t, rep, counts{streams: 1, src: total, missing: total})
	if !rep.Truncated {
		t.Error("Truncated is false with more divergences than MaxDivergences")
	}
}

func TestSourceStreamNotFoundIsSkipped(t *testing.T) {
	src, dst := servers(t)
	evs := jsonEvents(2)
	mirror(t, src, dst, "customer-1", evs...)
	if _, err := src.DeleteStream(ctxFor(t), "customer-1", esdb.DeleteStreamOptions{}); err != nil {
		t.Fatalf("delete: %v", err)
	}
	appendEvents(t, dst, "customer-9", jsonEvents(1)...)

	rep := compare(t, src, dst, verify.Options{Streams: []string{"customer-1", "customer-9"}})
	checkCounts(t, rep, counts{streams: 2, skipped: 2})
	for _, r := range rep.Results {
		if !r.Skipped || !strings.Contains(r.Note, "source stream not found") {
			t.Errorf("%s: skipped=%v note=%q, want skipped with a note", r.Stream, r.Skipped, r.Note)
		}
	}
}

// Tombstoned streams read as StreamDeleted rather than not-found: a tombstoned source stream is
// skipped like a deleted one, a tombstoned destination stream has all source events missing.
func TestTombstonedStreams(t *testing.T) {
	src, dst := servers(t)
	mirror(t, src, dst, "customer-1", jsonEvents(2)...)
	mirror(t, src, dst, "customer-2", jsonEvents(3)...)
	if _, err := src.TombstoneStream(ctxFor(t), "customer-1", esdb.TombstoneStreamOptions{}); err != nil {
		t.Fatalf("tombstone source: %v", err)
	}
	if _, err := dst.TombstoneStream(ctxFor(t), "customer-2", esdb.TombstoneStreamOptions{}); err != nil {
		t.Fatalf("tombstone destination: %v", err)
	}

	rep := compare(t, src, dst, verify.Options{Streams: []string{"customer-1", "customer-2"}})
	checkCounts(t, rep, counts{streams: 2, skipped: 1, src: 3, missing: 3})
	if r := rep.Results[0]; !r.Skipped || !strings.Contains(r.Note, "tombstoned") {
		t.Errorf("customer-1: %+v, want skipped as tombstoned", r)
	}
	if r := rep.Results[1]; !strings.Contains(r.Note, "destination stream is tombstoned") {
		t.Errorf("customer-2: %+v, want a note that the destination is tombstoned", r)
	}
}

// A soft-deleted source stream stays linked from its category (and gains a "<n>@$$stream" link):
// it is enumerated once and skipped, and the other streams are still compared.
func TestCategoryWithDeletedStream(t *testing.T) {
	src, dst := servers(t)
	mirror(t, src, dst, "customer-1", jsonEvents(2)...)
	mirror(t, src, dst, "customer-2", jsonEvents(1)...)
	if _, err := src.DeleteStream(ctxFor(t), "customer-1", esdb.DeleteStreamOptions{}); err != nil {
		t.Fatalf("delete: %v", err)
	}
	waitForLinks(t, src, "$ce-customer", 3)

	rep := compare(t, src, dst, verify.Options{Categories: []string{"$ce-customer"}})
	checkCounts(t, rep, counts{streams: 2, skipped: 1, src: 1, dst: 1})
	if r := rep.Results[0]; r.Stream != "customer-1" || !r.Skipped {
		t.Errorf("first result = %+v, want customer-1 skipped", r)
	}
}

func TestJSONOutput(t *testing.T) {
	src, dst := servers(t)
	evs := jsonEvents(2)
	appendEvents(t, src, "customer-1", evs...)
	appendEvents(t, dst, "customer-1", evs[0])
	rep := compare(t, src, dst, verify.Options{Streams: []string{"customer-1"}})

	var buf bytes.Buffer
	if err := rep.WriteJSON(&buf); err != nil {
		t.Fatalf("WriteJSON: %v", err)
	}
	var got struct {
		OK          bool                `json:"ok"`
		Streams     int                 `json:"streams"`
		Missing     int                 `json:"missing"`
		Divergences []verify.Divergence `json:"divergences"`
		Results     []verify.StreamResult
	}
	if err := json.Unmarshal(buf.Bytes(), &got); err != nil {
		t.Fatalf("decode %s: %v", buf.String(), err)
	}
	want := verify.Divergence{Stream: "customer-1", Kind: "missing", EventNumber: 1, EventID: evs[1].EventID.String()}
	if got.OK || got.Streams != 1 || got.Missing != 1 || len(got.Divergences) != 1 || got.Divergences[0] != want ||
		len(got.Results) != 1 || got.Results[0].DestinationEvents != 1 {
		t.Errorf("JSON report = %s", buf.String())
	}
}

func TestMainExitCodes(t *testing.T) {
	src, dst := servers(t)
	evs := jsonEvents(2)
	mirror(t, src, dst, "customer-1", evs...)
	appendEvents(t, src, "customer-2", evs...)
	appendEvents(t, dst, "customer-2", evs[0])
	waitForLinks(t, src, "$ce-customer", 4)

	run := func(defaults []string, args ...string) (int, string, string) {
		var stdout, stderr bytes.Buffer
		code := verify.Main(ctxFor(t), src, dst, verify.Defaults{Categories: defaults}, args, &stdout, &stderr)
		return code, stdout.String(), stderr.String()
	}
	for _, tc := range []struct {
		name     string
		defaults []string
		args     []string
		code     int
		stdout   string
	}{
		{"identical stream", nil, []string{"--streams", "customer-1"}, 0, "verify: IDENTICAL"},
		{"diverged stream", nil, []string{"--streams=customer-1,customer-2"}, 1, "stream customer-2: DIVERGED"},
		{"repeated flag", nil, []string{"--streams", "customer-1", "--streams", "customer-2"}, 1, "missing 1"},
		{"category flag", nil, []string{"--category", "$ce-customer", "--page-size", "1"}, 1, "customer-2@1 missing"},
		{"default categories", []string{"$ce-customer"}, nil, 1, "2 streams"},
		{"json", nil, []string{"--json", "--streams", "customer-1"}, 0, `"ok": true`},
		{"unknown flag", nil, []string{"--nope"}, 2, ""},
		{"bad page size", nil, []string{"--streams", "customer-1", "--page-size", "0"}, 2, ""},
		{"streams and category", nil, []string{"--streams", "a", "--category", "b"}, 2, ""},
		{"nothing to compare", nil, nil, 2, ""},
		{"stray argument", nil, []string{"--streams", "a", "extra"}, 2, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, stdout, stderr := run(tc.defaults, tc.args...)
			if code != tc.code || !strings.Contains(stdout, tc.stdout) {
				t.Errorf("exit %d, want %d; stdout:\n%s\nstderr:\n%s", code, tc.code, stdout, stderr)
			}
		})
	}
}

// A destination that cannot be reached is an error (exit 2), never "diverged".
func TestMainConnectionError(t *testing.T) {
	src := startServer(t)
	appendEvents(t, src, "customer-1", jsonEvents(1)...)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	if err := ln.Close(); err != nil {
		t.Fatal(err)
	}
	dst := esdbtest.Connect(t, esdbtest.Config(t, "esdb://"+addr+"?tls=false&maxDiscoverAttempts=1&discoveryInterval=10"))

	var stdout, stderr bytes.Buffer
	code := verify.Main(ctxFor(t), src, dst, verify.Defaults{}, []string{"--streams", "customer-1"}, &stdout, &stderr)
	if code != verify.ExitError || stdout.Len() != 0 {
		t.Errorf("exit %d, want 2; stdout:\n%s\nstderr:\n%s", code, stdout.String(), stderr.String())
	}
}
