package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"runtime"
	"runtime/pprof"
	"sync"
	"time"

	"github.com/EventStore/EventStore-Client-Go/v4/esdb"
)

// env is what every scenario needs.
type env struct {
	bin   string // ditto binary
	dir   string // temporary directory (ditto logs)
	scale float64
	log   io.Writer // progress lines
	// cpuprof, if set, receives a CPU profile of this process (the test
	// servers) while ditto runs.
	cpuprof string
	// timeline records each ditto run in windows (see timeline).
	timeline bool
	// buffer is ditto's subscription buffer size in these runs, which the
	// source limit (baseline 3) reads with too.
	buffer int
}

// profile starts the CPU profile if asked for; the returned func stops it.
func (e *env) profile() func() {
	if e.cpuprof == "" {
		return func() {}
	}
	f, err := os.Create(e.cpuprof)
	if err != nil {
		e.logf("cpuprofile: %v", err)
		return func() {}
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		e.logf("cpuprofile: %v", err)
		return func() {}
	}
	return sync.OnceFunc(func() {
		pprof.StopCPUProfile()
		f.Close()
	})
}

func (e *env) scaled(n int) int { return max(1, int(float64(n)*e.scale)) }

func (e *env) logf(format string, args ...any) {
	fmt.Fprintf(e.log, "  "+format+"\n", args...)
}

// scenario is one benchmark.
type scenario struct {
	title string
	run   func(context.Context, *env) (*result, error)
}

// Targets of the issue. They are reported, never enforced.
const (
	targetAB1   = 10.0 // (a) ditto ≥ 10× baseline 1
	targetAB2   = 0.5  // (a) ditto ≥ 0.5 of the raw limit
	targetEB1   = 50.0 // (e) ditto ≥ 50× baseline 1 across the delayed link
	targetBB2   = 0.5  // (b) ditto ≥ 0.5 of the raw limit for the hot stream
	targetCP99  = 50 * time.Millisecond
	targetDRSS  = 150 << 20
	steadyRate  = 2000.0
	linkDelay   = 5 * time.Millisecond
	rawBatch    = 100
	rawWriters  = 4
	lagWriters  = 4
	lagWarmup   = time.Second
	b1MaxSample = 5000
	// timelineWindow is the width of --timeline's windows: five polls.
	timelineWindow = 5 * pollEvery
)

var scenarios = map[string]scenario{
	"a": {"100k events over 1,000 streams", func(ctx context.Context, e *env) (*result, error) {
		return throughput(ctx, e, e.scaled(100_000), 1000, 0, true)
	}},
	"b": {"20k events in one hot stream", func(ctx context.Context, e *env) (*result, error) {
		return throughput(ctx, e, e.scaled(20_000), 1, 0, true)
	}},
	"c": {"steady 2,000 events/s over 1,000 streams: replication lag", lag},
	"d": {"1M-event backlog over 1,000 streams: peak RSS of ditto", func(ctx context.Context, e *env) (*result, error) {
		return throughput(ctx, e, e.scaled(1_000_000), 1000, 0, false)
	}},
	"e": {"scenario a through a 5 ms (each way) delay to each server", func(ctx context.Context, e *env) (*result, error) {
		return throughput(ctx, e, e.scaled(100_000), 1000, linkDelay, true)
	}},
	"f": {"scenario a into Kafka (kfake), against franz-go producing the same records and the EventStore sink", kafkaScenario},
	// Not run by default: they need kinesalite (npm), see internal/kinesalite.
	"k": {"100k events over 1,000 streams into Kinesis (kinesalite), DITTO_SINK=kinesis", func(ctx context.Context, e *env) (*result, error) {
		return kinesisThroughput(ctx, e, 0)
	}},
	"l": {"scenario k through a 5 ms (each way) delay to kinesalite", func(ctx context.Context, e *env) (*result, error) {
		return kinesisThroughput(ctx, e, linkDelay)
	}},
	"o": {"100k events over 1,000 streams to two destinations: fan-out against two processes", fanOut},
	"p": {"scenario a with a filter that keeps half the event types, against a without it: the cost of the policy stage", filtered},
}

// filterVar is scenario p's filter: it drops the odd-numbered events of each
// stream, so that destination numbers are the destination's own and ditto
// writes provenance and orders by it.
const filterVar = "DITTO_EXCLUDE_EVENT_TYPES=" + otherType

// filtered is scenario p: scenario a's events, of two types in turn in each
// stream, copied by ditto whole and then, into another destination, with a
// filter that keeps one type. Rates and CPU are per source event.
func filtered(ctx context.Context, e *env) (*result, error) {
	w := newWorkload(e.scaled(100_000), 1000)
	w.twoTypes = true
	res := &result{Events: w.events, Streams: w.streams}
	src, err := e.seededSource(ctx, w, 0, []string{"ditto-bench", "ditto-filtered"}...)
	if err != nil {
		return res, err
	}
	defer src.Close()
	whole, err := e.dittoRun(ctx, src, w, 0, "ditto-bench", w.events)
	if err != nil {
		return res, err
	}
	res.Unfiltered = whole.m
	e.logf("ditto without the filter: %.0f events/s, CPU/event %.1f µs, peak RSS %.1f MiB", whole.m.EventsPerSec, whole.m.CPUMicrosPerEvent, whole.rss)
	half, err := e.dittoRun(ctx, src, w, 0, "ditto-filtered", w.ofEventType(), filterVar)
	if err != nil {
		return res, err
	}
	res.Ditto, res.PeakRSSMB, res.Timeline = half.m, half.rss, half.timeline
	e.logf("ditto with %s: %.0f source events/s, CPU/event %.1f µs, peak RSS %.1f MiB", filterVar, half.m.EventsPerSec, half.m.CPUMicrosPerEvent, half.rss)
	return res, nil
}

// throughput seeds events over streams on a source, then measures the raw
// limit (baseline 2), ditto and baseline 1, each into its own fresh
// destination. With delay > 0 every client (ditto, both baselines) reaches
// the servers through proxies adding delay each way.
func throughput(ctx context.Context, e *env, events, streams int, delay time.Duration, baselines bool) (*result, error) {
	w := newWorkload(events, streams)
	res := &result{Events: w.events, Streams: w.streams, DelayMs: ms(delay)}
	groups := []string{"ditto-bench"}
	if baselines {
		groups = append(groups, "baseline-1", "source-limit")
	}
	src, err := e.seededSource(ctx, w, delay, groups...)
	if err != nil {
		return res, err
	}
	defer src.Close()
	if baselines {
		if err := e.raw(ctx, res, w, delay); err != nil {
			return res, err
		}
		if err := e.source(ctx, res, src, w); err != nil {
			return res, err
		}
	}
	f, err := e.ditto(ctx, src, w, delay)
	if err != nil {
		return res, err
	}
	res.Ditto, res.PeakRSSMB, res.Timeline = f.m, f.rss, f.timeline
	if baselines {
		if err := e.eventStoreReference(ctx, res, src, w, delay); err != nil {
			return res, err
		}
	}
	return res, nil
}

// collect collects the garbage of this process (the test servers) before a
// measurement, so that none pays for the garbage of the one before (a
// destination just closed, the seeding): with the source's records live, a
// collection here takes tens of milliseconds and, landing inside a run of
// well under a second, moved the raw limit by up to a third.
//
// It runs until the servers closed so far are freed. One collection is not
// enough: a closed server's records are still reachable during the first
// and freed by the second. With one, the raw limit's second run started
// with the first one's destination live (256 MB instead of 111 MB, so its
// collections came at twice the heap), and ditto's run now and then with
// the raw limit's.
func (e *env) collect() {
	for i := 0; i < maxCollections; i++ {
		runtime.GC()
		if closed.live() == 0 {
			return
		}
		runtime.Gosched() // lets other goroutines, such as finalizers, run between collections
	}
	e.logf("note: %d closed test server(s) still reachable after %d collections", closed.live(), maxCollections)
}

// maxCollections bounds collect; two are enough in practice.
const maxCollections = 10

// measureLimit measures a run without ditto (a limit, baseline 2 or 3):
// run does it and returns the time it took; the CPU is this process's (the
// servers and the client) over the call, plus, if set, others' (kinesalite).
func (e *env) measureLimit(events int, others func() time.Duration, run func() (time.Duration, error)) (*measured, error) {
	if others == nil {
		others = func() time.Duration { return 0 }
	}
	e.collect()
	selfStart, othersStart := selfCPU(), others()
	took, err := run()
	if err != nil {
		return nil, err
	}
	m := &measured{Events: events, Seconds: took.Seconds(), EventsPerSec: rate(events, took),
		CPUMicrosPerEvent: perEvent(selfCPU()-selfStart+others()-othersStart, events)}
	m.CoresBusy = coresBusy(m.CPUMicrosPerEvent, m.EventsPerSec)
	return m, nil
}

// raw measures baseline 2: the workload appended through Append and through
// BatchAppend, each into a fresh destination; the faster is the limit.
func (e *env) raw(ctx context.Context, res *result, w workload, delay time.Duration) error {
	writers := min(rawWriters, w.streams)
	var rates [2]float64
	for i, batchAppend := range []bool{false, true} {
		dst, err := startServer(delay)
		if err != nil {
			return err
		}
		m, err := e.measureLimit(w.events, nil, func() (time.Duration, error) {
			defer dst.Close()
			return baseline2(ctx, dst.conn(), w, rawBatch, writers, batchAppend, 10*time.Minute)
		})
		if err != nil {
			return err
		}
		rates[i] = m.EventsPerSec
		call := []string{"Append", "BatchAppend"}[i]
		e.logf("baseline 2 (raw limit) through %s: %d events in %s: %.0f events/s, CPU/event %.1f µs",
			call, w.events, m.took(), rates[i], m.CPUMicrosPerEvent)
		if res.Baseline2 == nil || rates[i] > res.Baseline2.EventsPerSec {
			res.Baseline2 = m
		}
	}
	b2 := res.Baseline2
	b2.Note = fmt.Sprintf("%d per append, %d writer(s); Append %.0f events/s, BatchAppend %.0f events/s, the faster counts; its CPU per event (client and server) %.1f µs, cores busy %.2f",
		rawBatch, writers, rates[0], rates[1], b2.CPUMicrosPerEvent, b2.CoresBusy)
	return nil
}

// source measures baseline 3, the source's own limit, on a group of its
// own with ditto's buffer size.
func (e *env) source(ctx context.Context, res *result, src *server, w workload) error {
	m, err := e.measureLimit(w.events, nil, func() (time.Duration, error) {
		return sourceLimit(ctx, src.conn(), "source-limit", w.events, e.buffer, 10*time.Minute)
	})
	if err != nil {
		return err
	}
	m.Note = fmt.Sprintf("read with ditto's consumer, %d in flight, acked in hundreds, written nowhere; its CPU per event (source and reader) %.1f µs, cores busy %.2f",
		e.buffer, m.CPUMicrosPerEvent, m.CoresBusy)
	res.Baseline3 = m
	e.logf("baseline 3 (source limit): %d events in %s: %.0f events/s, CPU/event %.1f µs",
		w.events, m.took(), m.EventsPerSec, m.CPUMicrosPerEvent)
	return nil
}

// ditto runs the ditto process from the source's start into a fresh
// destination until it holds every event, and logs its figures.
func (e *env) ditto(ctx context.Context, src *server, w workload, delay time.Duration) (*dittoFigures, error) {
	f, err := e.dittoRun(ctx, src, w, delay, "ditto-bench", w.events)
	if err != nil {
		return nil, err
	}
	m := f.m
	e.logf("ditto: %d events in %s: %.0f events/s, %.1f events per append, peak RSS %.1f MiB, CPU/event ditto %.1f µs, servers %.1f µs, page faults %d",
		w.events, m.took(), m.EventsPerSec, m.MeanBatch, f.rss, m.CPUMicrosPerEvent, m.ServersCPUMicrosPerEvent, m.PageFaults)
	return f, nil
}

// dittoRun runs ditto on group, with the extra DITTO_* settings, into a fresh
// destination until it holds want events.
func (e *env) dittoRun(ctx context.Context, src *server, w workload, delay time.Duration, group string, want int, extra ...string) (*dittoFigures, error) {
	dst, err := startServer(delay)
	if err != nil {
		return nil, err
	}
	defer dst.Close()
	f, err := e.measure(ctx, runSpec{events: w.events, want: want, timeline: true,
		start: func() ([]*ditto, error) {
			d, err := startDitto(e.bin, e.dir, src.conn(), dst.conn(), group, extra...)
			return []*ditto{d}, err
		},
		count: func() int64 { return destinationEvents(dst.Store()) },
	})
	if err != nil {
		return nil, fmt.Errorf("ditto: %w", err)
	}
	m := f.m
	m.Note = fmt.Sprintf("first event on the destination after %s; %.1f events per append; CPU per event: ditto %.1f µs, test servers %.1f µs; cores busy %.2f; ditto's page faults %d",
		f.first.Round(time.Millisecond), m.MeanBatch, m.CPUMicrosPerEvent, m.ServersCPUMicrosPerEvent, m.CoresBusy, m.PageFaults)
	return f, nil
}

// runSpec is what measure measures: the ditto processes start starts, until
// count reaches want.
type runSpec struct {
	events int // the source's events: the figures are per source event
	want   int
	start  func() ([]*ditto, error)
	count  func() int64
	// others, if set, is the CPU time so far of the servers outside this
	// process (kinesalite).
	others func() time.Duration
	// timeline records the run in windows with --timeline: one process,
	// and a count that moves at every poll.
	timeline bool
}

// dittoFigures are the figures of a run.
type dittoFigures struct {
	m        *measured     // per source event, without a note
	first    time.Duration // from starting ditto to the first event written
	servers  time.Duration // CPU time of this process (the test servers)
	others   time.Duration // CPU time of the other servers (runSpec.others)
	rss      float64       // peak RSS, MiB; with several processes, the sum
	timeline []tlWindow
}

// measure runs r. The time runs from starting the processes (connecting
// included) to count reaching want; the CPU is that of the processes and,
// over that time, of this process (the test servers) and of r.others.
func (e *env) measure(ctx context.Context, r runSpec) (*dittoFigures, error) {
	others := func() time.Duration { return 0 }
	if r.others != nil {
		others = r.others
	}
	e.collect()
	stopProfile := e.profile()
	defer stopProfile()
	selfStart, othersStart := selfCPU(), others()
	start := time.Now()
	ds, err := r.start()
	if err != nil {
		return nil, err
	}
	defer func() {
		for _, d := range ds {
			d.stop()
		}
	}()
	var tl *timeline
	var poll func(time.Time, int64)
	if e.timeline && r.timeline && len(ds) == 1 {
		tl = newTimeline(ds[0].cmd.Process.Pid, start)
		poll = tl.record
	}
	limit := time.Minute + time.Duration(r.events/200)*time.Second
	p, err := waitCount(ctx, r.count, r.want, limit, time.Minute, func() error {
		for _, d := range ds {
			d.sampleRSS()
			if err := d.alive(); err != nil {
				return err
			}
		}
		return nil
	}, poll)
	if err != nil {
		if len(ds) == 1 && ds[0].alive() == nil && ctx.Err() == nil {
			err = fmt.Errorf("%w; log:\n%s", err, tail(ds[0].log, 20))
		}
		return nil, err
	}
	took := p.done.Sub(start)
	f := &dittoFigures{first: p.first.Sub(start), servers: selfCPU() - selfStart, others: others() - othersStart}
	stopProfile()
	if tl != nil {
		f.timeline = tl.windows(timelineWindow)
	}
	m := &measured{Events: r.events, Seconds: took.Seconds(), EventsPerSec: rate(r.events, took),
		ServersCPUMicrosPerEvent: perEvent(f.servers+f.others, r.events)}
	var cpu time.Duration
	for _, d := range ds {
		f.rss += float64(d.PeakRSS()) / (1 << 20)
		u := d.usage()
		cpu += u.cpu
		m.PageFaults += u.faults
		m.MeanBatch += d.meanBatch(ctx) / float64(len(ds))
	}
	m.CPUMicrosPerEvent = perEvent(cpu, r.events)
	m.CoresBusy = coresBusy(m.CPUMicrosPerEvent+m.ServersCPUMicrosPerEvent, m.EventsPerSec)
	f.m = m
	return f, nil
}

// eventStoreReference measures baseline 1 into a fresh destination.
func (e *env) eventStoreReference(ctx context.Context, res *result, src *server, w workload, delay time.Duration) error {
	dst, err := startServer(delay)
	if err != nil {
		return err
	}
	defer dst.Close()
	c, err := newClient(dst.conn())
	if err != nil {
		return err
	}
	defer c.Close()
	return e.reference(ctx, res, src, w, "reference", appendEach(c))
}

// reference measures baseline 1 on a sample of the events, each written
// with write; what names it in the log.
func (e *env) reference(ctx context.Context, res *result, src *server, w workload, what string, write func(context.Context, *esdb.RecordedEvent) error) error {
	sample := min(w.events, b1MaxSample)
	maxTime := time.Duration(float64(15*time.Second) * min(1, max(e.scale, 0.2)))
	b1, err := baseline1(ctx, src.conn(), "baseline-1", sample, maxTime, write)
	if err != nil {
		return err
	}
	m := &measured{Events: b1.events, Seconds: b1.elapsed.Seconds(), EventsPerSec: rate(b1.events, b1.elapsed)}
	if b1.events < w.events {
		m.Sampled = true
		m.Note = fmt.Sprintf("sample of %d of %d events in %s, extrapolated as a rate", b1.events, w.events, b1.elapsed.Round(time.Millisecond))
	}
	res.Baseline1 = m
	e.logf("baseline 1 (%s): %d events in %s: %.0f events/s", what, b1.events, b1.elapsed.Round(time.Millisecond), m.EventsPerSec)
	return nil
}

// coresBusy is the cores a run kept busy, from its CPU per event (µs) and
// its rate.
func coresBusy(cpuPerEvent, eventsPerSec float64) float64 {
	return cpuPerEvent * eventsPerSec / 1e6
}

// perEvent is CPU time per event in microseconds.
func perEvent(cpu time.Duration, events int) float64 {
	if events <= 0 {
		return 0
	}
	return float64(cpu) / float64(time.Microsecond) / float64(events)
}

// lag is scenario c: ditto runs against an empty source; events arrive at
// 2,000/s for 20s (scaled, at least 4s) and the lag of each one sent after
// the first second is recorded.
func lag(ctx context.Context, e *env) (*result, error) {
	duration := max(4*time.Second, time.Duration(float64(20*time.Second)*e.scale))
	events := int(steadyRate * duration.Seconds())
	w := newWorkload(events, 1000)
	res := &result{Events: w.events, Streams: w.streams}
	src, err := startServer(0)
	if err != nil {
		return res, err
	}
	defer src.Close()
	dst, err := startServer(0)
	if err != nil {
		return res, err
	}
	defer dst.Close()
	admin, err := newClient(src.ConnectionString())
	if err != nil {
		return res, err
	}
	defer admin.Close()
	if err := createGroup(ctx, admin, "ditto-bench"); err != nil {
		return res, err
	}
	d, err := startDitto(e.bin, e.dir, src.conn(), dst.conn(), "ditto-bench")
	if err != nil {
		return res, err
	}
	defer d.stop()
	if err := d.waitReady(ctx, 30*time.Second); err != nil {
		return res, err
	}
	l, err := steadyLag(ctx, src.ConnectionString(), dst.ConnectionString(), w, steadyRate, lagWriters, duration+time.Second, lagWarmup)
	res.PeakRSSMB = float64(d.PeakRSS()) / (1 << 20)
	if aerr := d.alive(); aerr != nil && err == nil {
		err = aerr
	}
	if err != nil {
		return res, err
	}
	s := summarize(l.lags)
	res.Lag = &lagFigures{Samples: s.N, Sent: l.sent, WarmupMs: ms(lagWarmup), OfferedPerSec: l.sendRate, P50Ms: ms(s.P50), P99Ms: ms(s.P99), MaxMs: ms(s.Max)}
	e.logf("lag over %d events at %.0f events/s: p50 %.1f ms, p99 %.1f ms, max %.1f ms", s.N, l.sendRate, res.Lag.P50Ms, res.Lag.P99Ms, res.Lag.MaxMs)
	return res, nil
}

// seededSource starts a source server (through a delay proxy, as
// startServer), seeds w into it and creates groups on it, each at the
// start; the caller closes it.
func (e *env) seededSource(ctx context.Context, w workload, delay time.Duration, groups ...string) (*server, error) {
	src, err := startServer(delay)
	if err != nil {
		return nil, err
	}
	t := time.Now()
	if err := seed(ctx, src.Store(), w); err != nil {
		src.Close()
		return nil, err
	}
	e.logf("seeded %d events over %d streams in %s", w.events, w.streams, time.Since(t).Round(time.Millisecond))
	admin, err := newClient(src.ConnectionString())
	if err != nil {
		src.Close()
		return nil, err
	}
	defer admin.Close()
	for _, g := range groups {
		if err := createGroup(ctx, admin, g); err != nil {
			src.Close()
			return nil, err
		}
	}
	return src, nil
}
