package main

import (
	"context"
	"fmt"
	"math/rand"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/EventStore/EventStore-Client-Go/v4/esdb"

	"github.com/ditto-replicator/ditto/internal/faultproxy"
	"github.com/ditto-replicator/ditto/internal/testutil"
	"github.com/ditto-replicator/ditto/verify"
)

// chaosProfile sizes a chaos run.
type chaosProfile struct {
	streams, perStream int // events written: streams × perStream
	dittoKills         int // SIGKILLs of ditto, at random moments
	dstKills           int // SIGKILL + restart of the destination server
	proxyFaults        int // faults per kind (drop, delay, black hole) and proxy
	maxPause           time.Duration
	settle             time.Duration // how long the end state may take to converge
}

var chaosProfiles = map[string]chaosProfile{
	// Runs in every `go test ./...`: about a minute on a 2-core machine.
	"short": {streams: 100, perStream: 100, dittoKills: 10, dstKills: 3, proxyFaults: 1, maxPause: 1500 * time.Millisecond, settle: 3 * time.Minute},
	// DITTO_CHAOS=long go test -run TestChaos -timeout 60m ./cmd/ditto
	"long": {streams: 1000, perStream: 100, dittoKills: 30, dstKills: 6, proxyFaults: 3, maxPause: 4 * time.Second, settle: 20 * time.Minute},
}

// fault is one planned disruption.
type fault struct {
	kind   string // kill-ditto, restart-destination, drop, delay, blackhole
	proxy  string // source or destination, for proxy faults
	pause  time.Duration
	length time.Duration // how long a delay, black hole or destination outage lasts
	delay  time.Duration // latency added by a delay fault
}

// TestChaos replicates while the source keeps receiving writes and, at
// random moments, ditto (a real process) is killed with SIGKILL and
// restarted, the destination server (a real process with --db) is killed and
// restarted on the same port and directory, and TCP proxies between ditto and
// each server drop connections, add latency and black-hole traffic. At the
// end the verifier must find the destination identical to the source: no
// event missing, duplicated, reordered or altered.
//
// Short form by default; DITTO_CHAOS=long for 100k events over 1,000
// streams; DITTO_CHAOS_SEED=N replays a fault plan.
func TestChaos(t *testing.T) {
	mode := os.Getenv("DITTO_CHAOS")
	if mode == "" {
		mode = "short"
	}
	prof, ok := chaosProfiles[mode]
	if !ok {
		t.Fatalf("DITTO_CHAOS=%q: want short or long", mode)
	}
	if testing.Short() && mode == "short" {
		t.Skip("chaos suite skipped in -short mode")
	}
	seed := time.Now().UnixNano()
	if s := os.Getenv("DITTO_CHAOS_SEED"); s != "" {
		var err error
		if seed, err = strconv.ParseInt(s, 10, 64); err != nil {
			t.Fatalf("DITTO_CHAOS_SEED=%q: %v", s, err)
		}
	}
	t.Logf("chaos %s: seed %d (replay the fault plan with DITTO_CHAOS_SEED=%d)", mode, seed, seed)
	rng := rand.New(rand.NewSource(seed))
	began := time.Now()

	src := startEmulator(t)
	dst := startEmulator(t)
	srcProxy, err := faultproxy.Start(src.addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srcProxy.Close() })
	dstProxy, err := faultproxy.Start(dst.addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dstProxy.Close() })
	proxies := map[string]*faultproxy.Proxy{"source": srcProxy, "destination": dstProxy}

	srcC := mustClient(t, src.connectionString())
	names := make([]string, prof.streams)
	for i := range names {
		names[i] = fmt.Sprintf("chaos-%d", i)
	}

	// The plan: every fault once per its count, shuffled, with random pauses.
	var plan []fault
	for i := 0; i < prof.dittoKills; i++ {
		plan = append(plan, fault{kind: "kill-ditto"})
	}
	for i := 0; i < prof.dstKills; i++ {
		plan = append(plan, fault{kind: "restart-destination"})
	}
	for i := 0; i < prof.proxyFaults; i++ {
		for _, side := range []string{"source", "destination"} {
			plan = append(plan, fault{kind: "drop", proxy: side},
				fault{kind: "delay", proxy: side},
				fault{kind: "blackhole", proxy: side})
		}
	}
	rng.Shuffle(len(plan), func(i, j int) { plan[i], plan[j] = plan[j], plan[i] })
	var planned time.Duration
	for i := range plan {
		f := &plan[i]
		f.pause = time.Duration(rng.Int63n(int64(prof.maxPause)))
		switch f.kind {
		case "delay":
			f.length = time.Second + time.Duration(rng.Int63n(int64(2*time.Second)))
			f.delay = 20*time.Millisecond + time.Duration(rng.Int63n(int64(180*time.Millisecond)))
		case "blackhole":
			f.length = time.Second + time.Duration(rng.Int63n(int64(3*time.Second)))
		case "restart-destination":
			// Down for up to 5 s: longer than the client's discovery
			// window (10 attempts, 100 ms apart), after which a v4
			// client closes itself for good.
			f.length = time.Duration(rng.Int63n(int64(5 * time.Second)))
		}
		planned += f.pause + f.length
	}

	// The writer spreads its writes over the plan's duration, so faults hit
	// a source that keeps receiving writes.
	writerSeed := rng.Int63()
	var written atomic.Int64
	writerDone := make(chan error, 1)
	go func() {
		writerDone <- chaosWriter(srcC, names, prof.perStream, planned, writerSeed, &written)
	}()

	dittoEnv := map[string]string{
		"DITTO_SOURCE_CONNECTION_STRING":      "esdb://" + srcProxy.Addr() + "?tls=false",
		"DITTO_DESTINATION_CONNECTION_STRING": "esdb://" + dstProxy.Addr() + "?tls=false",
		"DITTO_SUBSCRIPTIONS":                 "$ce-chaos:ditto",
		"DITTO_CREATE_SUBSCRIPTIONS":          "true",
		"DITTO_METRICS_ADDRESS":               "",
		"DITTO_BUFFER_SIZE":                   "200",
		"DITTO_BATCH_MAX_EVENTS":              strconv.Itoa(5 + rng.Intn(50)),
		"DITTO_RETRY_BACKOFF_MAX":             "500ms",
	}
	var outputs []*process
	p := startProcess(t, dittoEnv)
	outputs = append(outputs, p)
	counts := map[string]int{}
	for i, f := range plan {
		time.Sleep(f.pause) // a random, bounded pause between faults
		switch f.kind {
		case "kill-ditto":
			select {
			case <-p.exited:
				t.Fatalf("ditto exited by itself before fault %d:\n%s", i, p.output)
			default:
			}
			p.kill()
			p = startProcess(t, dittoEnv)
			outputs = append(outputs, p)
		case "restart-destination":
			dst.proc.kill()
			time.Sleep(f.length) // the outage
			dst.start(t)
		case "drop":
			proxies[f.proxy].DropAll()
		case "delay":
			proxies[f.proxy].SetDelay(f.delay)
			time.Sleep(f.length)
			proxies[f.proxy].SetDelay(0)
		case "blackhole":
			proxies[f.proxy].SetBlackhole(true)
			time.Sleep(f.length)
			proxies[f.proxy].SetBlackhole(false)
		}
		name := f.kind
		if f.proxy != "" {
			name = f.proxy + " " + f.kind
		}
		counts[name]++
		t.Logf("%6.1fs fault %2d: %s (%d events written so far)", time.Since(began).Seconds(), i+1, name, written.Load())
	}
	faultsDone := time.Since(began)
	select {
	case err := <-writerDone:
		if err != nil {
			t.Fatalf("source writer: %v", err)
		}
	case <-time.After(prof.settle):
		t.Fatalf("source writer did not finish within %s", prof.settle)
	}
	writesDone := time.Since(began)

	// Fresh clients: the destination has been restarted under the old ones.
	e := &env{srcC: srcC, dstC: mustClient(t, dst.connectionString())}
	var rep *verify.Report
	defer func() {
		if t.Failed() && rep != nil {
			var text strings.Builder
			rep.WriteText(&text)
			t.Logf("last verify report:\n%s\nlast ditto output:\n%s", tail(text.String(), 4000), tail(p.output.String(), 4000))
		}
	}()
	testutil.Eventually(t, prof.settle, "destination identical to source", func() bool {
		select {
		case <-p.exited:
			t.Fatalf("ditto exited by itself after the faults:\n%s", tail(p.output.String(), 4000))
		default:
		}
		rep = e.compare(t, verify.Options{Streams: names, PageSize: 1000})
		return rep.OK() && rep.DestinationEvents == rep.SourceEvents
	})
	var text strings.Builder
	rep.WriteText(&text)
	total := prof.streams * prof.perStream
	t.Logf("chaos %s: seed %d, %d events over %d streams, faults %v; faults done at %.1fs, writes at %.1fs, identical at %.1fs",
		mode, seed, total, prof.streams, counts, faultsDone.Seconds(), writesDone.Seconds(), time.Since(began).Seconds())
	t.Logf("verify: source %d, destination %d, missing %d, extra %d, out-of-order %d, altered %d",
		rep.SourceEvents, rep.DestinationEvents, rep.Missing, rep.Extra, rep.OutOfOrder, rep.Altered)
	if !rep.OK() || rep.SourceEvents != total || rep.DestinationEvents != total {
		head := text.String()
		if len(head) > 4000 {
			head = head[:4000]
		}
		t.Fatalf("destination not identical to source after %s:\n%s\nlast ditto output:\n%s", prof.settle, head, tail(p.output.String(), 4000))
	}
	if parked := len(readIfAny(t, srcC, "$persistentsubscription-$ce-chaos::ditto-parked")); parked != 0 {
		t.Fatalf("%d events were parked during the chaos run", parked)
	}
	// The last ditto stops cleanly after all that (no hang, no panic).
	stopGracefully(t, p)
	renewed, abandoned, retried := 0, 0, 0
	for _, o := range outputs {
		s := o.output.String()
		if strings.Contains(s, "panic:") {
			t.Fatalf("a ditto process panicked:\n%s", tail(s, 4000))
		}
		renewed += strings.Count(s, "closed itself")
		abandoned += strings.Count(s, "call abandoned")
		retried += strings.Count(s, "retrying write")
	}
	t.Logf("ditto processes: %d; log lines: %d write retries, %d client renewals, %d abandoned calls",
		len(outputs), retried, renewed, abandoned)
}

// chaosWriter appends perStream events to every stream in random chunks, in
// rounds spread over about spread, straight to the source (not through the
// proxy: the faults are between ditto and the servers).
func chaosWriter(c *esdb.Client, names []string, perStream int, spread time.Duration, seed int64, written *atomic.Int64) error {
	rng := rand.New(rand.NewSource(seed))
	next := make([]int, len(names))
	const rounds = 20
	pace := spread / rounds
	start := time.Now()
	var mu sync.Mutex
	for round := 0; round < rounds; round++ {
		order := rng.Perm(len(names))
		// The last round writes whatever is left.
		chunks := make([]int, len(names))
		for _, i := range order {
			left := perStream - next[i]
			n := min(left, 1+rng.Intn(2*perStream/rounds))
			if round == rounds-1 {
				n = left
			}
			chunks[i] = n
		}
		var wg sync.WaitGroup
		errs := make(chan error, 4)
		work := make(chan int)
		for w := 0; w < 4; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range work {
					if err := appendWithRetry(c, names[i], next[i], chunks[i]); err != nil {
						errs <- err
						return
					}
					mu.Lock()
					next[i] += chunks[i]
					mu.Unlock()
					written.Add(int64(chunks[i]))
				}
			}()
		}
		for _, i := range order {
			if chunks[i] > 0 {
				work <- i
			}
		}
		close(work)
		wg.Wait()
		select {
		case err := <-errs:
			return err
		default:
		}
		if d := time.Until(start.Add(time.Duration(round+1) * pace)); d > 0 {
			time.Sleep(d) // pacing the writes over the fault plan
		}
	}
	return nil
}

// appendWithRetry appends n test events at from; a write whose outcome is
// unknown (a transport error) is retried with the same ids, which the
// server recognises if it was already written.
func appendWithRetry(c *esdb.Client, stream string, from, n int) error {
	if n == 0 {
		return nil
	}
	evs := testEvents(stream, from, n)
	exp := testutil.ExpectedAt(from)
	var err error
	for attempt := 0; attempt < 10; attempt++ {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		_, err = c.AppendToStream(ctx, stream, esdb.AppendToStreamOptions{ExpectedRevision: exp}, evs...)
		cancel()
		if err == nil {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("appending %d events to %s at %d: %w", n, stream, from, err)
}

func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "…" + s[len(s)-n:]
}
