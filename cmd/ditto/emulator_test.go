package main

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ditto-replicator/ditto/internal/testutil"
)

var (
	emulatorOnce sync.Once
	emulatorPath string
	emulatorErr  error
)

// emulatorBinary builds cmd/esdb-emulator once per test run.
func emulatorBinary(t *testing.T) string {
	t.Helper()
	emulatorOnce.Do(func() {
		dir, err := os.MkdirTemp("", "esdb-emulator-bin")
		if err != nil {
			emulatorErr = err
			return
		}
		emulatorPath = filepath.Join(dir, "esdb-emulator")
		out, err := exec.Command("go", "build", "-o", emulatorPath, "github.com/ditto-replicator/ditto/cmd/esdb-emulator").CombinedOutput()
		if err != nil {
			emulatorErr = fmt.Errorf("go build esdb-emulator: %v\n%s", err, out)
		}
	})
	if emulatorErr != nil {
		t.Fatal(emulatorErr)
	}
	return emulatorPath
}

// freePort returns a 127.0.0.1 address that was free a moment ago; servers
// restarted on it keep their address, as a real cluster node does.
func freePort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

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
	em := &emulator{addr: freePort(t), dir: t.TempDir(), args: append([]string{"--insecure"}, extra...)}
	em.start(t)
	t.Cleanup(func() { em.proc.kill() })
	return em
}

// start runs the process and waits for its "listening" line.
func (em *emulator) start(t *testing.T) {
	t.Helper()
	args := append([]string{"--addr", em.addr, "--db", em.dir}, em.args...)
	cmd := exec.Command(emulatorBinary(t), args...)
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
