package faultproxy

import (
	"bufio"
	"errors"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ditto-replicator/ditto/internal/testutil"
)

// echoServer is a line echo server on 127.0.0.1 that counts its connections.
type echoServer struct {
	ln    net.Listener
	mu    sync.Mutex
	conns int
	wg    sync.WaitGroup
}

func startEcho(t *testing.T) *echoServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &echoServer{ln: ln}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.mu.Lock()
			s.conns++
			s.mu.Unlock()
			s.wg.Add(1)
			go func() {
				defer s.wg.Done()
				defer c.Close()
				io.Copy(c, c)
			}()
		}
	}()
	t.Cleanup(func() { ln.Close() })
	return s
}

func (s *echoServer) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.conns
}

func startProxy(t *testing.T, target string) *Proxy {
	t.Helper()
	p, err := Start(target)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

func dial(t *testing.T, p *Proxy) net.Conn {
	t.Helper()
	c, err := net.DialTimeout("tcp", p.Addr(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// roundTrip writes a line and reads the echo, failing after timeout.
func roundTrip(c net.Conn, line string, timeout time.Duration) (string, error) {
	c.SetDeadline(time.Now().Add(timeout))
	defer c.SetDeadline(time.Time{})
	if _, err := io.WriteString(c, line+"\n"); err != nil {
		return "", err
	}
	got, err := bufio.NewReader(c).ReadString('\n')
	return strings.TrimSuffix(got, "\n"), err
}

func TestForwardsBothWays(t *testing.T) {
	echo := startEcho(t)
	p := startProxy(t, echo.ln.Addr().String())
	c := dial(t, p)
	for _, line := range []string{"hello", strings.Repeat("x", 200<<10)} {
		got, err := roundTrip(c, line, 10*time.Second)
		if err != nil || got != line {
			t.Fatalf("round trip of %d bytes: got %d bytes, err %v", len(line), len(got), err)
		}
	}
}

func TestRefusesNonLoopbackTarget(t *testing.T) {
	for _, target := range []string{"10.1.2.3:80", "example.com:443", "nonsense"} {
		if p, err := Start(target); err == nil {
			p.Close()
			t.Errorf("Start(%q) accepted a non-loopback target", target)
		}
	}
}

// TestDelayAddsLatency checks the lower bound only: a round trip through a
// proxy with delay d takes at least 2d (one delay each way).
func TestDelayAddsLatency(t *testing.T) {
	echo := startEcho(t)
	p := startProxy(t, echo.ln.Addr().String())
	c := dial(t, p)
	const d = 150 * time.Millisecond
	p.SetDelay(d)
	start := time.Now()
	if got, err := roundTrip(c, "slow", 10*time.Second); err != nil || got != "slow" {
		t.Fatalf("got %q, %v", got, err)
	}
	if took := time.Since(start); took < 2*d {
		t.Fatalf("round trip took %s, want at least %s", took, 2*d)
	}
	p.SetDelay(0)
	if got, err := roundTrip(c, "fast", 10*time.Second); err != nil || got != "fast" {
		t.Fatalf("after SetDelay(0): got %q, %v", got, err)
	}
}

// TestDelayKeepsOrder: chunks sent in quick succession under a delay arrive
// in order and complete.
func TestDelayKeepsOrder(t *testing.T) {
	echo := startEcho(t)
	p := startProxy(t, echo.ln.Addr().String())
	p.SetDelay(20 * time.Millisecond)
	c := dial(t, p)
	var want strings.Builder
	for i := 0; i < 200; i++ {
		line := strings.Repeat(string(rune('a'+i%26)), i+1) + "\n"
		want.WriteString(line)
		if _, err := io.WriteString(c, line); err != nil {
			t.Fatal(err)
		}
	}
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	got := make([]byte, want.Len())
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatal(err)
	}
	if string(got) != want.String() {
		t.Fatal("bytes arrived out of order or altered")
	}
}

func TestDropAllResetsConnections(t *testing.T) {
	echo := startEcho(t)
	p := startProxy(t, echo.ln.Addr().String())
	c := dial(t, p)
	if _, err := roundTrip(c, "before", 5*time.Second); err != nil {
		t.Fatal(err)
	}
	p.DropAll()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read after DropAll: %v, want the connection closed", err)
	}
	// New connections go through again.
	c2 := dial(t, p)
	if got, err := roundTrip(c2, "after", 5*time.Second); err != nil || got != "after" {
		t.Fatalf("new connection after DropAll: %q, %v", got, err)
	}
	if echo.count() != 2 {
		t.Fatalf("echo server saw %d connections, want 2", echo.count())
	}
}

func TestBlackholeHoldsTrafficThenDrops(t *testing.T) {
	echo := startEcho(t)
	p := startProxy(t, echo.ln.Addr().String())
	old := dial(t, p)
	if _, err := roundTrip(old, "warm", 5*time.Second); err != nil {
		t.Fatal(err)
	}
	p.SetBlackhole(true)
	// Existing connection: bytes vanish, the connection stays open.
	if _, err := roundTrip(old, "lost", 300*time.Millisecond); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("existing connection under black hole: %v, want a timeout", err)
	}
	// New connection: accepted, never reaches the target.
	before := echo.count()
	held := dial(t, p)
	if _, err := roundTrip(held, "void", 300*time.Millisecond); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("new connection under black hole: %v, want a timeout", err)
	}
	if echo.count() != before {
		t.Fatal("a black-holed connection reached the target")
	}
	p.SetBlackhole(false)
	// Held connections are dropped so that clients reconnect.
	for _, c := range []net.Conn{old, held} {
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.ReadAll(c); errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatal("a held connection was not dropped when the black hole ended")
		}
	}
	c := dial(t, p)
	if got, err := roundTrip(c, "back", 5*time.Second); err != nil || got != "back" {
		t.Fatalf("after black hole: %q, %v", got, err)
	}
}

func TestTargetDownClosesClient(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens there now
	p := startProxy(t, addr)
	c := dial(t, p)
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Read(make([]byte, 1)); errors.Is(err, os.ErrDeadlineExceeded) || err == nil {
		t.Fatalf("read: %v, want the connection closed", err)
	}
}

// TestClosedConnectionsAreForgotten is the regression test for a leak: the
// proxy kept every connection it ever saw in its map, so a long chaos run
// grew it without bound and DropAll closed dead sockets.
func TestClosedConnectionsAreForgotten(t *testing.T) {
	echo := startEcho(t)
	p := startProxy(t, echo.ln.Addr().String())
	for i := 0; i < 20; i++ {
		c := dial(t, p)
		if _, err := roundTrip(c, "x", 5*time.Second); err != nil {
			t.Fatal(err)
		}
		c.Close()
	}
	testutil.Eventually(t, 10*time.Second, "proxy forgets closed connections", func() bool {
		p.mu.Lock()
		defer p.mu.Unlock()
		return len(p.conns) == 0
	})
}

func TestCloseEndsEverything(t *testing.T) {
	echo := startEcho(t)
	p, err := Start(echo.ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	live := dial(t, p)
	if _, err := roundTrip(live, "x", 5*time.Second); err != nil {
		t.Fatal(err)
	}
	p.SetBlackhole(true)
	held := dial(t, p)
	p.SetDelay(time.Second)
	done := make(chan error, 1)
	go func() { done <- p.Close() }()
	select {
	case <-done:
	case <-time.After(15 * time.Second):
		t.Fatal("Close did not return")
	}
	for _, c := range []net.Conn{live, held} {
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.ReadAll(c); errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatal("a connection survived Close")
		}
	}
	if c, err := net.DialTimeout("tcp", p.Addr(), time.Second); err == nil {
		c.Close()
		t.Fatal("proxy still accepts after Close")
	}
}

// TestConcurrentFaults runs traffic while faults flip, for the race detector.
func TestConcurrentFaults(t *testing.T) {
	echo := startEcho(t)
	p := startProxy(t, echo.ln.Addr().String())
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for i := 0; i < 4; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := 0; j < 1000; j++ {
				select {
				case <-stop:
					return
				default:
				}
				c, err := net.DialTimeout("tcp", p.Addr(), time.Second)
				if err != nil {
					continue
				}
				roundTrip(c, "ping", 200*time.Millisecond)
				c.Close()
			}
		}()
	}
	for i := 0; i < 30; i++ {
		switch i % 4 {
		case 0:
			p.SetDelay(time.Duration(i) * time.Millisecond)
		case 1:
			p.DropAll()
		case 2:
			p.SetBlackhole(true)
		case 3:
			p.SetBlackhole(false)
		}
		time.Sleep(5 * time.Millisecond) // a pause between faults, not a wait for a condition
	}
	close(stop)
	wg.Wait()
	p.SetBlackhole(false)
	p.SetDelay(0)
	c := dial(t, p)
	if got, err := roundTrip(c, "end", 5*time.Second); err != nil || got != "end" {
		t.Fatalf("after faults: %q, %v", got, err)
	}
}
