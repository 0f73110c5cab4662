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
	"github.com/ditto-replicator/ditto/internal/metrics"
	"github.com/ditto-replicator/ditto/replicator"
	"github.com/ditto-replicator/ditto/sinks/eventstore"
	"github.com/ditto-replicator/ditto/sinks/stdout"
)

// service is one running ditto: consumer → replicator → sink, plus the HTTP
// endpoints for metrics and health.
type service struct {
	cfg     *config.Config
	log     zerolog.Logger
	metrics *metrics.Metrics
	stdout  io.Writer

	source, destination *esdb.Client
	consumer            *consumer.Consumer
	sink                replicator.Sink
	sinkReady           atomic.Bool
	readyProbe          func(context.Context) error

	// Processed counts events written and acked; the demo shows progress
	// with it.
	listener net.Listener
}

// newClient connects a client; the connection string is checked by config.
// The client's own log lines go to log at debug level.
func newClient(cs string, log zerolog.Logger) (*esdb.Client, error) {
	conf, err := esdb.ParseConnectionString(cs)
	if err != nil {
		return nil, fmt.Errorf("parsing connection string %s: %w", config.Redact(cs), err)
	}
	conf.Logger = func(level esdb.LogLevel, format string, args ...any) {
		log.Debug().Str("component", "esdb-client").Str("clientLevel", level).Msgf(format, args...)
	}
	return esdb.NewClient(conf)
}

func newService(cfg *config.Config, log zerolog.Logger, out io.Writer) (*service, error) {
	s := &service{cfg: cfg, log: log, metrics: metrics.New(), stdout: out}
	var err error
	if s.source, err = newClient(cfg.SourceConnectionString, log); err != nil {
		return nil, fmt.Errorf("DITTO_SOURCE_CONNECTION_STRING: %w", err)
	}
	switch {
	case cfg.ReadOnly:
		s.sinkReady.Store(true)
	case cfg.Sink == "stdout":
		s.sink = stdout.New(out)
		s.sinkReady.Store(true)
	default:
		if s.destination, err = newClient(cfg.DestinationConnectionString, log); err != nil {
			s.source.Close()
			return nil, fmt.Errorf("DITTO_DESTINATION_CONNECTION_STRING: %w", err)
		}
		io := s.metrics.IODuration
		var batchConf *esdb.Configuration
		if cfg.BatchAppend {
			// Parsed again: the client keeps its own copy.
			if batchConf, err = esdb.ParseConnectionString(cfg.DestinationConnectionString); err != nil {
				s.close()
				return nil, fmt.Errorf("DITTO_DESTINATION_CONNECTION_STRING: %w", err)
			}
		}
		es := eventstore.New(s.destination, eventstore.Options{
			Config:           batchConf,
			SkipVersionCheck: cfg.SkipVersionCheck,
			TimeToLive:       cfg.TimeToLive,
			Observe: func(op string, d time.Duration) {
				io.WithLabelValues(metrics.App, "eventstore", "destination", op).Observe(d.Seconds())
			},
			Dial: func() (*esdb.Client, error) { return newClient(cfg.DestinationConnectionString, log) },
		})
		s.sink = es
		s.readyProbe = es.Ready
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
	return s, nil
}

// ready is /health/ready: every subscription connected and the sink reachable.
func (s *service) ready() error {
	var errs []error
	if !s.consumer.Ready() {
		errs = append(errs, errors.New("not every subscription is connected"))
	}
	if !s.sinkReady.Load() {
		errs = append(errs, errors.New("destination not reachable"))
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
	if s.readyProbe != nil {
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

	rep := replicator.New(s.sink, s.metrics, replicator.Options{
		Writers:        s.cfg.Writers,
		BatchMaxEvents: s.cfg.BatchMaxEvents,
		BatchMaxBytes:  s.cfg.BatchMaxBytes,
		ReadOnly:       s.cfg.ReadOnly,
		Throttle:       s.cfg.ReplicationThrottleInterval,
		WriteRetries:   s.cfg.WriteRetries,
		BackoffMax:     s.cfg.RetryBackoffMax,
		DrainTimeout:   s.cfg.ShutdownTimeout,
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
	s.log.Info().Str("subscriptions", s.cfg.Subscriptions).Str("sink", s.cfg.Sink).Int("bufferSize", s.cfg.BufferSize).
		Bool("readOnly", s.cfg.ReadOnly).Bool("skipVersionCheck", s.cfg.SkipVersionCheck).Msg("ditto started")
	rep.Run(stop, deliveries)
	err := <-consumed
	if err != nil {
		s.log.Error().Err(err).Msg("ditto stopped")
		return err
	}
	s.log.Info().Msg("ditto stopped")
	return nil
}

// probe refreshes the sink's readiness every few seconds.
//
// A destination that rejects the credentials stops the service: retrying
// cannot fix it, and every event would otherwise be retried until the
// source parks it.
func (s *service) probe(ctx context.Context, fatal context.CancelCauseFunc) {
	t := time.NewTicker(5 * time.Second)
	defer t.Stop()
	for {
		pctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		err := s.readyProbe(pctx)
		cancel()
		if ctx.Err() != nil {
			return
		}
		if hasCode(err, esdb.ErrorCodeUnauthenticated) {
			fatal(fmt.Errorf("DITTO_DESTINATION_CONNECTION_STRING: the destination rejected the credentials: %w", err))
			return
		}
		if s.sinkReady.Swap(err == nil) != (err == nil) && err != nil {
			s.log.Warn().Err(err).Msg("destination not reachable")
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (s *service) close() {
	if s.consumer != nil {
		s.consumer.Close()
	}
	if s.sink != nil {
		s.sink.Close()
	}
	if s.listener != nil {
		s.listener.Close()
	}
	// The consumer and the sink own their clients once made (they may have
	// replaced them, see esdbconn); close only those never handed over.
	if s.destination != nil && s.sink == nil {
		s.destination.Close()
	}
	if s.source != nil && s.consumer == nil {
		s.source.Close()
	}
}

func hasCode(err error, code esdb.ErrorCode) bool {
	var e *esdb.Error
	return errors.As(err, &e) && e.Code() == code
}
