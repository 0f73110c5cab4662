package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/EventStore/EventStore-Client-Go/v4/esdb"
	"github.com/rs/zerolog"

	"github.com/ditto-replicator/ditto/config"
	"github.com/ditto-replicator/ditto/internal/metrics"
	"github.com/ditto-replicator/ditto/internal/recovery"
	"github.com/ditto-replicator/ditto/sinks"
)

// measureTimeout bounds one round of recovery-point measurements.
const measureTimeout = 30 * time.Second

// measureAll measures the recovery point of every subscription group.
// Groups that cannot be measured come back with their error.
func measureAll(ctx context.Context, src *esdb.Client, holder sinks.Holder, subs []config.Subscription) ([]recovery.Point, []error) {
	points := make([]recovery.Point, len(subs))
	errs := make([]error, len(subs))
	for i, sub := range subs {
		points[i], errs[i] = recovery.Measure(ctx, src, holder, sub.Stream, sub.Group, recovery.Options{})
	}
	return points, errs
}

// recoveryPoints refreshes the recovery-point gauges every
// DITTO_RECOVERY_POINT_INTERVAL until ctx ends, the first time one interval
// after the start. It reads the source through a client of its own (the
// consumer's may be replaced under it), replaced once it has closed itself
// (see esdbconn), and asks the sink what the destination holds.
func (s *service) recoveryPoints(ctx context.Context) {
	holder, _ := s.sink.(sinks.Holder)
	subs := s.cfg.SubscriptionList()
	src, err := s.sourceClient()
	if err != nil {
		s.log.Warn().Err(err).Msg("recovery point not measured")
		return
	}
	defer src.Close()
	t := time.NewTicker(s.cfg.RecoveryPointInterval)
	defer t.Stop()
	// The first measurement waits an interval too, so that a start (a
	// backlog read at full speed) does not pay for it.
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		c := src.Get()
		mctx, cancel := context.WithTimeout(ctx, measureTimeout)
		points, errs := measureAll(mctx, c, holder, subs)
		cancel()
		if ctx.Err() != nil {
			return
		}
		for i, p := range points {
			if errs[i] != nil {
				s.log.Debug().Err(errs[i]).Str("subscription", subs[i].String()).Msg("recovery point not measured")
				src.Renew(c, errs[i])
				continue
			}
			s.setRecoveryPoint(p)
		}
	}
}

func (s *service) setRecoveryPoint(p recovery.Point) {
	m := s.metrics
	m.RecoveryPointEvents.WithLabelValues(metrics.App, p.Stream, p.Group).Set(float64(p.Events))
	m.RecoveryPointSeconds.WithLabelValues(metrics.App, p.Stream, p.Group).Set(p.Seconds)
	exact := 0.0
	if p.Exact {
		exact = 1
	}
	m.RecoveryPointExact.WithLabelValues(metrics.App, p.Stream, p.Group).Set(exact)
}

// statusCmd runs `ditto status`: with ditto's configuration, it prints the
// recovery point of every subscription group.
func statusCmd(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("ditto status", flag.ContinueOnError)
	fs.SetOutput(stderr)
	asJSON := fs.Bool("json", false, "print the recovery points as JSON")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "Usage: ditto status [--json]\n\nPrints, for every group of DITTO_SUBSCRIPTIONS, the recovery point: the events on the source not yet\non the destination and the age of the oldest, what a failover would lose now. It reads ditto's\nconfiguration (DITTO_* variables) and exits 0, 1 if a group could not be measured, 2 on bad input.")
	}
	if code, ok := parseFlags(fs, args, stderr); !ok {
		return code
	}
	cfg, code := load(stderr)
	if cfg == nil {
		return code
	}
	log := zerolog.Nop()
	src, err := newClient(cfg.SourceConnectionString, log)
	if err != nil {
		fmt.Fprintf(stderr, "ditto status: DITTO_SOURCE_CONNECTION_STRING: %v\n", err)
		return 1
	}
	defer src.Close()
	var holder sinks.Holder
	if !cfg.ReadOnly {
		sink, err := openSink(ctx, cfg, metrics.New(), log, io.Discard, nil)
		if err != nil {
			fmt.Fprintf(stderr, "ditto status: %v\n", err)
			return 1
		}
		defer sink.Close()
		holder, _ = sink.(sinks.Holder)
	}
	mctx, cancel := context.WithTimeout(ctx, measureTimeout)
	defer cancel()
	subs := cfg.SubscriptionList()
	points, errs := measureAll(mctx, src, holder, subs)
	failed := false
	for _, err := range errs {
		failed = failed || err != nil
	}
	if *asJSON {
		type row struct {
			recovery.Point
			Error string `json:"error,omitempty"`
		}
		rows := make([]row, len(points))
		for i := range points {
			rows[i].Point = points[i]
			if errs[i] != nil {
				rows[i].Error = errs[i].Error()
			}
		}
		printJSON(stdout, rows)
	} else {
		printStatus(stdout, points, errs)
	}
	if failed {
		return 1
	}
	return 0
}

func printStatus(w io.Writer, points []recovery.Point, errs []error) {
	fmt.Fprintln(w, "Recovery point: what a failover to the destination would lose now.")
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SUBSCRIPTION\tEVENTS NOT COPIED\tOLDEST\tCHECKPOINT\tSOURCE LAST\tNOTE")
	for i, p := range points {
		name := p.Stream + "::" + p.Group
		if errs[i] != nil {
			fmt.Fprintf(tw, "%s\t-\t-\t-\t-\t%v\n", name, errs[i])
			continue
		}
		checkpoint := "none"
		if p.Checkpoint != nil {
			checkpoint = fmt.Sprint(*p.Checkpoint)
		}
		oldest := "-"
		if p.Events > 0 && !p.Oldest.IsZero() {
			oldest = fmt.Sprintf("%.1fs ago (%s)", p.Seconds, p.Oldest.UTC().Format(time.RFC3339))
		}
		note := "exact"
		if !p.Exact {
			note = "at most: " + p.Unknown
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%d\t%s\n", name, p.Events, oldest, checkpoint, p.SourceLast, note)
	}
	tw.Flush()
}
