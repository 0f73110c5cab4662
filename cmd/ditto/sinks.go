package main

import (
	"context"
	"io"
	"time"

	"github.com/rs/zerolog"

	"github.com/ditto-replicator/ditto/config"
	"github.com/ditto-replicator/ditto/internal/metrics"
	"github.com/ditto-replicator/ditto/sinks"

	// Every sink ditto offers: each registers itself under its DITTO_SINK name.
	_ "github.com/ditto-replicator/ditto/sinks/eventstore"
	_ "github.com/ditto-replicator/ditto/sinks/kafka"
	_ "github.com/ditto-replicator/ditto/sinks/kinesis"
	_ "github.com/ditto-replicator/ditto/sinks/stdout"
)

// openSink opens where events go: the sink DITTO_SINK names, or the fan-out
// over DITTO_DESTINATIONS. src is handed to every sink opened (nil: the
// policy needs no source reads).
func openSink(ctx context.Context, cfg *config.Config, m *metrics.Metrics, log zerolog.Logger, out io.Writer, src sinks.Source) (sinks.Sink, error) {
	if cfg.Destinations != "" {
		return openFanout(ctx, cfg, m, log, out, src)
	}
	plugin, _ := sinks.Lookup(cfg.Sink) // config checked the name
	return plugin.Open(ctx, cfg.SinkSettings, sinks.Env{
		Log:     log.With().Str("sink", plugin.Name).Logger(),
		Stdout:  out,
		Metrics: m.Registry,
		Observe: func(op string, d time.Duration) {
			m.IODuration.WithLabelValues(metrics.App, plugin.Name, "destination", op).Observe(d.Seconds())
		},
		Source: src,
	})
}
