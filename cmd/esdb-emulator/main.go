// Command esdb-emulator runs the esdbtest KurrentDB-compatible test server
// as a process, for tests that need a real process to kill and restart,
// and for demos. It is never a production store.
//
//	esdb-emulator --addr 127.0.0.1:2113 [--insecure] [--db DIR]
//	              [--cert FILE --key FILE] [--max-append-size N]
//	              [--max-append-event-size N] [--no-batch-append]
//	              [--allow-remote]
//
// Once it accepts connections it prints exactly one line naming the address
// and a connection string (without the password). SIGTERM and SIGINT stop
// it cleanly.
package main

import (
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/ditto-replicator/ditto/internal/esdbtest"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "esdb-emulator:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	fs := flag.NewFlagSet("esdb-emulator", flag.ContinueOnError)
	addr := fs.String("addr", "127.0.0.1:2113", "listen address (host:port); loopback only unless --allow-remote")
	insecure := fs.Bool("insecure", false, "serve plaintext without authentication (default: TLS with a self-signed certificate)")
	dir := fs.String("db", "", "keep the log in this directory and reload it at start (default: memory only)")
	cert := fs.String("cert", "", "PEM certificate file to serve (default: self-signed)")
	key := fs.String("key", "", "PEM private key file for --cert")
	maxAppend := fs.Int("max-append-size", esdbtest.DefaultMaxAppendSize, "maximum total size of one append in bytes")
	maxEvent := fs.Int("max-append-event-size", 0, "maximum size of one event in bytes (0: no per-event limit)")
	noBatch := fs.Bool("no-batch-append", false, "serve Streams.BatchAppend as Unimplemented and do not advertise it, like servers before 21.10")
	allowRemote := fs.Bool("allow-remote", false, "allow a non-loopback --addr")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	if (*cert == "") != (*key == "") {
		return errors.New("--cert and --key go together")
	}
	if !*allowRemote {
		if err := checkLoopback(*addr); err != nil {
			return err
		}
	}
	srv, err := esdbtest.StartServer(esdbtest.Options{
		Addr:               *addr,
		Insecure:           *insecure,
		Dir:                *dir,
		CertFile:           *cert,
		KeyFile:            *key,
		MaxAppendSize:      *maxAppend,
		MaxAppendEventSize: *maxEvent,
		DisableBatchAppend: *noBatch,
	})
	if err != nil {
		return err
	}
	// Signals are caught before announcing, so a supervisor that reacts to
	// the line can stop us cleanly at once.
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	// The announced connection string leaves the credentials out; with
	// TLS the users are admin and ops (password changeit).
	conn := strings.Replace(srv.ConnectionString(), "admin:changeit@", "", 1)
	mode := "insecure"
	if !*insecure {
		mode = "TLS, users admin and ops"
	}
	fmt.Printf("esdb-emulator listening on %s (%s; connection string %s)\n", srv.Addr(), mode, conn)
	<-sig
	return srv.Close()
}

// checkLoopback refuses addresses that would expose the test server beyond
// this machine. An empty host means every interface, so it is refused too.
func checkLoopback(addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("invalid --addr %q: %w", addr, err)
	}
	if host == "localhost" {
		return nil
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsLoopback() {
		return nil
	}
	return fmt.Errorf("--addr %q is not a loopback address; pass --allow-remote to allow it", addr)
}
