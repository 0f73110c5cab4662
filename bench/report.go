package main

import (
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
)

// report is the whole run, as printed or encoded with --json.
type report struct {
	Cores      int     `json:"cores"` // runtime.NumCPU()
	GOMAXPROCS int     `json:"gomaxprocs"`
	GoVersion  string  `json:"go_version"`
	Scale      float64 `json:"scale"`
	Repeat     int     `json:"repeat"`
	// DittoDefaults are the defaults of the levers in the built ditto;
	// DittoEnv the DITTO_* tuning variables passed through, which override
	// them.
	DittoDefaults map[string]string `json:"ditto_defaults,omitempty"`
	DittoEnv      []string          `json:"ditto_env,omitempty"`
	Started       time.Time         `json:"started"`
	Finished      time.Time         `json:"finished"`
	Results       []*result         `json:"results"`
}

// measured is one throughput figure.
type measured struct {
	Events       int     `json:"events"`
	Seconds      float64 `json:"seconds"`
	EventsPerSec float64 `json:"events_per_sec"`
	Sampled      bool    `json:"sampled,omitempty"`    // a sample, extrapolated as a rate
	MeanBatch    float64 `json:"mean_batch,omitempty"` // ditto: events per append
	// CPU time per event: of the ditto process, or of the whole baseline
	// (client and server); ServersCPU… is the bench process (the test
	// servers) while ditto ran.
	CPUMicrosPerEvent        float64 `json:"cpu_us_per_event,omitempty"`
	ServersCPUMicrosPerEvent float64 `json:"servers_cpu_us_per_event,omitempty"`
	// CoresBusy is the CPU the measured processes used per second of the
	// run: beside CPU per event, it tells a run that wasted cores (waiting,
	// or the kernel leaving one idle) from one that needed more work.
	CoresBusy float64 `json:"cores_busy,omitempty"`
	// PageFaults are the ditto process's minor page faults over its run:
	// first touches of memory, which cost about 10 µs each on some
	// virtual machines.
	PageFaults int64  `json:"page_faults,omitempty"`
	Note       string `json:"note,omitempty"`

	// PeakRSSMB is the peak RSS of the run's ditto processes, summed
	// (scenario o).
	PeakRSSMB float64 `json:"peak_rss_mib,omitempty"`
}

// took is the time the run took, to the millisecond, for the log.
func (m *measured) took() time.Duration {
	return time.Duration(m.Seconds * float64(time.Second)).Round(time.Millisecond)
}

type lagFigures struct {
	Samples       int     `json:"samples"` // events measured (sent after the warm-up)
	Sent          int     `json:"sent"`
	WarmupMs      float64 `json:"warmup_ms"`
	OfferedPerSec float64 `json:"offered_events_per_sec"`
	P50Ms         float64 `json:"p50_ms"`
	P99Ms         float64 `json:"p99_ms"`
	MaxMs         float64 `json:"max_ms"`
}

type target struct {
	Name string  `json:"name"`
	Want string  `json:"want"`
	Got  float64 `json:"got"`
	Met  bool    `json:"met"`
}

// result is one scenario's figures.
type result struct {
	Scenario  string    `json:"scenario"`
	Title     string    `json:"title"`
	Events    int       `json:"events"`
	Streams   int       `json:"streams"`
	DelayMs   float64   `json:"delay_ms_each_way,omitempty"`
	Ditto     *measured `json:"ditto,omitempty"`
	Baseline1 *measured `json:"baseline1,omitempty"` // benfoster/ditto's algorithm
	Baseline2 *measured `json:"baseline2,omitempty"` // raw destination limit
	Baseline3 *measured `json:"baseline3,omitempty"` // the source's own limit
	// EventStoreSink is, in scenario f, ditto with the EventStore sink on
	// the same workload (Ditto is then ditto into Kafka, Baseline2
	// franz-go's own rate).
	EventStoreSink *measured `json:"eventstore_sink,omitempty"`
	VsEventStore   float64   `json:"ratio_to_eventstore_sink,omitempty"`
	// Unfiltered is, in scenario p, ditto copying every event; Ditto is
	// then the filtered copy, per source event.
	Unfiltered *measured `json:"unfiltered,omitempty"`
	// VsUnfiltered is Ditto's rate over Unfiltered's.
	VsUnfiltered float64     `json:"ratio_to_unfiltered,omitempty"`
	VsB1         float64     `json:"ratio_to_baseline1,omitempty"`
	VsB2         float64     `json:"ratio_to_baseline2,omitempty"`
	Lag          *lagFigures `json:"lag,omitempty"`
	PeakRSSMB    float64     `json:"ditto_peak_rss_mib,omitempty"`
	Targets      []target    `json:"targets,omitempty"`
	Error        string      `json:"error,omitempty"`
	// Runs holds the key figure of every run when the scenario ran more
	// than once (--repeat); the other figures are the median run's.
	Runs []float64 `json:"runs,omitempty"`
	// Timeline is the ditto run in windows (--timeline).
	Timeline []tlWindow `json:"timeline,omitempty"`

	// Scenario o: Ditto is the fan-out run (one process, two
	// destinations), Eventual two processes with a destination each,
	// Single one process with one destination.
	Eventual   *measured `json:"eventual,omitempty"`
	Single     *measured `json:"single,omitempty"`
	VsEventual float64   `json:"ratio_to_eventual,omitempty"`
	VsSingle   float64   `json:"ratio_to_single,omitempty"`
}

// keyFigure is the figure by which --repeat picks the median run, with its
// name and the digits it is printed with: lag p99 for scenario c, the ratio
// to the raw limit where there is one (each run measures its own limit, so a
// run picked by ditto's rate alone could pair it with an outlying limit),
// the fan-out's ratio to two processes (o), the filtered copy's rate over
// the whole one's (p), else ditto's events/s.
func (r *result) keyFigure() (value float64, name string, digits int) {
	switch {
	case r.Lag != nil:
		return r.Lag.P99Ms, "lag p99 ms", 1
	case r.VsB2 > 0:
		return r.VsB2, "ditto / baseline 2", 2
	case r.VsEventual > 0:
		return r.VsEventual, "fan-out / eventual", 2
	case r.VsUnfiltered > 0:
		return r.VsUnfiltered, "filtered / unfiltered events/s", 2
	}
	return eps(r.Ditto), "ditto events/s", 1
}

// vsB2Factors splits the ratio to the raw limit into the ratio of CPU per
// event and the ratio of busy cores, whose product it is: on a shared
// machine the second says how much the ratio lost to cores left idle.
func (r *result) vsB2Factors() (cpu, busy float64, ok bool) {
	d, b := r.Ditto, r.Baseline2
	if d == nil || b == nil || d.CoresBusy <= 0 || b.CoresBusy <= 0 {
		return 0, 0, false
	}
	return b.CPUMicrosPerEvent / (d.CPUMicrosPerEvent + d.ServersCPUMicrosPerEvent), d.CoresBusy / b.CoresBusy, true
}

func eps(m *measured) float64 {
	if m == nil {
		return 0
	}
	return m.EventsPerSec
}

// twoLimits is the raw limit's CPU per event over its sum with the source
// limit's: the ratio to the raw limit of a replicator whose run cost no more
// than the two limits' work together, on cores as busy as the raw limit's.
// The source's deliveries, receiving and acking them are work the raw limit
// never does and a replicator cannot skip. excess is what ditto's run took
// per event beyond the two.
func (r *result) twoLimits() (ratio, excess float64, ok bool) {
	b2, b3 := r.Baseline2, r.Baseline3
	if b2 == nil || b3 == nil || b2.CPUMicrosPerEvent <= 0 || b3.CPUMicrosPerEvent <= 0 {
		return 0, 0, false
	}
	ratio = b2.CPUMicrosPerEvent / (b2.CPUMicrosPerEvent + b3.CPUMicrosPerEvent)
	if d := r.Ditto; d != nil && d.CPUMicrosPerEvent > 0 {
		excess = d.CPUMicrosPerEvent + d.ServersCPUMicrosPerEvent - b2.CPUMicrosPerEvent - b3.CPUMicrosPerEvent
	}
	return ratio, excess, true
}

// evaluate computes the ratios and checks the scenario's targets. A target
// whose figure is missing (the scenario failed) is reported as not met.
func (r *result) evaluate() {
	r.VsB1 = ratio(eps(r.Ditto), eps(r.Baseline1))
	r.VsB2 = ratio(eps(r.Ditto), eps(r.Baseline2))
	r.VsEventual = ratio(eps(r.Ditto), eps(r.Eventual))
	r.VsSingle = ratio(eps(r.Ditto), eps(r.Single))
	r.VsUnfiltered = ratio(eps(r.Ditto), eps(r.Unfiltered))
	atLeast := func(name string, got, want float64, unit string) {
		r.Targets = append(r.Targets, target{Name: name, Want: fmt.Sprintf(">= %g%s", want, unit), Got: got, Met: got >= want})
	}
	switch r.Scenario {
	case "a":
		atLeast("ditto / baseline 1", r.VsB1, targetAB1, "x")
		atLeast("ditto / baseline 2", r.VsB2, targetAB2, "")
	case "b":
		atLeast("ditto / baseline 2", r.VsB2, targetBB2, "")
	case "c":
		got := -1.0
		if r.Lag != nil {
			got = r.Lag.P99Ms
		}
		r.Targets = append(r.Targets, target{Name: "lag p99 (ms)", Want: fmt.Sprintf("< %g", ms(targetCP99)), Got: got,
			Met: r.Lag != nil && r.Error == "" && got < ms(targetCP99)})
	case "d":
		r.Targets = append(r.Targets, target{Name: "peak RSS (MiB)", Want: fmt.Sprintf("< %d", targetDRSS>>20), Got: r.PeakRSSMB,
			Met: r.Ditto != nil && r.PeakRSSMB > 0 && r.PeakRSSMB < targetDRSS>>20})
	case "e":
		atLeast("ditto / baseline 1", r.VsB1, targetEB1, "x")
	case "f":
		r.VsEventStore = ratio(eps(r.Ditto), eps(r.EventStoreSink))
		atLeast("ditto into Kafka / franz-go's own rate", r.VsB2, targetFB2, "")
	case "k", "l":
		atLeast("ditto / baseline 1", r.VsB1, targetKB1, "x")
	}
	if r.Error != "" {
		for i := range r.Targets {
			r.Targets[i].Met = false
		}
	}
}

func num(v float64, format string) string {
	if v <= 0 {
		return "-"
	}
	return fmt.Sprintf(format, v)
}

// print writes the table, the targets and the notes.
func (rep *report) print(w io.Writer) {
	fmt.Fprintf(w, "ditto bench: %d cores (runtime.NumCPU), GOMAXPROCS %d, %s, scale %g, %d run(s) per scenario\n", rep.Cores, rep.GOMAXPROCS, rep.GoVersion, rep.Scale, rep.Repeat)
	var defs []string
	for _, k := range leverVars {
		if v, ok := rep.DittoDefaults[k]; ok {
			defs = append(defs, k+"="+v)
		}
	}
	fmt.Fprintf(w, "ditto defaults: %s\n", strings.Join(defs, " "))
	if len(rep.DittoEnv) > 0 {
		fmt.Fprintf(w, "ditto settings from the environment (override the defaults): %s\n", strings.Join(rep.DittoEnv, " "))
	}
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "scenario\tevents\tstreams\tdelay ms\tditto ev/s\tbaseline1 ev/s\tbaseline2 ev/s\tx baseline1\tx baseline2\tlag p50 ms\tlag p99 ms\tpeak RSS MiB\tev/append\tCPU µs/ev ditto+servers\t")
	for _, r := range rep.Results {
		p50, p99 := 0.0, 0.0
		if r.Lag != nil {
			p50, p99 = r.Lag.P50Ms, r.Lag.P99Ms
		}
		b1 := num(eps(r.Baseline1), "%.0f")
		if r.Baseline1 != nil && r.Baseline1.Sampled {
			b1 += "*"
		}
		batch, cpu := "-", "-"
		if r.Ditto != nil {
			batch = num(r.Ditto.MeanBatch, "%.1f")
			if r.Ditto.CPUMicrosPerEvent > 0 {
				cpu = fmt.Sprintf("%.1f+%.1f", r.Ditto.CPUMicrosPerEvent, r.Ditto.ServersCPUMicrosPerEvent)
			}
		}
		fmt.Fprintf(tw, "%s\t%d\t%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t\n", r.Scenario, r.Events, r.Streams, num(r.DelayMs, "%g"),
			num(eps(r.Ditto), "%.0f"), b1, num(eps(r.Baseline2), "%.0f"),
			num(r.VsB1, "%.1f"), num(r.VsB2, "%.2f"), num(p50, "%.1f"), num(p99, "%.1f"), num(r.PeakRSSMB, "%.1f"), batch, cpu)
	}
	tw.Flush()
	fmt.Fprintln(w)
	fmt.Fprintln(w, "targets:")
	for _, r := range rep.Results {
		for _, t := range r.Targets {
			verdict := "NOT MET"
			if t.Met {
				verdict = "met"
			}
			fmt.Fprintf(w, "  (%s) %s %s: %.2f  %s\n", r.Scenario, t.Name, t.Want, t.Got, verdict)
		}
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "notes:")
	for _, r := range rep.Results {
		fmt.Fprintf(w, "  (%s) %s\n", r.Scenario, r.Title)
		if r.Ditto != nil && r.Ditto.Note != "" {
			fmt.Fprintf(w, "      ditto: %.2fs from process start, %s\n", r.Ditto.Seconds, r.Ditto.Note)
		}
		if len(r.Timeline) > 0 {
			printTimeline(w, r.Timeline)
		}
		if r.Baseline1 != nil && r.Baseline1.Note != "" {
			fmt.Fprintf(w, "      * baseline 1: %s\n", r.Baseline1.Note)
		}
		if r.Baseline2 != nil && r.Baseline2.Note != "" {
			fmt.Fprintf(w, "      baseline 2: %s\n", r.Baseline2.Note)
		}
		if es := r.EventStoreSink; es != nil {
			fmt.Fprintf(w, "      EventStore sink, same workload: %.0f events/s, %.1f events per append (ditto into Kafka: %.2f× that)\n", es.EventsPerSec, es.MeanBatch, r.VsEventStore)
		}
		for _, m := range []*measured{r.Single, r.Eventual} {
			if m != nil && m.Note != "" {
				fmt.Fprintf(w, "      %s\n", m.Note)
			}
		}
		if r.VsEventual > 0 {
			fmt.Fprintf(w, "      fan-out / eventual = %.2f of the rate, %.2f of the CPU per event (ditto + servers); fan-out / one destination = %.2f of the rate\n",
				r.VsEventual, ratio(r.Ditto.CPUMicrosPerEvent+r.Ditto.ServersCPUMicrosPerEvent, r.Eventual.CPUMicrosPerEvent+r.Eventual.ServersCPUMicrosPerEvent), r.VsSingle)
		}
		if r.Baseline3 != nil && r.Baseline3.Note != "" {
			fmt.Fprintf(w, "      baseline 3: %.0f events/s; %s\n", r.Baseline3.EventsPerSec, r.Baseline3.Note)
		}
		// Across the delayed link (e) the runs wait on the link, not on
		// the cores, and CPU per event says nothing of the rate.
		if two, excess, ok := r.twoLimits(); ok && r.DelayMs == 0 {
			fmt.Fprintf(w, "      the raw limit's CPU per event over its sum with baseline 3's: %.2f (ditto / baseline 2 for a run that cost no more than both limits' work); ditto's run took %+.1f µs per event beyond that work\n", two, excess)
		}
		if cpu, busy, ok := r.vsB2Factors(); ok {
			fmt.Fprintf(w, "      ditto / baseline 2 = %.2f (the raw limit's CPU per event over ditto's and the servers') × %.2f (ditto's run's busy cores over the raw limit's)\n", cpu, busy)
		}
		if u, d := r.Unfiltered, r.Ditto; u != nil && d != nil {
			fmt.Fprintf(w, "      without the filter: %.0f events/s, CPU per event ditto %.1f µs, servers %.1f µs; with it: %.0f source events/s (%.2f of that), ditto %.1f µs (%+.1f µs), servers %.1f µs (%+.1f µs), %.1f events per append\n",
				u.EventsPerSec, u.CPUMicrosPerEvent, u.ServersCPUMicrosPerEvent, d.EventsPerSec, r.VsUnfiltered,
				d.CPUMicrosPerEvent, d.CPUMicrosPerEvent-u.CPUMicrosPerEvent, d.ServersCPUMicrosPerEvent, d.ServersCPUMicrosPerEvent-u.ServersCPUMicrosPerEvent, d.MeanBatch)
		}
		if r.Lag != nil {
			fmt.Fprintf(w, "      lag: %d events offered at %.0f/s, the %d sent after a %.0f ms warm-up measured; max %.1f ms (from just before the source append to arrival on a catch-up subscription to the destination's $ce-bench)\n",
				r.Lag.Sent, r.Lag.OfferedPerSec, r.Lag.Samples, r.Lag.WarmupMs, r.Lag.MaxMs)
		}
		if len(r.Runs) > 0 {
			_, what, digits := r.keyFigure()
			runs := make([]string, len(r.Runs))
			for i, v := range r.Runs {
				runs[i] = strconv.FormatFloat(v, 'f', digits, 64)
			}
			fmt.Fprintf(w, "      %s of each run (the median run is shown): %s\n", what, strings.Join(runs, ", "))
		}
		if r.Error != "" {
			fmt.Fprintf(w, "      ERROR: %s\n", r.Error)
		}
	}
	fmt.Fprintln(w, "  baseline 1 = benfoster/ditto's algorithm (buffer 10, one append per event with expected version n-1, sequential, ack after each write);")
	fmt.Fprintln(w, "  baseline 2 = the raw destination limit (the same events appended directly, no subscription; in f, franz-go producing the same records into kfake).")
	fmt.Fprintln(w, "  baseline 3 = the source limit (the same events read through a group of their own with ditto's consumer and acked, written nowhere).")
	fmt.Fprintln(w, "  CPU µs/ev: CPU time per event of the ditto process + of this process (both test servers) while ditto ran.")
	for _, r := range rep.Results {
		if r.Scenario == "k" || r.Scenario == "l" {
			fmt.Fprintln(w, "  (k, l) baseline 1 = benfoster/ditto's Kinesis image (buffer 10, one PutRecord per event, sequential, ack after each);")
			fmt.Fprintln(w, "      baseline 2 = the records put straight to kinesalite in PutRecords calls of 500; ev/append = records per PutRecords call;")
			fmt.Fprintln(w, "      CPU µs/ev: ditto + the source server and kinesalite.")
			break
		}
	}
}

// printTimeline prints a ditto run's windows, four to a line.
func printTimeline(w io.Writer, ws []tlWindow) {
	fmt.Fprintln(w, "      timeline (ms from process start: events/s over the window, cores used by the servers' process + ditto):")
	for i := 0; i < len(ws); i += 4 {
		var parts []string
		for _, x := range ws[i:min(i+4, len(ws))] {
			parts = append(parts, fmt.Sprintf("%5.0f: %7.0f/s %.2f+%.2f", x.EndMs, x.EventsPerSec, x.ServersCores, x.DittoCores))
		}
		fmt.Fprintf(w, "        %s\n", strings.Join(parts, "   "))
	}
}
