// Command ditto replicates events from persistent subscriptions on a source
// KurrentDB/EventStoreDB cluster to their original streams on a destination.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"syscall"
	"time"

	"github.com/rs/zerolog"

	"github.com/ditto-replicator/ditto/config"
	"github.com/ditto-replicator/ditto/internal/buildinfo"
	"github.com/ditto-replicator/ditto/internal/pbwire"
)

// The codec for deliveries, appends and acks; see package pbwire.
func init() { pbwire.Register() }

const usage = `ditto replicates KurrentDB/EventStoreDB events to their original streams.

Usage:
  ditto            run the replicator, configured by DITTO_* environment variables
  ditto demo       start two embedded test servers and replicate sample events between them
  ditto verify     compare source and destination streams (see ditto verify --help)
  ditto groups     copy subscription groups to the destination (see ditto groups --help)
  ditto status     the recovery point: events not yet on the destination, per group (--json)
  ditto config     list every environment variable with its default
  ditto health     ask the ditto on DITTO_METRICS_ADDRESS whether it is ready (exit 0 or 1)
  ditto version    print the version and Go release of this build

Configuration (environment variables):
`

// gcPercent is ditto's GOGC when the environment does not set one. Every
// in-flight event is a handful of small objects holding pointers into its
// received message, and the collector marks all of them again on every
// cycle: collecting half as often as Go's default (100) cuts ditto's CPU per
// event by about a sixth, for about a third more peak memory, which the
// buffer size bounds (see bench/README.md).
const gcPercent = 200

func main() {
	defaultGC(os.Getenv)
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// defaultGC sets gcPercent unless GOGC is set, which Go has applied already.
func defaultGC(getenv func(string) string) {
	if getenv("GOGC") == "" {
		debug.SetGCPercent(gcPercent)
	}
}

func run(args []string, stdout, stderr io.Writer) int {
	cmd := "run"
	if len(args) > 0 {
		cmd = args[0]
		args = args[1:]
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	switch cmd {
	case "run":
		cfg, code := load(stderr)
		if cfg == nil {
			return code
		}
		return serve(ctx, cfg, stdout, stderr)
	case "demo":
		return demo(ctx, args, stdout, stderr)
	case "verify":
		return verifyCmd(ctx, args, stdout, stderr)
	case "health":
		return health(ctx, os.LookupEnv, stdout, stderr)
	case "version", "--version":
		fmt.Fprintf(stdout, "ditto %s %s %s/%s\n", buildinfo.Version(), runtime.Version(), runtime.GOOS, runtime.GOARCH)
		return 0
	case "groups":
		return groupsCmd(ctx, args, stdout, stderr)
	case "status":
		return statusCmd(ctx, args, stdout, stderr)
	case "config", "help", "-h", "--help":
		if len(args) > 0 && args[0] == "--markdown" {
			config.PrintMarkdown(stdout)
			return 0
		}
		fmt.Fprint(stdout, usage)
		config.PrintUsage(stdout)
		return 0
	default:
		fmt.Fprintf(stderr, "ditto: unknown command %q\n\n%s", cmd, usage)
		config.PrintUsage(stderr)
		return 2
	}
}

// load reads the configuration; on error it prints every problem and returns
// exit code 2.
func load(stderr io.Writer) (*config.Config, int) {
	cfg, err := config.Load()
	if err != nil {
		fmt.Fprintf(stderr, "ditto: %v\n(run 'ditto config' to list every variable)\n", err)
		return nil, 2
	}
	return cfg, 0
}

func newLogger(cfg *config.Config, w io.Writer) zerolog.Logger {
	level, err := zerolog.ParseLevel(cfg.LogLevel)
	if err != nil {
		level = zerolog.InfoLevel
	}
	if cfg.LogFormat == "console" {
		w = zerolog.ConsoleWriter{Out: w, TimeFormat: time.TimeOnly}
	}
	return zerolog.New(w).Level(level).With().Timestamp().Logger()
}

// serve runs the service until a signal; exit code 1 on a fatal error.
func serve(ctx context.Context, cfg *config.Config, stdout, stderr io.Writer) int {
	log := newLogger(cfg, stderr)
	log.Info().Str("source", config.Redact(cfg.SourceConnectionString)).Str("sink", sinkLabel(cfg)).Msg("starting")
	svc, err := newService(ctx, cfg, log, stdout)
	if err != nil {
		log.Error().Err(err).Msg("cannot start")
		return 1
	}
	if err := svc.run(ctx); err != nil && !errors.Is(err, context.Canceled) {
		return 1
	}
	return 0
}
