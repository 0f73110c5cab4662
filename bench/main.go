// Command bench measures ditto's throughput, replication lag and memory on
// one machine, against two baselines measured in the same run: the
// reference algorithm of benfoster/ditto (one append per event, buffer 10,
// sequential, ack after each write) and the destination's own limit (the
// same events appended directly in batches of 100 by a few writers).
//
//	go run ./bench [--scenario a,b,c,d,e,f,k,l,o,p] [--scale 0.1] [--repeat 3] [--json]
//	               [--ditto-bin PATH] [--cpuprofile FILE] [--timeline]
//
// Scenarios: (a) 100k events over 1,000 streams; (b) 20k events in one hot
// stream; (c) a steady 2,000 events/s, measuring replication lag; (d) a
// 1M-event backlog, measuring ditto's peak RSS (VmHWM); (e) scenario a with
// 5 ms added each way between every client and each server (faultproxy);
// (f), run only when asked for, scenario a into Kafka (kfake in this
// process) against franz-go producing the same records directly and against
// the EventStore sink (see kafka.go).
// (k), not run by default, 100k events over 1,000 streams with
// DITTO_SINK=kinesis into kinesalite, against one PutRecord per event
// (benfoster/ditto's Kinesis image) and against kinesalite's own limit;
// (l), not run by default, k with 5 ms added each way between every writer
// and kinesalite;
// (o), not run by default, copies (a)'s events to two destinations: one
// ditto process fanning out (DITTO_DESTINATIONS) against two processes with
// a destination and a group each;
// (p), not run by default, scenario a's events, of two types in turn,
// copied whole and with a filter that keeps one type (the cost of the
// policy stage).
// --scale multiplies the event counts (0.1 for a quick run); baseline 1 runs
// on a sample of at most 5,000 events or 15 s and is reported as a rate.
//
// Source and destination are in-process esdbtest servers on 127.0.0.1;
// ditto runs as a child process built from ./cmd/ditto (so its memory is
// its own), configured through DITTO_* variables. DITTO_* tuning variables
// in the bench's environment (DITTO_BUFFER_SIZE, DITTO_WRITERS, …) are
// passed on to it. Timing targets are reported, never enforced as tests.
package main

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/ditto-replicator/ditto/internal/pbwire"
)

// The baselines' clients use ditto's codec too, so the raw limit is the
// destination's and not the protobuf runtime's.
func init() { pbwire.Register() }

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// config is the parsed command line.
type config struct {
	scenarios []string
	scale     float64
	json      bool
	dittoBin  string
	cpuprof   string
	repeat    int
	timeline  bool
}

func parseFlags(args []string, stderr io.Writer) (*config, error) {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	scen := fs.String("scenario", "a,b,c,d,e", "comma-separated scenarios: a (100k events, 1,000 streams), b (20k events, one stream), c (2,000 events/s, lag), d (1M-event backlog, memory), e (a through a 5 ms each-way delay); not run by default: f (a into Kafka), k (a into Kinesis: kinesalite), l (k through a 5 ms each-way delay), o (a's events to two destinations: one process fanning out against two processes), p (a with a filter keeping half the event types, against a without)")
	scale := fs.Float64("scale", 1, "multiplies event counts and the duration of c (0.1 for a quick run); between 0.001 and 10")
	asJSON := fs.Bool("json", false, "print the results as JSON instead of a table")
	bin := fs.String("ditto-bin", "", "a ditto binary to run instead of building ./cmd/ditto")
	cpuprof := fs.String("cpuprofile", "", "write a CPU profile of the bench process (the test servers) while ditto runs to this file; with several scenarios, the last one's")
	timeline := fs.Bool("timeline", false, "also print each ditto run of a, b, d and e in 25 ms windows: events/s, and the cores used by this process (the test servers) and by ditto")
	repeat := fs.Int("repeat", 1, "run each scenario this many times and report the run with the median figure (the ratio to the raw limit for a, b and e; lag p99 for c; events/s for d), to damp the noise of a shared machine; 1 to 9")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	c := &config{scale: *scale, json: *asJSON, dittoBin: *bin, cpuprof: *cpuprof, repeat: *repeat, timeline: *timeline}
	if c.repeat < 1 || c.repeat > 9 {
		return nil, fmt.Errorf("--repeat %d is out of range: expected 1 to 9", c.repeat)
	}
	if c.scale < 0.001 || c.scale > 10 {
		return nil, fmt.Errorf("--scale %g is out of range: expected 0.001 to 10", c.scale)
	}
	for _, s := range strings.Split(*scen, ",") {
		s = strings.TrimSpace(s)
		if _, ok := scenarios[s]; !ok {
			return nil, fmt.Errorf("--scenario: unknown scenario %q: expected a, b, c, d, e, f, k, l, o or p", s)
		}
		if !contains(c.scenarios, s) {
			c.scenarios = append(c.scenarios, s)
		}
	}
	return c, nil
}

// median returns the run with the median key figure (keyFigure), with
// every run's figure in Runs. A failed run is returned at once, since its
// error matters more than any figure.
func median(runs []*result) *result {
	key := func(r *result) float64 {
		v, _, _ := r.keyFigure()
		return v
	}
	var keys []float64
	for _, r := range runs {
		if r.Error != "" {
			return r
		}
		keys = append(keys, key(r))
	}
	sorted := slices.Clone(runs)
	slices.SortFunc(sorted, func(a, b *result) int { return cmp.Compare(key(a), key(b)) })
	m := sorted[(len(sorted)-1)/2]
	if len(runs) > 1 {
		m.Runs = keys
	}
	return m
}

// bufferSize is the subscription buffer ditto runs with: DITTO_BUFFER_SIZE
// from the environment, else the built binary's default.
func bufferSize(defaults map[string]string) int {
	for _, v := range []string{os.Getenv("DITTO_BUFFER_SIZE"), defaults["DITTO_BUFFER_SIZE"]} {
		if n, err := strconv.Atoi(v); err == nil && n > 0 {
			return n
		}
	}
	return 10000
}

func run(args []string, stdout, stderr io.Writer) int {
	cfg, err := parseFlags(args, stderr)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		fmt.Fprintln(stderr, "bench:", err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	// Output piped into head must not kill the bench before it cleans up.
	signal.Ignore(syscall.SIGPIPE)

	dir, err := os.MkdirTemp("", "ditto-bench-")
	if err != nil {
		fmt.Fprintln(stderr, "bench:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	bin := cfg.dittoBin
	if bin == "" {
		fmt.Fprintln(stderr, "building ./cmd/ditto …")
		if bin, err = buildDitto(ctx, dir); err != nil {
			fmt.Fprintln(stderr, "bench:", err)
			return 1
		}
	}

	rep := &report{
		Cores: runtime.NumCPU(), GOMAXPROCS: runtime.GOMAXPROCS(0), GoVersion: runtime.Version(),
		Scale: cfg.scale, Repeat: cfg.repeat, Started: time.Now().UTC(), DittoEnv: tuningVars(), DittoDefaults: dittoDefaults(ctx, bin),
	}
	env := &env{bin: bin, dir: dir, scale: cfg.scale, log: stderr, cpuprof: cfg.cpuprof, timeline: cfg.timeline,
		buffer: bufferSize(rep.DittoDefaults)}
	failed := false
	for _, name := range cfg.scenarios {
		if ctx.Err() != nil {
			break
		}
		sc := scenarios[name]
		var runs []*result
		for i := 0; i < cfg.repeat && ctx.Err() == nil; i++ {
			fmt.Fprintf(stderr, "scenario %s (run %d of %d): %s …\n", name, i+1, cfg.repeat, sc.title)
			res, err := sc.run(ctx, env)
			if res == nil {
				res = &result{}
			}
			res.Scenario, res.Title = name, sc.title
			if err != nil {
				res.Error = err.Error()
				fmt.Fprintf(stderr, "scenario %s failed: %v\n", name, err)
			}
			res.evaluate()
			runs = append(runs, res)
			// Runs do not share memory or servers; collect before the next.
			runtime.GC()
			debug.FreeOSMemory()
		}
		if len(runs) == 0 {
			break
		}
		res := median(runs)
		if res.Error != "" {
			failed = true
		}
		rep.Results = append(rep.Results, res)
	}
	rep.Finished = time.Now().UTC()
	if cfg.json {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		enc.SetEscapeHTML(false)
		_ = enc.Encode(rep)
	} else {
		rep.print(stdout)
	}
	switch {
	case ctx.Err() != nil:
		fmt.Fprintln(stderr, "bench: interrupted")
		return 130
	case failed:
		return 1
	}
	return 0
}
