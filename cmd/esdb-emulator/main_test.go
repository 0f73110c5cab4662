package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"github.com/ditto-replicator/ditto/internal/esdbtest"
	"io"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/EventStore/EventStore-Client-Go/v4/esdb"
	"github.com/EventStore/EventStore-Client-Go/v4/protos/serverfeatures"
	"github.com/EventStore/EventStore-Client-Go/v4/protos/shared"
	"github.com/EventStore/EventStore-Client-Go/v4/protos/streams"
	"github.com/google/uuid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/ditto-replicator/ditto/internal/testutil"
)

// proc is a running emulator process.
type proc struct {
	cmd    *exec.Cmd
	exited chan struct{}
}

// startProc runs the emulator and waits for its single "listening" line.
func startProc(t *testing.T, bin string, args ...string) (*proc, string) {
	t.Helper()
	cmd := exec.Command(bin, args...)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &proc{cmd: cmd, exited: make(chan struct{})}
	lines := make(chan string, 1)
	go func() {
		r := bufio.NewReader(stdout)
		line, _ := r.ReadString('\n')
		lines <- line
		io.Copy(io.Discard, r)
		cmd.Wait()
		close(p.exited)
	}()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-p.exited
	})
	select {
	case line := <-lines:
		if !strings.Contains(line, "listening on") {
			t.Fatalf("unexpected first line %q", line)
		}
		return p, line
	case <-time.After(30 * time.Second):
		t.Fatal("emulator did not report that it listens")
	}
	return nil, ""
}

func connect(t *testing.T, addr string) *esdb.Client {
	t.Helper()
	return esdbtest.Connect(t, esdbtest.Config(t, "esdb://"+addr+"?tls=false"))
}

func streamIDs(t *testing.T, c *esdb.Client, stream string) []uuid.UUID {
	t.Helper()
	rs, err := c.ReadStream(context.Background(), stream, esdb.ReadStreamOptions{}, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	defer rs.Close()
	var ids []uuid.UUID
	for {
		e, err := rs.Recv()
		if errors.Is(err, io.EOF) {
			return ids
		}
		if err != nil {
			t.Fatalf("read %s: %v", stream, err)
		}
		ids = append(ids, e.Event.EventID)
	}
}

// TestKill9LosesNothingAcknowledged appends from several writers while the
// process is killed with SIGKILL, restarts it on the same --db, and checks
// that every acknowledged event is there, in order.
func TestKill9LosesNothingAcknowledged(t *testing.T) {
	bin := testutil.Binary(t, "github.com/ditto-replicator/ditto/cmd/esdb-emulator")
	addr, dir := testutil.FreeAddr(t), t.TempDir()
	p, _ := startProc(t, bin, "--addr", addr, "--insecure", "--db", dir)
	c := connect(t, addr)

	const writers = 4
	var mu sync.Mutex
	acked := make([][]uuid.UUID, writers)
	total := 0
	var wg sync.WaitGroup
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for {
				batch := make([]esdb.EventData, 10)
				ids := make([]uuid.UUID, len(batch))
				for i := range batch {
					ids[i] = uuid.New()
					batch[i] = esdb.EventData{EventID: ids[i], EventType: "E", ContentType: esdb.ContentTypeJson, Data: []byte(`{}`)}
				}
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				_, err := c.AppendToStream(ctx, fmt.Sprintf("kill-%d", w), esdb.AppendToStreamOptions{}, batch...)
				cancel()
				if err != nil {
					return // the process is gone
				}
				mu.Lock()
				acked[w] = append(acked[w], ids...)
				total += len(ids)
				mu.Unlock()
			}
		}(w)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		mu.Lock()
		n := total
		mu.Unlock()
		if n >= 2000 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("only %d events acknowledged before the deadline", n)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-p.exited
	wg.Wait()
	c.Close()

	startProc(t, bin, "--addr", addr, "--insecure", "--db", dir)
	c2 := connect(t, addr)
	for w := 0; w < writers; w++ {
		stored := streamIDs(t, c2, fmt.Sprintf("kill-%d", w))
		if len(stored) < len(acked[w]) {
			t.Fatalf("stream kill-%d: %d events stored, %d acknowledged", w, len(stored), len(acked[w]))
		}
		for i, id := range acked[w] {
			if stored[i] != id {
				t.Fatalf("stream kill-%d: event %d is %s, acknowledged %s", w, i, stored[i], id)
			}
		}
	}
	// The restarted server keeps numbering where the log left off.
	if _, err := c2.AppendToStream(context.Background(), "kill-0", esdb.AppendToStreamOptions{
		ExpectedRevision: esdb.Revision(uint64(len(streamIDs(t, c2, "kill-0")) - 1))},
		esdb.EventData{EventType: "E", ContentType: esdb.ContentTypeJson, Data: []byte(`{}`)}); err != nil {
		t.Fatalf("append after restart: %v", err)
	}
}

func TestSIGTERMStopsCleanly(t *testing.T) {
	bin := testutil.Binary(t, "github.com/ditto-replicator/ditto/cmd/esdb-emulator")
	p, line := startProc(t, bin, "--addr", "127.0.0.1:0")
	if strings.Contains(line, "changeit") || !strings.Contains(line, "tls=true") {
		t.Fatalf("announcement %q must name a TLS connection string without the password", line)
	}
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-p.exited:
	case <-time.After(30 * time.Second):
		t.Fatal("no exit after SIGTERM")
	}
	if code := p.cmd.ProcessState.ExitCode(); code != 0 {
		t.Fatalf("exit code %d after SIGTERM, want 0", code)
	}
}

func TestRefusesRemoteAddr(t *testing.T) {
	for _, addr := range []string{"0.0.0.0:0", ":0", "10.1.2.3:2113"} {
		if err := run([]string{"--addr", addr}); err == nil || !strings.Contains(err.Error(), "--allow-remote") {
			t.Errorf("--addr %s: %v, want a refusal naming --allow-remote", addr, err)
		}
	}
	for _, addr := range []string{"127.0.0.1:0", "localhost:0", "[::1]:0"} {
		if err := checkLoopback(addr); err != nil {
			t.Errorf("%s: %v", addr, err)
		}
	}
}

// TestNoBatchAppendFlag: --no-batch-append hides Streams.BatchAppend from
// ServerFeatures and serves it as Unimplemented.
func TestNoBatchAppendFlag(t *testing.T) {
	bin := testutil.Binary(t, "github.com/ditto-replicator/ditto/cmd/esdb-emulator")
	_, line := startProc(t, bin, "--addr", "127.0.0.1:0", "--insecure", "--no-batch-append")
	addr, _, _ := strings.Cut(strings.TrimPrefix(line, "esdb-emulator listening on "), " ")
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	m, err := serverfeatures.NewServerFeaturesClient(conn).GetSupportedMethods(ctx, &shared.Empty{})
	if err != nil {
		t.Fatalf("GetSupportedMethods on %s: %v", addr, err)
	}
	for _, sm := range m.GetMethods() {
		if sm.GetMethodName() == "batchappend" {
			t.Fatalf("batchappend advertised: %v", sm)
		}
	}
	call, err := streams.NewStreamsClient(conn).BatchAppend(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := call.Recv(); status.Code(err) != codes.Unimplemented {
		t.Fatalf("BatchAppend: %v, want Unimplemented", err)
	}
}
