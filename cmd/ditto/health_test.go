package main

import (
	"bytes"
	"context"
	"os/exec"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/EventStore/EventStore-Client-Go/v4/esdb"

	"github.com/ditto-replicator/ditto/internal/buildinfo"
	"github.com/ditto-replicator/ditto/internal/testutil"
)

// runHealth runs `ditto health` as the image's HEALTHCHECK does: a process
// with only DITTO_METRICS_ADDRESS set.
func runHealth(t *testing.T, addr string) (int, string) {
	t.Helper()
	cmd := exec.Command(testutil.Binary(t, "github.com/ditto-replicator/ditto/cmd/ditto"), "health")
	cmd.Env = []string{"DITTO_METRICS_ADDRESS=" + addr}
	out, err := cmd.CombinedOutput()
	if err != nil {
		if _, ok := err.(*exec.ExitError); !ok {
			t.Fatal(err)
		}
	}
	return cmd.ProcessState.ExitCode(), string(out)
}

// TestHealthCommandFollowsReadiness: `ditto health` exits 0 while the ditto
// it asks is ready, 1 with the reason once its destination is gone, and 1
// once that ditto is stopped.
func TestHealthCommandFollowsReadiness(t *testing.T) {
	e := newEnv(t)
	e.createGroup(t, "$ce-customer", "ditto", esdb.ConsumerStrategyPinned)
	e.seed(t, "customer", 2, 3)
	addr := testutil.FreeAddr(t)
	p := startProcess(t, baseEnv(e.src.ConnectionString(), e.dst.ConnectionString(), map[string]string{"DITTO_METRICS_ADDRESS": addr}))
	var code int
	var out string
	testutil.Eventually(t, 60*time.Second, "ditto health exits 0", func() bool {
		code, out = runHealth(t, addr)
		return code == 0
	})
	if !strings.Contains(out, "/health/ready: ready") {
		t.Fatalf("ditto health printed %q", out)
	}
	e.dst.Close()
	testutil.Eventually(t, 60*time.Second, "ditto health exits 1 without a destination", func() bool {
		code, out = runHealth(t, addr)
		return code == 1 && strings.Contains(out, "not ready") && strings.Contains(out, "destination not reachable")
	})
	p.kill()
	code, out = runHealth(t, addr)
	if code != 1 || !strings.Contains(out, "no answer from http://"+addr+"/health/ready") {
		t.Fatalf("against a stopped ditto: exit %d, %q", code, out)
	}
}

func TestHealthURL(t *testing.T) {
	for _, c := range []struct {
		addr string
		set  bool
		want string // "" when an error is expected
		err  string
	}{
		{set: false, want: "http://127.0.0.1:5000/health/ready"},
		{addr: ":5000", set: true, want: "http://127.0.0.1:5000/health/ready"},
		{addr: "0.0.0.0:9100", set: true, want: "http://127.0.0.1:9100/health/ready"},
		{addr: "[::]:9100", set: true, want: "http://127.0.0.1:9100/health/ready"},
		{addr: "127.0.0.2:9100", set: true, want: "http://127.0.0.2:9100/health/ready"},
		{addr: "[::1]:9100", set: true, want: "http://[::1]:9100/health/ready"},
		{addr: "", set: true, err: "DITTO_METRICS_ADDRESS is empty"},
		{addr: "5000", set: true, err: `DITTO_METRICS_ADDRESS="5000" is not a host:port`},
		{addr: "127.0.0.1:0", set: true, err: "no fixed port"},
	} {
		lookup := func(name string) (string, bool) {
			if name != "DITTO_METRICS_ADDRESS" {
				t.Fatalf("ditto health read %s", name)
			}
			return c.addr, c.set
		}
		got, err := healthURL(lookup)
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("%q (set %v): %q, %v; want an error with %q", c.addr, c.set, got, err, c.err)
			}
			continue
		}
		if err != nil || got != c.want {
			t.Errorf("%q (set %v): %q, %v; want %q", c.addr, c.set, got, err, c.want)
		}
	}
	// Docker reserves exit code 2 of a HEALTHCHECK: a bad address is 1 too.
	var out bytes.Buffer
	bad := func(string) (string, bool) { return "nonsense", true }
	if code := health(context.Background(), bad, &out, &out); code != 1 {
		t.Fatalf("exit %d on a bad address, want 1: %s", code, out.String())
	}
}

func TestVersionCommand(t *testing.T) {
	var out bytes.Buffer
	if code := run([]string{"version"}, &out, &out); code != 0 {
		t.Fatalf("exit %d", code)
	}
	if want := "ditto " + buildinfo.Version() + " " + runtime.Version(); !strings.HasPrefix(out.String(), want) {
		t.Fatalf("ditto version printed %q, want it to start with %q", out.String(), want)
	}
}
