package main

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
	"time"
)

// timeline records a ditto run as it goes: at every poll of the
// destination, the events visible there and the CPU time used so far by
// this process (the test servers) and by ditto. An average hides where a
// run loses time; the windows show the start, the steady state and the
// stretches where a collection of the servers' heap slows both sides.
type timeline struct {
	pid     int // ditto's
	start   time.Time
	samples []tlSample
}

type tlSample struct {
	at      time.Duration // since start
	events  int64
	servers time.Duration // this process's CPU time
	ditto   time.Duration // ditto's CPU time
}

// tlWindow is a stretch of a run: when it ends, the events visible then,
// and over the stretch the rate and the cores each side used.
type tlWindow struct {
	EndMs        float64 `json:"end_ms"`
	Events       int64   `json:"events"`
	EventsPerSec float64 `json:"events_per_sec"`
	ServersCores float64 `json:"servers_cores"`
	DittoCores   float64 `json:"ditto_cores"`
}

func newTimeline(pid int, start time.Time) *timeline {
	return &timeline{pid: pid, start: start}
}

// record is waitCount's poll hook. If ditto's threads cannot be read
// (it has exited), its CPU time stays as last read.
func (tl *timeline) record(now time.Time, events int64) {
	cpu, err := threadsCPU(tl.pid)
	if err != nil && len(tl.samples) > 0 {
		cpu = tl.samples[len(tl.samples)-1].ditto
	}
	tl.samples = append(tl.samples, tlSample{at: now.Sub(tl.start), events: events, servers: selfCPU(), ditto: cpu})
}

// windows groups the samples into stretches of at least width, the last
// one ending at the last sample.
func (tl *timeline) windows(width time.Duration) []tlWindow {
	var out []tlWindow
	if len(tl.samples) == 0 {
		return nil
	}
	prev := tl.samples[0]
	for i, s := range tl.samples[1:] {
		d := s.at - prev.at
		if d < width && i < len(tl.samples)-2 {
			continue
		}
		if d <= 0 {
			continue
		}
		w := tlWindow{EndMs: ms(s.at), Events: s.events,
			EventsPerSec: float64(s.events-prev.events) / d.Seconds(),
			ServersCores: float64(s.servers-prev.servers) / float64(d),
			DittoCores:   float64(s.ditto-prev.ditto) / float64(d)}
		out = append(out, w)
		prev = s
	}
	return out
}

// threadsCPU is the time every thread of pid has spent on a CPU, from
// /proc/PID/task/*/schedstat, which counts nanoseconds where /proc/PID/stat
// counts 10 ms ticks, too coarse for windows of a few tens of
// milliseconds. Threads that have exited are not counted; Go keeps its
// threads.
func threadsCPU(pid int) (time.Duration, error) {
	dir := "/proc/" + strconv.Itoa(pid) + "/task"
	tasks, err := os.ReadDir(dir)
	if err != nil {
		return 0, err
	}
	var total time.Duration
	for _, t := range tasks {
		b, err := os.ReadFile(dir + "/" + t.Name() + "/schedstat")
		if err != nil {
			continue // the thread has just exited
		}
		d, err := parseSchedstat(b)
		if err != nil {
			return 0, err
		}
		total += d
	}
	return total, nil
}

// parseSchedstat returns the first field of a schedstat file: the time
// spent on a CPU, in nanoseconds.
func parseSchedstat(b []byte) (time.Duration, error) {
	f := bytes.Fields(b)
	if len(f) != 3 {
		return 0, fmt.Errorf("schedstat %q: expected 3 fields", b)
	}
	n, err := strconv.ParseInt(string(f[0]), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("schedstat: %w", err)
	}
	return time.Duration(n), nil
}
