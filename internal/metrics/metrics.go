// Package metrics declares ditto's Prometheus metrics. Names and the labels
// app, stream and group follow benfoster/ditto, so its dashboards keep
// working; stream is always the subscription's stream (e.g. $ce-customer),
// never an original stream id, so label sets stay bounded.
package metrics

import (
	"github.com/prometheus/client_golang/prometheus"
	"runtime"

	"github.com/ditto-replicator/ditto/internal/buildinfo"
)

// App is the value of the app label.
const App = "ditto"

var subLabels = []string{"app", "stream", "group"}

// Metrics holds every metric of one ditto process.
type Metrics struct {
	Registry *prometheus.Registry

	Received         *prometheus.CounterVec
	Unresolved       *prometheus.CounterVec
	Skipped          *prometheus.CounterVec
	Processed        *prometheus.CounterVec
	Failed           *prometheus.CounterVec
	Parked           *prometheus.CounterVec
	Retried          *prometheus.CounterVec
	CurrentEvent     *prometheus.GaugeVec
	ReplicationDelay *prometheus.HistogramVec
	Connected        *prometheus.GaugeVec
	Reconnects       *prometheus.CounterVec
	IODuration       *prometheus.HistogramVec
	BatchSize        prometheus.Histogram
	InFlight         prometheus.Gauge

	// The recovery point per subscription group (package recovery).
	RecoveryPointEvents  *prometheus.GaugeVec
	RecoveryPointSeconds *prometheus.GaugeVec
	RecoveryPointExact   *prometheus.GaugeVec
	Filtered             *prometheus.CounterVec // labels app, stream, group, reason
	Conflicts            *prometheus.CounterVec // labels app, stream, group, policy
}

// FilterReasons are the values of ditto_events_filtered_total's reason label
// (package policy's reasons).
var FilterReasons = []string{"stream", "system_event_type", "event_type", "metadata", "origin"}

// ConflictPolicies are the values of ditto_events_conflicts_total's policy
// label (package conflict's policies).
var ConflictPolicies = []string{"park", "conflict-stream", "skip"}

// New creates the metrics on a fresh registry (with the Go and process
// collectors), so tests and several instances never collide.
func New() *Metrics {
	r := prometheus.NewRegistry()
	r.MustRegister(prometheus.NewGoCollector(), prometheus.NewProcessCollector(prometheus.ProcessCollectorOpts{}))
	counter := func(name, help string) *prometheus.CounterVec {
		c := prometheus.NewCounterVec(prometheus.CounterOpts{Name: name, Help: help}, subLabels)
		r.MustRegister(c)
		return c
	}
	m := &Metrics{
		Registry:   r,
		Received:   counter("ditto_events_received_total", "Events received from the source subscription."),
		Unresolved: counter("ditto_events_unresolved_total", "Links whose event could not be resolved (deleted source streams); skipped."),
		Skipped:    counter("ditto_events_skipped_total", "Events acked without being written (read-only mode)."),
		Processed:  counter("ditto_events_processed_total", "Events durably written to the destination and acked."),
		Failed:     counter("ditto_events_failed_total", "Events whose write failed and that were handed back (nack retry) or parked."),
		Parked:     counter("ditto_events_parked_total", "Events parked on the source with a reason (permanent failure or conflict)."),
		Retried:    counter("ditto_events_retried_total", "Write attempts repeated after a transient failure or a destination that was behind."),
		Reconnects: counter("ditto_subscription_reconnects_total", "Times a subscription connection was (re)established after a drop or failure."),
		CurrentEvent: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "ditto_current_event",
			Help: "The subscription-stream event number (e.g. in $ce-customer) most recently written."}, subLabels),
		ReplicationDelay: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "ditto_replication_delay_seconds",
			Help:    "Time from the event's creation on the source to its write on the destination.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2.5, 16)}, subLabels),
		Connected: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "ditto_subscription_connected",
			Help: "Connected consumer connections per subscription group."}, subLabels),
		IODuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "ditto_io_duration_seconds",
			Help:    "Duration of calls to the destination.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2.5, 14)}, []string{"app", "system", "target", "operation"}),
		BatchSize: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "ditto_batch_size",
			Help: "Events per write.", Buckets: prometheus.ExponentialBuckets(1, 2, 12)}),
		InFlight: prometheus.NewGauge(prometheus.GaugeOpts{Name: "ditto_events_in_flight",
			Help: "Events received and not yet acked or nacked."}),
	}
	gauge := func(name, help string) *prometheus.GaugeVec {
		g := prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: name, Help: help}, subLabels)
		r.MustRegister(g)
		return g
	}
	m.RecoveryPointEvents = gauge("ditto_recovery_point_events",
		"Events of the subscription's stream on the source after the group's checkpoint that are not on the destination yet: what a failover would lose now.")
	m.RecoveryPointSeconds = gauge("ditto_recovery_point_seconds",
		"Age of the oldest event counted in ditto_recovery_point_events (0 when there is none).")
	m.RecoveryPointExact = gauge("ditto_recovery_point_exact",
		"1 when the destination said what it holds; 0 when every event after the checkpoint was counted (an upper bound).")
	m.Filtered = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ditto_events_filtered_total",
		Help: "Events the selective-replication policy dropped (acked, never written), by reason."}, append(subLabels[:3:3], "reason"))
	m.Conflicts = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ditto_events_conflicts_total",
		Help: "Events of destination streams that diverged, by the DITTO_CONFLICT_POLICY applied to them (parked, recorded in the conflicts stream, or skipped)."}, append(subLabels[:3:3], "policy"))
	r.MustRegister(m.CurrentEvent, m.ReplicationDelay, m.Connected, m.IODuration, m.BatchSize, m.InFlight, m.Filtered, m.Conflicts)
	// Constant 1; the labels say which build runs, so a dashboard can show
	// the versions of a fleet and an upgrade can be followed.
	build := prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "ditto_build_info",
		Help: "Always 1; labels name the running build's version and Go release."}, []string{"version", "goversion"})
	build.WithLabelValues(buildinfo.Version(), runtime.Version()).Set(1)
	r.MustRegister(build)
	return m
}

// ObserveReady exports ready as ditto_ready (1 or 0), evaluated at every
// scrape, so alerts see exactly what /health/ready answers. Call it once.
func (m *Metrics) ObserveReady(ready func() bool) {
	m.Registry.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "ditto_ready",
		Help: "1 when /health/ready answers 200 (every subscription connected, the sink reachable), else 0."},
		func() float64 {
			if ready() {
				return 1
			}
			return 0
		}))
}

// Sub is the set of metrics of one subscription group, with labels bound
// once, so the per-event path does no label lookups.
type Sub struct {
	Received, Unresolved, Skipped, Processed, Failed, Parked, Retried, Reconnects prometheus.Counter
	CurrentEvent, Connected                                                       prometheus.Gauge
	ReplicationDelay                                                              prometheus.Observer
	// Filtered has a counter per FilterReasons value.
	Filtered map[string]prometheus.Counter
	// Conflicts has a counter per ConflictPolicies value.
	Conflicts map[string]prometheus.Counter
}

// ForSubscription binds the metrics of subscription stream:group.
func (m *Metrics) ForSubscription(stream, group string) *Sub {
	l := prometheus.Labels{"app": App, "stream": stream, "group": group}
	filtered := make(map[string]prometheus.Counter, len(FilterReasons))
	for _, reason := range FilterReasons {
		filtered[reason] = m.Filtered.WithLabelValues(App, stream, group, reason)
	}
	conflicts := make(map[string]prometheus.Counter, len(ConflictPolicies))
	for _, p := range ConflictPolicies {
		conflicts[p] = m.Conflicts.WithLabelValues(App, stream, group, p)
	}
	return &Sub{
		Filtered: filtered, Conflicts: conflicts,
		Received: m.Received.With(l), Unresolved: m.Unresolved.With(l), Skipped: m.Skipped.With(l),
		Processed: m.Processed.With(l), Failed: m.Failed.With(l), Parked: m.Parked.With(l),
		Retried: m.Retried.With(l), Reconnects: m.Reconnects.With(l),
		CurrentEvent: m.CurrentEvent.With(l), Connected: m.Connected.With(l),
		ReplicationDelay: m.ReplicationDelay.With(l),
	}
}
