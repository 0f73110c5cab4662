package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/EventStore/EventStore-Client-Go/v4/esdb"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/rs/zerolog"

	"github.com/ditto-replicator/ditto/config"
	"github.com/ditto-replicator/ditto/consumer"
	"github.com/ditto-replicator/ditto/internal/esdbconn"
	"github.com/ditto-replicator/ditto/internal/metrics"
	"github.com/ditto-replicator/ditto/policy"
	"github.com/ditto-replicator/ditto/replicator"
	"github.com/ditto-replicator/ditto/sinks"
)

// service is one running ditto: consumer → replicator → sink, plus the HTTP
// endpoints for metrics and health.
type service struct {
	cfg     *config.Config
	log     zerolog.Logger
	metrics *metrics.Metrics

	source   *esdb.Client
	reads    *esdbconn.Client // the source reads of the policy (sinks.Source); nil if it needs none
	consumer *consumer.Consumer
	sink     sinks.Sink
	readier  sinks.Readier // nil: the sink has no probe and counts as ready
	sinkErr  atomic.Pointer[error]
	listener net.Listener
}

// newClient connects a client; the connection string is checked by config.
func newClient(cs string, log zerolog.Logger) (*esdb.Client, error) {
	return esdbconn.NewClient(cs, log)
}

func newService(ctx context.Context, cfg *config.Config, log zerolog.Logger, out io.Writer) (*service, error) {
	s := &service{cfg: cfg, log: log, metrics: metrics.New()}
	var err error
	if s.source, err = newClient(cfg.SourceConnectionString, log); err != nil {
		return nil, fmt.Errorf("DITTO_SOURCE_CONNECTION_STRING: %w", err)
	}
	if !cfg.ReadOnly {
		var src sinks.Source
		if cfg.Policy.Sequenced() || cfg.CopyStreamMetadata || cfg.Policy.DestinationName() != "" {
			if src, err = s.policySource(); err != nil {
				s.close()
				return nil, err
			}
		}
		if s.sink, err = openSink(ctx, cfg, s.metrics, log, out, src); err != nil {
			s.close()
			return nil, err
		}
		s.readier, _ = s.sink.(sinks.Readier)
	}
	// Parsed again: the client keeps its own copy.
	sourceConf, err := esdb.ParseConnectionString(cfg.SourceConnectionString)
	if err != nil {
		s.close()
		return nil, fmt.Errorf("DITTO_SOURCE_CONNECTION_STRING: %w", err)
	}
	s.consumer = consumer.New(s.source, cfg.SubscriptionList(), s.metrics, consumer.Options{
		Config:                   sourceConf,
		BufferSize:               cfg.BufferSize,
		ConsumersPerSubscription: cfg.ConsumersPerSubscription,
		Create:                   cfg.CreateSubscriptions,
		Dial:                     func() (*esdb.Client, error) { return newClient(cfg.SourceConnectionString, log) },
	}, log)
	s.metrics.ObserveReady(func() bool { return s.ready() == nil })
	if cfg.MetricsAddress != "" {
		if s.listener, err = net.Listen("tcp", cfg.MetricsAddress); err != nil {
			s.close()
			return nil, fmt.Errorf("DITTO_METRICS_ADDRESS=%s: %w", cfg.MetricsAddress, err)
		}
	}
	if s.readier != nil {
		// Not ready until the first probe has answered.
		notYet := errors.New("destination not probed yet")
		s.sinkErr.Store(&notYet)
	}
	return s, nil
}

// policySource is what the sink may ask of the source and the policy (see
// sinks.Source), read through a client of its own, so that these reads never
// wait behind the consumer's.
func (s *service) policySource() (sinks.Source, error) {
	var err error
	if s.reads, err = s.sourceClient(); err != nil {
		return nil, err
	}
	call := func(ctx context.Context, fn func(*esdb.Client) error) error {
		_, err := esdbconn.Call(ctx, s.reads, func(c *esdb.Client, _ func() bool) (struct{}, error) { return struct{}{}, fn(c) })
		return err
	}
	reader := policy.ClientReader(call, func(op string, d time.Duration) {
		s.metrics.IODuration.WithLabelValues(metrics.App, "eventstore", "source", op).Observe(d.Seconds())
	})
	return policy.NewSource(s.cfg.Policy, reader, s.cfg.CopyStreamMetadata, s.cfg.CopyStreamACL), nil
}

// sourceClient is a client of the source for the caller alone, replaced
// once it has closed itself (see esdbconn).
func (s *service) sourceClient() (*esdbconn.Client, error) {
	dial := func() (*esdb.Client, error) { return newClient(s.cfg.SourceConnectionString, s.log) }
	first, err := dial()
	if err != nil {
		return nil, fmt.Errorf("DITTO_SOURCE_CONNECTION_STRING: %w", err)
	}
	return esdbconn.New(first, dial), nil
}

// ready is /health/ready: every subscription connected and the sink reachable.
func (s *service) ready() error {
	var errs []error
	if !s.consumer.Ready() {
		errs = append(errs, errors.New("not every subscription is connected"))
	}
	if err := s.sinkErr.Load(); err != nil {
		errs = append(errs, fmt.Errorf("sink %s: %w", sinkLabel(s.cfg), *err))
	}
	return errors.Join(errs...)
}

func (s *service) handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(s.metrics.Registry, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /health/live", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /health/ready", func(w http.ResponseWriter, _ *http.Request) {
		if err := s.ready(); err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ready")
	})
	return mux
}

// run replicates until ctx ends (graceful stop) or a fatal error.
func (s *service) run(ctx context.Context) error {
	defer s.close()
	stop, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)

	if s.listener != nil {
		srv := &http.Server{Handler: s.handler(), ReadHeaderTimeout: 5 * time.Second}
		go srv.Serve(s.listener)
		defer srv.Close()
	}
	if s.readier != nil {
		// The probe must end before close: the v4 client panics on calls
		// racing its Close.
		probed := make(chan struct{})
		go func() {
			defer close(probed)
			s.probe(stop, cancel)
		}()
		defer func() { <-probed }()
		defer cancel(nil)
	}
	if s.cfg.RecoveryPointInterval > 0 {
		// Ends before close too: it asks the sink what it holds.
		measured := make(chan struct{})
		go func() {
			defer close(measured)
			s.recoveryPoints(stop)
		}()
		defer func() { <-measured }()
		defer cancel(nil)
	}

	rep := replicator.New(s.sink, s.metrics, replicator.Options{
		Writers:        s.cfg.Writers,
		BatchMaxEvents: s.cfg.BatchMaxEvents,
		BatchMaxBytes:  s.cfg.BatchMaxBytes,
		ReadOnly:       s.cfg.ReadOnly,
		Throttle:       s.cfg.ReplicationThrottleInterval,
		WriteRetries:   s.cfg.WriteRetries,
		BackoffMax:     s.cfg.RetryBackoffMax,
		DrainTimeout:   s.cfg.ShutdownTimeout,
		Policy:         s.cfg.Policy,
		Conflicts:      s.cfg.Conflicts,
		ConflictStream: s.cfg.ConflictStream,
	}, s.log)
	// Buffered so that the reader and the replicator do not hand over
	// every event in step (a goroutine switch each); the source's buffer
	// size already bounds the events in flight. Deliveries left in it at a
	// stop are never acked, so the source redelivers them.
	deliveries := make(chan *consumer.Delivery, 1024)
	consumed := make(chan error, 1)
	go func() {
		err := s.consumer.Run(stop, deliveries)
		if err != nil {
			cancel(err)
		}
		consumed <- err
	}()
	s.log.Info().Str("subscriptions", s.cfg.Subscriptions).Str("sink", sinkLabel(s.cfg)).Str("destinations", s.cfg.Destinations).Int("bufferSize", s.cfg.BufferSize).
		Bool("readOnly", s.cfg.ReadOnly).Int("writers", s.cfg.Writers).Str("mode", s.cfg.Policy.Mode().String()).
		Bool("provenance", s.cfg.Policy.Provenance()).Str("origin", s.cfg.OriginName).Str("destinationName", s.cfg.DestinationName).
		Str("conflictPolicy", s.cfg.Conflicts.String()).Msg("ditto started")
	rep.Run(stop, deliveries)
	err := <-consumed
	if err != nil {
		s.log.Error().Err(err).Msg("ditto stopped")
		return err
	}
	s.log.Info().Msg("ditto stopped")
	return nil
}

// probe refreshes the sink's readiness every few seconds. A fatal answer
// (see sinks.FatalError) stops the service.
func (s *service) probe(ctx context.Context, fatal context.CancelCauseFunc) {
	t := time.NewTicker(5 * time.Second)
	defer t.Stop()
	for {
		pctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		err := s.readier.Ready(pctx)
		cancel()
		if ctx.Err() != nil {
			return
		}
		if sinks.IsFatal(err) {
			fatal(err)
			return
		}
		was := s.sinkErr.Swap(errPtr(err))
		if err != nil && was == nil {
			s.log.Warn().Err(err).Msg("destination not reachable")
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func errPtr(err error) *error {
	if err == nil {
		return nil
	}
	return &err
}

func (s *service) close() {
	if s.consumer != nil {
		s.consumer.Close()
	}
	if s.sink != nil {
		s.sink.Close()
	}
	if s.reads != nil {
		s.reads.Close()
	}
	if s.listener != nil {
		s.listener.Close()
	}
	// The consumer owns the source client once made (it may replace it,
	// see esdbconn); close it only if it was never handed over.
	if s.source != nil && s.consumer == nil {
		s.source.Close()
	}
}
