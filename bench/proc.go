package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
	"weak"

	"github.com/ditto-replicator/ditto/internal/esdbtest"
	"github.com/ditto-replicator/ditto/internal/faultproxy"
)

// server is an in-process test server, optionally behind a fault proxy that
// delays traffic (each way) between its clients and the server.
type server struct {
	*esdbtest.Server
	proxy *faultproxy.Proxy
}

// startServer starts an insecure, memory-only test server on a random
// 127.0.0.1 port; with delay > 0, clients reach it through a proxy that adds
// delay to every chunk in each direction.
func startServer(delay time.Duration) (*server, error) {
	srv, err := esdbtest.StartServer(esdbtest.Options{Insecure: true, Addr: "127.0.0.1:0"})
	if err != nil {
		return nil, fmt.Errorf("starting test server: %w", err)
	}
	s := &server{Server: srv}
	if delay > 0 {
		if s.proxy, err = faultproxy.Start(srv.Addr()); err != nil {
			srv.Close()
			return nil, fmt.Errorf("starting fault proxy: %w", err)
		}
		s.proxy.SetDelay(delay)
	}
	return s, nil
}

// conn is the connection string clients use: through the proxy, if any.
func (s *server) conn() string {
	if s.proxy != nil {
		return "esdb://" + s.proxy.Addr() + "?tls=false"
	}
	return s.ConnectionString()
}

func (s *server) Close() {
	if s.proxy != nil {
		s.proxy.Close()
	}
	s.Server.Close()
	closed.add(s.Store())
}

// closed holds, weakly, the stores of the servers closed so far: collect
// runs until they are freed.
var closed closedStores

type closedStores struct {
	mu     sync.Mutex
	stores []weak.Pointer[esdbtest.Store]
}

func (c *closedStores) add(st *esdbtest.Store) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.stores = append(c.stores, weak.Make(st))
}

// live forgets the stores already freed and returns how many are not.
func (c *closedStores) live() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.stores = slices.DeleteFunc(c.stores, func(p weak.Pointer[esdbtest.Store]) bool { return p.Value() == nil })
	return len(c.stores)
}

// buildDitto builds cmd/ditto into dir as the Dockerfile builds the shipped
// binary (static, no symbol tables), and returns the binary's path.
func buildDitto(ctx context.Context, dir string) (string, error) {
	out, err := exec.CommandContext(ctx, "go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		return "", errors.New("run the bench inside the ditto module (go run ./bench), or pass --ditto-bin")
	}
	bin := filepath.Join(dir, "ditto")
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-ldflags=-s -w", "-o", bin, "./cmd/ditto")
	cmd.Dir = filepath.Dir(gomod)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build ./cmd/ditto: %v\n%s", err, out)
	}
	return bin, nil
}

// ditto is a running ditto child process.
type ditto struct {
	cmd     *exec.Cmd
	log     string // path of its stderr
	metrics string // host:port of /metrics and /health
	done    chan struct{}
	err     error // exit status, after done

	mu      sync.Mutex
	peakRSS int64 // highest VmHWM seen, bytes
}

// benchVars are the variables the bench sets; any other DITTO_* variable of
// the bench's environment (DITTO_BUFFER_SIZE, DITTO_WRITERS, …) is passed
// through, to try settings without editing defaults.
var benchVars = []string{
	"DITTO_SOURCE_CONNECTION_STRING", "DITTO_DESTINATION_CONNECTION_STRING", "DITTO_SUBSCRIPTIONS",
	"DITTO_METRICS_ADDRESS", "DITTO_LOG_LEVEL", "DITTO_LOG_FORMAT", "DITTO_SHUTDOWN_TIMEOUT",
	"DITTO_CREATE_SUBSCRIPTIONS", "DITTO_SINK", "DITTO_READ_ONLY", "DITTO_KAFKA_BROKERS", "DITTO_KAFKA_TOPIC", "DITTO_KINESIS_STREAM_NAME", "DITTO_DESTINATIONS",
}

// tuningVars lists the DITTO_* variables passed through from the
// environment, for the report.
func tuningVars() []string {
	var out []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(k, "DITTO_") && !contains(benchVars, k) {
			out = append(out, kv)
		}
	}
	return out
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// leverVars are the settings the bench reports the defaults of.
var leverVars = []string{"DITTO_BUFFER_SIZE", "DITTO_WRITERS", "DITTO_BATCH_MAX_EVENTS", "DITTO_CONSUMERS_PER_SUBSCRIPTION"}

// dittoDefaults asks the binary ("ditto config") for the defaults of
// leverVars; it returns what it could parse.
func dittoDefaults(ctx context.Context, bin string) map[string]string {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	out, _ := exec.CommandContext(ctx, bin, "config").Output()
	defs := map[string]string{}
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) >= 2 && contains(leverVars, f[0]) {
			defs[f[0]] = f[1]
		}
	}
	return defs
}

// freePort returns a free 127.0.0.1 port (the usual small race: another
// process could take it before ditto listens).
func freePort() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// startDitto runs bin replicating $ce-bench from source to destination.
// extra (KEY=VALUE) comes last, over the bench's own environment. The
// process gets its own process group and dies with the bench (SIGKILL on
// parent death); stop ends it.
func startDitto(bin, logDir, source, destination, group string, extra ...string) (*ditto, error) {
	var sinkVars []string
	if destination != "" {
		sinkVars = []string{"DITTO_DESTINATION_CONNECTION_STRING=" + destination}
	}
	return startDittoWith(bin, logDir, source, group, sinkVars, nil, extra...)
}

// startDittoWith is startDitto with where the events go given as
// variables (KEY=value), and pass, if set, rewriting each variable passed
// through from the environment into zero or more.
func startDittoWith(bin, logDir, source, group string, sinkVars []string, pass func(kv string) []string, extra ...string) (*ditto, error) {
	addr, err := freePort()
	if err != nil {
		return nil, err
	}
	logf, err := os.CreateTemp(logDir, "ditto-*.log")
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	env := []string{
		"DITTO_SOURCE_CONNECTION_STRING=" + source,
		"DITTO_SUBSCRIPTIONS=$ce-" + category + ":" + group,
		"DITTO_METRICS_ADDRESS=" + addr,
		"DITTO_LOG_LEVEL=warn",
		"DITTO_LOG_FORMAT=json",
		"DITTO_SHUTDOWN_TIMEOUT=5s",
	}
	env = append(env, sinkVars...)
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		switch {
		case contains(benchVars, k):
		case pass != nil:
			env = append(env, pass(kv)...)
		default:
			env = append(env, kv)
		}
	}
	cmd := exec.Command(bin)
	// extra last, so that it wins over any value passed through: the last of
	// a repeated variable counts.
	cmd.Env = append(env, extra...)
	cmd.Stdout = logf
	cmd.Stderr = logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting ditto: %w", err)
	}
	d := &ditto{cmd: cmd, log: logf.Name(), metrics: addr, done: make(chan struct{})}
	go func() {
		d.err = cmd.Wait()
		close(d.done)
	}()
	return d, nil
}

// alive returns an error if the process has exited.
func (d *ditto) alive() error {
	select {
	case <-d.done:
		return fmt.Errorf("ditto exited (%v); log:\n%s", d.err, tail(d.log, 20))
	default:
		return nil
	}
}

// sampleRSS records the process's peak resident set (VmHWM) so far.
func (d *ditto) sampleRSS() {
	if d.alive() != nil {
		return
	}
	if hwm, err := vmHWM(d.cmd.Process.Pid); err == nil {
		d.mu.Lock()
		d.peakRSS = max(d.peakRSS, hwm)
		d.mu.Unlock()
	}
}

// PeakRSS is the highest VmHWM sampled, in bytes.
func (d *ditto) PeakRSS() int64 {
	d.sampleRSS()
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.peakRSS
}

// waitReady polls /health/ready until it answers 200, for at most timeout.
func (d *ditto) waitReady(ctx context.Context, timeout time.Duration) error {
	client := &http.Client{Timeout: time.Second}
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if err := d.alive(); err != nil {
			return err
		}
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+d.metrics+"/health/ready", nil)
		if resp, err := client.Do(req); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
	return fmt.Errorf("ditto not ready within %s; log:\n%s", timeout, tail(d.log, 20))
}

// meanBatch reads ditto_batch_size from /metrics: the mean number of events
// per append so far, or 0 if unknown.
func (d *ditto) meanBatch(ctx context.Context) float64 {
	return promMean(d.scrape(ctx), "ditto_batch_size")
}

// scrape returns ditto's /metrics text, or "".
func (d *ditto) scrape(ctx context.Context) string {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+d.metrics+"/metrics", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return ""
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	return string(b)
}

// promMean returns sum/count of a Prometheus histogram or summary in the
// text format, or 0.
func promMean(text, name string) float64 {
	count := promSum(text, name+"_count", "")
	if count == 0 {
		return 0
	}
	return promSum(text, name+"_sum", "") / count
}

// promSum adds up the samples of metric name in Prometheus text whose
// labels contain labels.
func promSum(text, name, labels string) float64 {
	re := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(name) + `(\{[^}]*\})? (\S+)$`)
	sum := 0.0
	for _, m := range re.FindAllStringSubmatch(text, -1) {
		if !strings.Contains(m[1], labels) {
			continue
		}
		if v, err := strconv.ParseFloat(m[2], 64); err == nil {
			sum += v
		}
	}
	return sum
}

// stop sends SIGTERM and waits up to 10s, then kills the process group.
// It is safe to call more than once.
func (d *ditto) stop() {
	select {
	case <-d.done:
		return
	default:
	}
	d.sampleRSS()
	_ = syscall.Kill(-d.cmd.Process.Pid, syscall.SIGTERM)
	select {
	case <-d.done:
	case <-time.After(10 * time.Second):
		_ = syscall.Kill(-d.cmd.Process.Pid, syscall.SIGKILL)
		<-d.done
	}
}

// usage is what /proc/PID/stat says a process has used so far: CPU time
// (user + system) and minor page faults.
type usage struct {
	cpu    time.Duration
	faults int64
}

// usage reads the process's usage, zero if unknown.
func (d *ditto) usage() usage { return procUsage(d.cmd.Process.Pid) }

// procUsage reads a process's usage, zero if unknown.
func procUsage(pid int) usage {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return usage{}
	}
	u, _ := parseStat(b)
	return u
}

// clockTick is USER_HZ, the unit of /proc/PID/stat times: 100 on every
// Linux architecture Go supports.
const clockTick = 10 * time.Millisecond

// parseStat returns minflt, utime and stime from the contents of
// /proc/PID/stat. The command name (field 2) may contain spaces, so fields
// are counted from the last ')'.
func parseStat(stat []byte) (usage, error) {
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 {
		return usage{}, errors.New("no ')' in stat")
	}
	f := strings.Fields(string(stat[i+1:]))
	// f[0] is field 3 (state); minflt is field 10, utime and stime 14 and 15.
	if len(f) < 13 {
		return usage{}, fmt.Errorf("stat has %d fields after the name", len(f))
	}
	var n [3]int64
	for k, s := range []string{f[7], f[11], f[12]} {
		v, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return usage{}, fmt.Errorf("stat: %w", err)
		}
		n[k] = v
	}
	return usage{cpu: time.Duration(n[1]+n[2]) * clockTick, faults: n[0]}, nil
}

// selfCPU is this process's CPU time (user + system) so far.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// vmHWM reads a process's peak resident set size from /proc/PID/status.
func vmHWM(pid int) (int64, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0, err
	}
	return parseStatusKB(b, "VmHWM")
}

// parseStatusKB returns the value of a "Key:   1234 kB" line in bytes.
func parseStatusKB(status []byte, key string) (int64, error) {
	sc := bufio.NewScanner(bytes.NewReader(status))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok || k != key {
			continue
		}
		f := strings.Fields(v)
		if len(f) != 2 || f[1] != "kB" {
			return 0, fmt.Errorf("unexpected %s line %q", key, sc.Text())
		}
		n, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("unexpected %s line %q: %w", key, sc.Text(), err)
		}
		return n * 1024, nil
	}
	return 0, fmt.Errorf("no %s line", key)
}

// tail returns the last n lines of a file, for error messages.
func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return "(no log: " + err.Error() + ")"
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
