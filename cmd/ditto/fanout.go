package main

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/ditto-replicator/ditto/config"
	"github.com/ditto-replicator/ditto/internal/metrics"
	"github.com/ditto-replicator/ditto/sinks"
	"github.com/ditto-replicator/ditto/sinks/fanout"
)

// openFanout opens every destination of DITTO_DESTINATIONS with its own
// sink, each asking the policy's questions of src, labelled with its name in logs (destinationName) and in ditto_io_duration_seconds'
// target, behind one fan-out sink.
func openFanout(ctx context.Context, cfg *config.Config, m *metrics.Metrics, log zerolog.Logger, out io.Writer, src sinks.Source) (sinks.Sink, error) {
	var dests []fanout.Destination
	closeAll := func() {
		for _, d := range dests {
			d.Sink.Close()
		}
	}
	for _, d := range cfg.DestinationList {
		plugin, _ := sinks.Lookup(d.Sink) // config checked the name
		name := d.Name
		sink, err := plugin.Open(ctx, d.Settings, sinks.Env{
			Log:    log.With().Str("sink", plugin.Name).Str("destinationName", name).Logger(),
			Stdout: out,
			// A sink's own metrics get the destination's name as a
			// label, so that two destinations of one sink do not collide.
			Metrics: prometheus.WrapRegistererWith(prometheus.Labels{"destination": name}, m.Registry),
			Observe: func(op string, took time.Duration) {
				m.IODuration.WithLabelValues(metrics.App, plugin.Name, name, op).Observe(took.Seconds())
			},
			Source: src,
		})
		if err != nil {
			closeAll()
			return nil, fmt.Errorf("destination %s: %s", name, d.Rename(err.Error()))
		}
		dests = append(dests, fanout.Destination{Name: name, Sink: sink, Rename: d.Rename})
	}
	return fanout.New(dests, fanout.Options{Log: log}), nil
}

// sinkLabel names where events go, for logs and /health/ready.
func sinkLabel(cfg *config.Config) string {
	if cfg.Destinations != "" {
		return "fan-out"
	}
	return cfg.Sink
}
