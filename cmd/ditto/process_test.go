package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/EventStore/EventStore-Client-Go/v4/esdb"

	"github.com/ditto-replicator/ditto/config"
	"github.com/ditto-replicator/ditto/internal/esdbconn"
	"github.com/ditto-replicator/ditto/internal/testutil"
	"github.com/ditto-replicator/ditto/sinks"
	"github.com/ditto-replicator/ditto/verify"
)

// process is ditto running as a child process.
type process struct {
	cmd    *exec.Cmd
	output *syncBuffer
	exited chan struct{}
}

func startProcess(t *testing.T, env map[string]string, args ...string) *process {
	t.Helper()
	cmd := exec.Command(testutil.Binary(t, "github.com/ditto-replicator/ditto/cmd/ditto"), args...)
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME")}
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	p := &process{cmd: cmd, output: &syncBuffer{}, exited: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = p.output, p.output
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		cmd.Wait()
		close(p.exited)
	}()
	t.Cleanup(func() { p.kill() })
	return p
}

func (p *process) kill() {
	p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.exited
}

func (p *process) exitCode(t *testing.T) int {
	t.Helper()
	select {
	case <-p.exited:
	case <-time.After(30 * time.Second):
		t.Fatalf("ditto did not exit; output:\n%s", p.output.String())
	}
	return p.cmd.ProcessState.ExitCode()
}

func TestConfigCommandListsEveryVariable(t *testing.T) {
	var out bytes.Buffer
	if code := run([]string{"config"}, &out, &out); code != 0 {
		t.Fatalf("exit code %d", code)
	}
	for _, name := range []string{"DITTO_SOURCE_CONNECTION_STRING", "DITTO_BUFFER_SIZE", "DITTO_TIME_TO_LIVE", "DITTO_LOG_FORMAT"} {
		if !strings.Contains(out.String(), name) {
			t.Errorf("ditto config does not list %s", name)
		}
	}
	// Every sink is listed, with its variables after its heading.
	for _, p := range sinks.Plugins() {
		at := strings.Index(out.String(), "DITTO_SINK="+p.Name+":")
		if at < 0 {
			t.Errorf("ditto config does not list the %s sink", p.Name)
			continue
		}
		for _, v := range config.Variables() {
			if v.Sink == p.Name && !strings.Contains(out.String()[at:], v.Name) {
				t.Errorf("ditto config does not list %s under the %s sink", v.Name, p.Name)
			}
		}
	}
	for _, want := range []string{"eventstore", "kinesis", "stdout"} {
		if _, ok := sinks.Lookup(want); !ok {
			t.Errorf("the %s sink is not registered", want)
		}
	}
}

// lastNumber is the last event number of stream on c, or -1 (also when it
// cannot be read), for conditions to poll.
func lastNumber(c *esdb.Client, stream string) int64 {
	n, err := esdbconn.LastNumber(context.Background(), c, stream)
	if err != nil {
		return -1
	}
	return n
}

// writeInChunks appends perStream events, made by events (such as
// testEvents), to each of the streams customer-k0, customer-k1, … in rounds
// of chunk events per stream, in the background, as clients would while
// ditto is killed; the channel says when it is done.
func writeInChunks(c *esdb.Client, streams, perStream, chunk int, events func(stream string, from, n int) []esdb.EventData) ([]string, <-chan error) {
	names := make([]string, streams)
	for i := range names {
		names[i] = fmt.Sprintf("customer-k%d", i)
	}
	done := make(chan error, 1)
	go func() {
		for from := 0; from < perStream; from += chunk {
			for _, s := range names {
				if _, err := c.AppendToStream(context.Background(), s, esdb.AppendToStreamOptions{ExpectedRevision: testutil.ExpectedAt(from)}, events(s, from, chunk)...); err != nil {
					done <- err
					return
				}
			}
		}
		done <- nil
	}()
	return names, done
}

// TestKilledMidReplicationLosesAndDuplicatesNothing kills ditto with SIGKILL
// three times while the source keeps receiving writes; the destination ends
// identical (no event missing, none duplicated, order kept).
func TestKilledMidReplicationLosesAndDuplicatesNothing(t *testing.T) {
	e := newEnv(t)
	e.createGroup(t, "$ce-customer", "ditto", esdb.ConsumerStrategyPinned)
	const streams, perStream = 40, 60
	names, writerDone := writeInChunks(e.srcC, streams, perStream, 5, testEvents)
	env := map[string]string{
		"DITTO_SOURCE_CONNECTION_STRING":      e.src.ConnectionString(),
		"DITTO_DESTINATION_CONNECTION_STRING": e.dst.ConnectionString(),
		"DITTO_SUBSCRIPTIONS":                 "$ce-customer:ditto",
		"DITTO_METRICS_ADDRESS":               "127.0.0.1:0",
		"DITTO_BUFFER_SIZE":                   "50",
		"DITTO_BATCH_MAX_EVENTS":              "7",
	}
	seen := int64(-1)
	for kill := 0; kill < 3; kill++ {
		p := startProcess(t, env)
		// A ditto that has caught up with the writer is killed after the
		// last event instead, which must lose and duplicate nothing too.
		target := min(seen+100, streams*perStream-1)
		testutil.Eventually(t, 60*time.Second, "destination grows by 100 events", func() bool {
			return lastNumber(e.dstC, "$ce-customer") >= target
		})
		p.kill()
		seen = lastNumber(e.dstC, "$ce-customer")
	}
	if err := <-writerDone; err != nil {
		t.Fatal(err)
	}
	p := startProcess(t, env)
	e.waitIdentical(t, verify.Options{Streams: names})
	rep := e.compare(t, verify.Options{Streams: names})
	if rep.SourceEvents != streams*perStream || rep.DestinationEvents != streams*perStream {
		t.Fatalf("source %d, destination %d events, want %d each", rep.SourceEvents, rep.DestinationEvents, streams*perStream)
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	if code := p.exitCode(t); code != 0 {
		t.Fatalf("graceful stop exited %d:\n%s", code, p.output)
	}
	if !strings.Contains(p.output.String(), "ditto stopped") {
		t.Fatalf("no clean stop logged:\n%s", p.output)
	}
}

// README's configuration table is generated from config.Config; this keeps
// it from drifting.
func TestReadmeConfigTableIsCurrent(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	var table bytes.Buffer
	if code := run([]string{"config", "--markdown"}, &table, &table); code != 0 {
		t.Fatal("ditto config --markdown failed")
	}
	if !bytes.Contains(readme, table.Bytes()) {
		t.Fatalf("README.md's configuration table is stale; regenerate it with go run ./cmd/ditto config --markdown:\n%s", table.String())
	}
}
