package main

import (
	"context"
	"io"
	"math"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
	"weak"

	"github.com/ditto-replicator/ditto/internal/esdbtest"
)

func TestPercentileNearestRank(t *testing.T) {
	ms := func(v ...int) []time.Duration {
		out := make([]time.Duration, len(v))
		for i, x := range v {
			out[i] = time.Duration(x) * time.Millisecond
		}
		return out
	}
	hundred := make([]time.Duration, 100)
	for i := range hundred {
		hundred[i] = time.Duration(i+1) * time.Millisecond
	}
	cases := []struct {
		name   string
		sorted []time.Duration
		p      float64
		want   time.Duration
	}{
		{"empty", nil, 50, 0},
		{"one value", ms(7), 99, 7 * time.Millisecond},
		{"p50 of 1..100", hundred, 50, 50 * time.Millisecond},
		{"p99 of 1..100", hundred, 99, 99 * time.Millisecond},
		{"p100 is the max", hundred, 100, 100 * time.Millisecond},
		{"tiny p is the min", hundred, 0.001, 1 * time.Millisecond},
		// Nearest rank: ceil(0.5*4) = 2nd value, never an interpolation.
		{"p50 of four", ms(1, 2, 3, 4), 50, 2 * time.Millisecond},
		{"p99 of four is the max", ms(1, 2, 3, 40), 99, 40 * time.Millisecond},
	}
	for _, c := range cases {
		if got := percentile(c.sorted, c.p); got != c.want {
			t.Errorf("%s: percentile(%d values, %g) = %s, want %s", c.name, len(c.sorted), c.p, got, c.want)
		}
	}
}

func TestSummarizeSortsACopy(t *testing.T) {
	lags := []time.Duration{30, 10, 20}
	s := summarize(lags)
	if s.N != 3 || s.P50 != 20 || s.P99 != 30 || s.Max != 30 {
		t.Errorf("summarize = %+v", s)
	}
	if lags[0] != 30 {
		t.Errorf("summarize reordered its input: %v", lags)
	}
}

func TestRateAndRatio(t *testing.T) {
	if got := rate(1000, 2*time.Second); got != 500 {
		t.Errorf("rate = %g, want 500", got)
	}
	if rate(0, time.Second) != 0 || rate(10, 0) != 0 {
		t.Error("rate of nothing must be 0")
	}
	if got := ratio(30, 3); got != 10 {
		t.Errorf("ratio = %g, want 10", got)
	}
	if ratio(30, 0) != 0 || ratio(0, 3) != 0 {
		t.Error("a ratio with an unknown side must be 0 (shown as -)")
	}
	// 5 µs of CPU per event at 300k events/s keeps 1.5 cores busy.
	if got := coresBusy(5, 300000); math.Abs(got-1.5) > 1e-9 {
		t.Errorf("coresBusy = %g, want 1.5", got)
	}
}

// The two factors of the ratio to the raw limit multiply back to it: here
// ditto needs twice the raw limit's CPU per event and keeps 0.9 of its
// busy cores, so it runs at 0.45 of its rate.
func TestVsB2Factors(t *testing.T) {
	raw := &measured{EventsPerSec: 300000, CPUMicrosPerEvent: 6}
	raw.CoresBusy = coresBusy(raw.CPUMicrosPerEvent, raw.EventsPerSec)
	d := &measured{EventsPerSec: 135000, CPUMicrosPerEvent: 5, ServersCPUMicrosPerEvent: 7}
	d.CoresBusy = coresBusy(d.CPUMicrosPerEvent+d.ServersCPUMicrosPerEvent, d.EventsPerSec)
	r := &result{Scenario: "a", Ditto: d, Baseline2: raw}
	r.evaluate()
	cpu, busy, ok := r.vsB2Factors()
	if !ok {
		t.Fatal("no factors with both runs measured")
	}
	if math.Abs(cpu-0.5) > 1e-9 || math.Abs(busy-0.9) > 1e-9 {
		t.Errorf("factors = %g × %g, want 0.5 × 0.9", cpu, busy)
	}
	if math.Abs(cpu*busy-r.VsB2) > 1e-9 {
		t.Errorf("factors multiply to %g, ratio is %g", cpu*busy, r.VsB2)
	}
	if _, _, ok := (&result{Ditto: d}).vsB2Factors(); ok {
		t.Error("factors without a raw limit")
	}
}

func TestWorkloadLayoutAndIDs(t *testing.T) {
	w := newWorkload(10, 3)
	if w.stream(4) != "bench-1" || w.number(4) != 1 {
		t.Errorf("event 4 is %d@%s, want 1@bench-1", w.number(4), w.stream(4))
	}
	total := 0
	for s := 0; s < w.streams; s++ {
		for n := 0; n < w.perStream(s); n++ {
			i := w.indexOf(s, n)
			if w.stream(i) != w.stream(s) || w.number(i) != uint64(n) {
				t.Errorf("indexOf(%d, %d) = %d, which is %d@%s", s, n, i, w.number(i), w.stream(i))
			}
			total++
		}
	}
	if total != w.events {
		t.Errorf("perStream sums to %d, want %d", total, w.events)
	}
	seen := map[string]bool{}
	for i := 0; i < w.events; i++ {
		id := w.id(i)
		if got := w.indexFromID(id); got != i {
			t.Errorf("indexFromID(id(%d)) = %d", i, got)
		}
		if seen[id.String()] {
			t.Errorf("id of event %d repeats", i)
		}
		seen[id.String()] = true
	}
	other := newWorkload(10, 3)
	if other.indexFromID(w.id(1)) != -1 {
		t.Error("an id of another workload must not map to an index")
	}
	if w.indexFromID(newWorkload(100, 3).id(50)) != -1 {
		t.Error("an index beyond the workload must be rejected")
	}
	if w := newWorkload(5, 1000); w.streams != 5 {
		t.Errorf("streams = %d, want at most one per event", w.streams)
	}
}

func TestParseProc(t *testing.T) {
	status := []byte("Name:\tditto\nVmPeak:\t  812345 kB\nVmHWM:\t   51200 kB\nVmRSS:\t   40000 kB\n")
	if got, err := parseStatusKB(status, "VmHWM"); err != nil || got != 50<<20 {
		t.Errorf("VmHWM = %d, %v; want %d", got, err, 50<<20)
	}
	if _, err := parseStatusKB(status, "VmSwap"); err == nil {
		t.Error("a missing key must be an error")
	}
	// The command name may contain spaces and parentheses.
	stat := []byte("1234 (dit to) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 8 0 1000 1000000 2000")
	if got, err := parseStat(stat); err != nil || got.cpu != 3*time.Second || got.faults != 100 {
		t.Errorf("parseStat = %+v, %v; want 3s (300 ticks) and 100 faults", got, err)
	}
}

func TestPromMean(t *testing.T) {
	text := ("# HELP ditto_batch_size x\n# TYPE ditto_batch_size histogram\nditto_batch_size_bucket{le=\"1\"} 3\nditto_batch_size_sum 120\nditto_batch_size_count 12\n")
	if got := promMean(text, "ditto_batch_size"); got != 10 {
		t.Errorf("mean = %g, want 10", got)
	}
	if got := promMean("other_sum 1\n", "ditto_batch_size"); got != 0 {
		t.Errorf("mean without the metric = %g, want 0", got)
	}
}

func TestTwoLimits(t *testing.T) {
	r := &result{Ditto: &measured{CPUMicrosPerEvent: 5, ServersCPUMicrosPerEvent: 6},
		Baseline2: &measured{CPUMicrosPerEvent: 4.5}, Baseline3: &measured{CPUMicrosPerEvent: 3.5}}
	two, excess, ok := r.twoLimits()
	if !ok || math.Abs(two-4.5/8) > 1e-9 || math.Abs(excess-3) > 1e-9 {
		t.Errorf("twoLimits = %g, %g, %v; want 0.5625, 3, true", two, excess, ok)
	}
	if _, _, ok := (&result{Baseline2: r.Baseline2}).twoLimits(); ok {
		t.Error("twoLimits without a source limit")
	}
}

func TestTargets(t *testing.T) {
	r := &result{Scenario: "a", Ditto: &measured{EventsPerSec: 30000}, Baseline1: &measured{EventsPerSec: 2000}, Baseline2: &measured{EventsPerSec: 100000}}
	r.evaluate()
	if len(r.Targets) != 2 || !r.Targets[0].Met || r.Targets[1].Met {
		t.Errorf("(a) targets = %+v; want ×15 met and 0.3 of raw not met", r.Targets)
	}
	c := &result{Scenario: "c", Lag: &lagFigures{P99Ms: 49}}
	c.evaluate()
	if !c.Targets[0].Met {
		t.Errorf("(c) p99 49 ms must meet < 50 ms: %+v", c.Targets)
	}
	failed := &result{Scenario: "d", Ditto: &measured{EventsPerSec: 1}, PeakRSSMB: 10, Error: "boom"}
	failed.evaluate()
	if failed.Targets[0].Met {
		t.Error("a failed scenario must not meet its target")
	}
}

func TestParseFlags(t *testing.T) {
	c, err := parseFlags([]string{"--scenario", "c, a,c", "--scale", "0.1"}, io.Discard)
	if err != nil || strings.Join(c.scenarios, ",") != "c,a" || c.scale != 0.1 || c.timeline {
		t.Errorf("parseFlags = %+v, %v", c, err)
	}
	if c, err := parseFlags([]string{"--timeline"}, io.Discard); err != nil || !c.timeline {
		t.Errorf("parseFlags(--timeline) = %+v, %v", c, err)
	}
	for _, bad := range [][]string{{"--scenario", "z"}, {"--scale", "0"}, {"extra"}} {
		if _, err := parseFlags(bad, io.Discard); err == nil {
			t.Errorf("parseFlags(%q) must fail", bad)
		}
	}
}

// TestBaselinesReplicate runs both baselines on a tiny workload against
// test servers and checks that they wrote what they claim: the reference
// algorithm must leave the destination identical to the source.
func TestBaselinesReplicate(t *testing.T) {
	if testing.Short() {
		t.Skip("starts servers")
	}
	ctx := context.Background()
	w := newWorkload(60, 4)
	src := esdbtest.Start(t, esdbtest.Options{Insecure: true})
	if err := seed(ctx, src.Store(), w); err != nil {
		t.Fatal(err)
	}
	admin, err := newClient(src.ConnectionString())
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	if err := createGroup(ctx, admin, "baseline-1"); err != nil {
		t.Fatal(err)
	}

	dst1 := esdbtest.Start(t, esdbtest.Options{Insecure: true})
	dc, err := newClient(dst1.ConnectionString())
	if err != nil {
		t.Fatal(err)
	}
	defer dc.Close()
	b1, err := baseline1(ctx, src.ConnectionString(), "baseline-1", w.events, 30*time.Second, appendEach(dc))
	if err != nil {
		t.Fatal(err)
	}
	if b1.events != w.events || b1.sampled {
		t.Errorf("baseline 1 wrote %d events (sampled %v), want all %d", b1.events, b1.sampled, w.events)
	}
	checkCopy(t, dst1.Store(), w)
	if _, err := waitCount(ctx, func() int64 { return destinationEvents(dst1.Store()) }, w.events, time.Second, time.Second, nil, nil); err != nil {
		t.Errorf("waitCount on a complete destination: %v", err)
	}

	for _, batchAppend := range []bool{false, true} {
		dst2 := esdbtest.Start(t, esdbtest.Options{Insecure: true})
		if _, err := baseline2(ctx, dst2.ConnectionString(), w, 7, 3, batchAppend, 30*time.Second); err != nil {
			t.Fatalf("batchAppend %v: %v", batchAppend, err)
		}
		checkCopy(t, dst2.Store(), w)
	}

	if err := createGroup(ctx, admin, "source-limit"); err != nil {
		t.Fatal(err)
	}
	if _, err := sourceLimit(ctx, src.ConnectionString(), "source-limit", w.events, 8, 30*time.Second); err != nil {
		t.Errorf("baseline 3: %v", err)
	}
	if _, err := sourceLimit(ctx, src.ConnectionString(), "no-such-group", w.events, 8, 30*time.Second); err == nil {
		t.Error("baseline 3 on a missing group must fail")
	}

	// A destination that never fills up is reported, not waited on forever.
	empty := esdbtest.Start(t, esdbtest.Options{Insecure: true})
	if _, err := waitCount(ctx, func() int64 { return destinationEvents(empty.Store()) }, 1, time.Second, 100*time.Millisecond, nil, nil); err == nil {
		t.Error("waitCount on an empty destination must fail")
	}
}

// TestCollectFreesClosedServers checks that a measurement starts without
// the servers of the one before: after collect, the records of a closed
// destination that took appends through either call are unreachable. (One
// collection leaves them reachable.)
func TestCollectFreesClosedServers(t *testing.T) {
	if testing.Short() {
		t.Skip("starts servers")
	}
	e := &env{log: io.Discard}
	w := newWorkload(200, 10)
	for _, batchAppend := range []bool{false, true} {
		dst, err := startServer(0)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := baseline2(context.Background(), dst.conn(), w, 20, 2, batchAppend, 30*time.Second); err != nil {
			t.Fatalf("batchAppend %v: %v", batchAppend, err)
		}
		store := weak.Make(dst.Store())
		dst.Close()
		e.collect()
		if store.Value() != nil {
			t.Errorf("batchAppend %v: the closed destination's store is still reachable after collect", batchAppend)
		}
		if n := closed.live(); n != 0 {
			t.Errorf("batchAppend %v: %d closed stores still tracked as live", batchAppend, n)
		}
	}
}

// checkCopy checks that every stream of w is on store with the workload's
// ids, numbers and data.
func checkCopy(t *testing.T, store *esdbtest.Store, w workload) {
	t.Helper()
	for s := 0; s < w.streams; s++ {
		recs, err := store.ReadStream(w.stream(s), 0, true, 1000, false)
		if err != nil {
			t.Fatalf("%s: %v", w.stream(s), err)
		}
		if len(recs) != w.perStream(s) {
			t.Fatalf("%s has %d events, want %d", w.stream(s), len(recs), w.perStream(s))
		}
		for n, r := range recs {
			i := w.indexOf(s, n)
			if r.Event.ID != w.id(i) || r.Event.Number != int64(n) || string(r.Event.Data) != string(w.data(i)) || string(r.Event.Metadata) != string(w.metadata(i)) {
				t.Fatalf("%s event %d differs from the workload's event %d", w.stream(s), n, i)
			}
		}
	}
}

// TestSteadyLagMeasures runs the steady-rate measurement with a trivial
// "replicator" (the destination is the source) to check the bookkeeping:
// every sent event gets exactly one lag.
func TestSteadyLagMeasures(t *testing.T) {
	if testing.Short() {
		t.Skip("starts servers")
	}
	srv := esdbtest.Start(t, esdbtest.Options{Insecure: true})
	w := newWorkload(200, 8)
	l, err := steadyLag(context.Background(), srv.ConnectionString(), srv.ConnectionString(), w, 1000, 4, 5*time.Second, 0)
	if err != nil {
		t.Fatal(err)
	}
	if l.sent != w.events || l.seen != w.events || len(l.lags) != w.events {
		t.Errorf("sent %d, seen %d, lags %d; want %d each", l.sent, l.seen, len(l.lags), w.events)
	}
	// With a warm-up, the events of the warm-up arrive but are not measured
	// (at 1000/s, 100ms is about 100 of the 200 events).
	fresh := esdbtest.Start(t, esdbtest.Options{Insecure: true})
	l, err = steadyLag(context.Background(), fresh.ConnectionString(), fresh.ConnectionString(), newWorkload(200, 8), 1000, 4, 5*time.Second, 100*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	if l.seen != 200 || len(l.lags) == 0 || len(l.lags) >= 200 {
		t.Errorf("with a warm-up: seen %d, measured %d; want 200 seen and fewer measured", l.seen, len(l.lags))
	}
	for _, d := range l.lags {
		if d <= 0 || d > 5*time.Second {
			t.Fatalf("implausible lag %s", d)
		}
	}
}

func TestTimelineWindows(t *testing.T) {
	start := time.Unix(0, 0)
	tl := newTimeline(0, start)
	// Every 5 ms: 1,000 more events, 5 ms more of the servers' CPU (one
	// core) and 2.5 ms more of ditto's (half a core).
	for i := 0; i <= 12; i++ {
		at := time.Duration(i) * 5 * time.Millisecond
		tl.samples = append(tl.samples, tlSample{at: at, events: int64(1000 * i), servers: at, ditto: at / 2})
	}
	ws := tl.windows(25 * time.Millisecond)
	var ends []float64
	for _, w := range ws {
		ends = append(ends, w.EndMs)
		if math.Abs(w.EventsPerSec-200_000) > 1e-6 || math.Abs(w.ServersCores-1) > 1e-9 || math.Abs(w.DittoCores-0.5) > 1e-9 {
			t.Errorf("window ending %g ms: %+v, want 200,000 events/s, 1 and 0.5 cores", w.EndMs, w)
		}
	}
	if !slices.Equal(ends, []float64{25, 50, 60}) {
		t.Errorf("windows end at %v ms, want 25, 50 and the last sample, 60", ends)
	}
	if ws[len(ws)-1].Events != 12_000 {
		t.Errorf("last window holds %d events, want 12000", ws[len(ws)-1].Events)
	}
	if got := (&timeline{}).windows(time.Millisecond); got != nil {
		t.Errorf("no samples gave %v", got)
	}
}

func TestParseSchedstat(t *testing.T) {
	if d, err := parseSchedstat([]byte("123456789 42 7\n")); err != nil || d != 123456789*time.Nanosecond {
		t.Errorf("got %v, %v; want 123456789ns", d, err)
	}
	for _, bad := range []string{"", "1 2", "x 2 3", "1 2 3 4"} {
		if _, err := parseSchedstat([]byte(bad)); err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
}

// threadsCPU reads this process's own threads, and their time grows as
// the test computes.
func TestThreadsCPU(t *testing.T) {
	if _, err := os.Stat("/proc/self/task/" + strconv.Itoa(os.Getpid()) + "/schedstat"); err != nil {
		t.Skipf("no per-thread schedstat on this kernel: %v", err)
	}
	before, err := threadsCPU(os.Getpid())
	if err != nil || before <= 0 {
		t.Fatalf("threadsCPU = %v, %v", before, err)
	}
	sum := 0
	for i := 0; i < 1e8; i++ {
		sum += i & 3
	}
	after, err := threadsCPU(os.Getpid())
	if err != nil || after <= before {
		t.Fatalf("threadsCPU went from %v to %v (%v) over 1e8 iterations (sum %d)", before, after, err, sum)
	}
	if _, err := threadsCPU(-1); err == nil {
		t.Error("no error for a process that does not exist")
	}
}

func TestPromSum(t *testing.T) {
	text := "# TYPE ditto_events_processed_total counter\n" +
		"ditto_events_processed_total{app=\"ditto\",group=\"g\",stream=\"$ce-a\"} 40\n" +
		"ditto_events_processed_total{app=\"ditto\",group=\"g\",stream=\"$ce-b\"} 2\n" +
		"ditto_io_duration_seconds_count{operation=\"put_records\",system=\"kinesis\"} 7\n" +
		"ditto_io_duration_seconds_count{operation=\"describe_stream_summary\",system=\"kinesis\"} 3\n"
	if got := promSum(text, "ditto_events_processed_total", ""); got != 42 {
		t.Errorf("sum = %g, want 42", got)
	}
	if got := promSum(text, "ditto_io_duration_seconds_count", `operation="put_records"`); got != 7 {
		t.Errorf("put_records calls = %g, want 7", got)
	}
	if got := promSum(text, "ditto_events", ""); got != 0 {
		t.Errorf("a prefix of a name matched: %g", got)
	}
}

func TestKinesisTargets(t *testing.T) {
	for _, sc := range []string{"k", "l"} {
		r := &result{Scenario: sc, Ditto: &measured{EventsPerSec: 21000}, Baseline1: &measured{EventsPerSec: 1000}}
		r.evaluate()
		if len(r.Targets) != 1 || !r.Targets[0].Met || r.Targets[0].Want != ">= 20x" {
			t.Errorf("(%s) targets = %+v; want ×21 to meet >= 20x", sc, r.Targets)
		}
	}
	if _, ok := scenarios["k"]; !ok || strings.Contains(mustDefault(t), "k") {
		t.Error("scenario k must exist and not be in the default list")
	}
}

// mustDefault is the default of --scenario.
func mustDefault(t *testing.T) string {
	t.Helper()
	c, err := parseFlags(nil, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	return strings.Join(c.scenarios, ",")
}

// A sink variable passed through to the fan-out run goes to each
// destination under its name; ditto's own variables pass as they are.
func TestPerDestination(t *testing.T) {
	if got := perDestination("DITTO_BATCH_APPEND=false"); !slices.Equal(got, []string{"DITTO_ONE_BATCH_APPEND=false", "DITTO_TWO_BATCH_APPEND=false"}) {
		t.Errorf("DITTO_BATCH_APPEND became %q", got)
	}
	for _, kv := range []string{"DITTO_BUFFER_SIZE=5", "GOGC=300"} {
		if got := perDestination(kv); !slices.Equal(got, []string{kv}) {
			t.Errorf("%s became %q", kv, got)
		}
	}
}

// Scenario p's workload alternates two types inside each stream, so that its
// filter drops events inside streams, and keeps half of them.
func TestTwoTypeWorkload(t *testing.T) {
	w := newWorkload(1000, 10)
	w.twoTypes = true
	if got := w.ofEventType(); got != 500 {
		t.Fatalf("%d events of %s, want 500", got, eventType)
	}
	for i := 0; i < 30; i++ {
		want := eventType
		if w.number(i)%2 == 1 {
			want = otherType
		}
		if w.eventType(i) != want || w.proposed(i).Type != want || w.eventData(i).EventType != want {
			t.Fatalf("event %d (%s #%d) is of type %s, want %s", i, w.stream(i), w.number(i), w.eventType(i), want)
		}
	}
	if one := newWorkload(100, 10); one.ofEventType() != 100 {
		t.Fatal("a one-type workload has another type")
	}
	// Its runs are compared by the filtered copy's rate over the whole one's.
	runs := []*result{{Ditto: &measured{EventsPerSec: 90}, Unfiltered: &measured{EventsPerSec: 100}},
		{Ditto: &measured{EventsPerSec: 50}, Unfiltered: &measured{EventsPerSec: 100}},
		{Ditto: &measured{EventsPerSec: 120}, Unfiltered: &measured{EventsPerSec: 100}}}
	for _, r := range runs {
		r.evaluate()
	}
	if m := median(runs); m.VsUnfiltered != 0.9 {
		t.Fatalf("median run %+v", m)
	}
}
