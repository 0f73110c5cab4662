package main

import (
	"context"
	"fmt"
	"math"
	"strings"

	dittoconfig "github.com/ditto-replicator/ditto/config"
)

// fanOutNames are the destinations of the fan-out run.
var fanOutNames = []string{"one", "two"}

// fanOut is scenario o: the workload of (a) copied to two destinations,
// (1) by one ditto process writing to both (DITTO_DESTINATIONS, immediate
// redundancy: acked when both have an event), and (2) by two ditto
// processes at once, each on its own group and destination (eventual
// redundancy); beside them one process to one destination, the cost of a
// single copy. Each run writes into fresh destinations and ends when every
// destination holds every event.
func fanOut(ctx context.Context, e *env) (*result, error) {
	w := newWorkload(e.scaled(100_000), 1000)
	res := &result{Events: w.events, Streams: w.streams}
	src, err := e.seededSource(ctx, w, 0, []string{"ditto-single", "ditto-fanout", "ditto-eventual-1", "ditto-eventual-2"}...)
	if err != nil {
		return res, err
	}
	defer src.Close()
	if res.Single, err = e.copies(ctx, src, w, "one process, one destination", 1, func(dsts []*server) ([]*ditto, error) {
		d, err := startDitto(e.bin, e.dir, src.conn(), dsts[0].conn(), "ditto-single")
		return []*ditto{d}, err
	}); err != nil {
		return res, err
	}
	if res.Ditto, err = e.copies(ctx, src, w, "fan-out: one process, two destinations", 2, func(dsts []*server) ([]*ditto, error) {
		vars := []string{"DITTO_DESTINATIONS=" + fanOutNames[0] + "=eventstore," + fanOutNames[1] + "=eventstore"}
		for i, name := range fanOutNames {
			vars = append(vars, "DITTO_"+strings.ToUpper(name)+"_DESTINATION_CONNECTION_STRING="+dsts[i].conn())
		}
		d, err := startDittoWith(e.bin, e.dir, src.conn(), "ditto-fanout", vars, perDestination)
		return []*ditto{d}, err
	}); err != nil {
		return res, err
	}
	res.PeakRSSMB = res.Ditto.PeakRSSMB
	if res.Eventual, err = e.copies(ctx, src, w, "eventual: two processes, one destination each", 2, func(dsts []*server) ([]*ditto, error) {
		var ds []*ditto
		for i := range dsts {
			d, err := startDitto(e.bin, e.dir, src.conn(), dsts[i].conn(), fmt.Sprintf("ditto-eventual-%d", i+1))
			if err != nil {
				for _, d := range ds {
					d.stop()
				}
				return nil, err
			}
			ds = append(ds, d)
		}
		return ds, nil
	}); err != nil {
		return res, err
	}
	return res, nil
}

// perDestination gives each fan-out destination its own copy of a sink
// variable passed through from the environment (DITTO_BATCH_APPEND becomes
// DITTO_ONE_BATCH_APPEND and DITTO_TWO_BATCH_APPEND); ditto's own
// variables pass unchanged.
func perDestination(kv string) []string {
	k, v, _ := strings.Cut(kv, "=")
	if !strings.HasPrefix(k, "DITTO_") {
		return []string{kv}
	}
	for _, own := range dittoconfig.Variables() {
		if own.Name == k && own.Sink == "" {
			return []string{kv}
		}
	}
	var out []string
	for _, name := range fanOutNames {
		out = append(out, "DITTO_"+strings.ToUpper(name)+strings.TrimPrefix(k, "DITTO")+"="+v)
	}
	return out
}

// copies runs the ditto processes start returns into n fresh destinations
// until each holds every event, and measures the whole: the time from
// starting the processes to the last destination complete, the CPU of every
// ditto process and of this process (the servers), and the sum of the
// processes' peak RSS.
func (e *env) copies(ctx context.Context, src *server, w workload, what string, n int, start func([]*server) ([]*ditto, error)) (*measured, error) {
	var dsts []*server
	defer func() {
		for _, d := range dsts {
			d.Close()
		}
	}()
	for i := 0; i < n; i++ {
		d, err := startServer(0)
		if err != nil {
			return nil, err
		}
		dsts = append(dsts, d)
	}
	f, err := e.measure(ctx, runSpec{events: w.events, want: w.events,
		start: func() ([]*ditto, error) { return start(dsts) },
		// The least complete destination's events.
		count: func() int64 {
			least := int64(math.MaxInt64)
			for _, d := range dsts {
				least = min(least, destinationEvents(d.Store()))
			}
			return least
		},
	})
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	m := f.m
	m.PeakRSSMB = f.rss
	m.Note = fmt.Sprintf("%s: every event on %d destination(s) after %s; %.0f events/s; %.1f events per append; CPU per event: ditto %.1f µs (all processes), test servers %.1f µs; peak RSS %.1f MiB (all processes)",
		what, n, m.took(), m.EventsPerSec, m.MeanBatch, m.CPUMicrosPerEvent, m.ServersCPUMicrosPerEvent, m.PeakRSSMB)
	e.logf("%s", m.Note)
	return m, nil
}
