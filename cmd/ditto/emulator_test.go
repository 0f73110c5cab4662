package main

import (
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ditto-replicator/ditto/internal/testutil"
)

// emulator is an esdb-emulator process on a fixed address with a --db
// directory, so it can be killed with SIGKILL and restarted losing nothing
// acknowledged.
type emulator struct {
	addr, dir string
	args      []string
	proc      *process
	starts    int
}

// startEmulator starts an insecure emulator process with a --db directory.
func startEmulator(t *testing.T, extra ...string) *emulator {
	t.Helper()
	em := &emulator{addr: testutil.FreeAddr(t), dir: t.TempDir(), args: append([]string{"--insecure"}, extra...)}
	em.start(t)
	t.Cleanup(func() { em.proc.kill() })
	return em
}

// start runs the process and waits for its "listening" line.
func (em *emulator) start(t *testing.T) {
	t.Helper()
	args := append([]string{"--addr", em.addr, "--db", em.dir}, em.args...)
	cmd := exec.Command(testutil.Binary(t, "github.com/ditto-replicator/ditto/cmd/esdb-emulator"), args...)
	p := &process{cmd: cmd, output: &syncBuffer{}, exited: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = p.output, p.output
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		cmd.Wait()
		close(p.exited)
	}()
	em.proc = p
	em.starts++
	testutil.Eventually(t, 30*time.Second, "esdb-emulator on "+em.addr+" is listening", func() bool {
		select {
		case <-p.exited:
			t.Fatalf("esdb-emulator exited: %s", p.output)
		default:
		}
		return strings.Contains(p.output.String(), "listening on")
	})
}

// restart kills the process with SIGKILL and starts it again on the same
// address and --db directory.
func (em *emulator) restart(t *testing.T) {
	t.Helper()
	em.proc.kill()
	em.start(t)
}

// stop ends the process with SIGTERM.
func (em *emulator) stop() {
	em.proc.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-em.proc.exited:
	case <-time.After(10 * time.Second):
		em.proc.kill()
	}
}

// connectionString is the emulator's address as an insecure connection string.
func (em *emulator) connectionString() string { return "esdb://" + em.addr + "?tls=false" }
