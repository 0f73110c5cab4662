package main

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/EventStore/EventStore-Client-Go/v4/esdb"

	"github.com/ditto-replicator/ditto/internal/metrics"
	"github.com/ditto-replicator/ditto/internal/recovery"
	"github.com/ditto-replicator/ditto/internal/testutil"
	"github.com/ditto-replicator/ditto/verify"
)

// TestRecoveryPoint: a ditto throttled to one write an hour copies one of
// 100 single-event streams, so 99 events are known not to be on the
// destination. The running ditto's gauges and `ditto status` both say so,
// with the oldest of them; once an unthrottled ditto has copied everything,
// the gauge says 0.
func TestRecoveryPoint(t *testing.T) {
	e := newEnv(t)
	e.createGroup(t, "$ce-customer", "ditto", esdb.ConsumerStrategyPinned)
	seeded := time.Now()
	streams := e.seed(t, "customer", 100, 1)
	settings := map[string]string{
		"DITTO_REPLICATION_THROTTLE_INTERVAL": "1h",
		"DITTO_RECOVERY_POINT_INTERVAL":       "1s",
		"DITTO_SHUTDOWN_TIMEOUT":              "1s",
	}
	r := startDitto(t, e, settings)
	events := func() float64 {
		return gaugeValue(r.svc.metrics.RecoveryPointEvents.WithLabelValues(metrics.App, "$ce-customer", "ditto"))
	}
	seconds := func() float64 {
		return gaugeValue(r.svc.metrics.RecoveryPointSeconds.WithLabelValues(metrics.App, "$ce-customer", "ditto"))
	}
	exact := func() float64 {
		return gaugeValue(r.svc.metrics.RecoveryPointExact.WithLabelValues(metrics.App, "$ce-customer", "ditto"))
	}
	testutil.Eventually(t, 30*time.Second, "the gauge at 99 events, exact", func() bool {
		return events() == 99 && exact() == 1 && seconds() > 0
	})
	if s := seconds(); s > time.Since(seeded).Seconds() {
		t.Fatalf("oldest event not copied is %.3fs old, older than the seeding %.3fs ago", s, time.Since(seeded).Seconds())
	}

	// The oldest source event not on the destination.
	var oldest time.Time
	copied := 0
	for _, s := range streams {
		if lastNumber(e.dstC, s) >= 0 {
			copied++
			continue
		}
		ev := readAll(t, e.srcC, s)[0]
		if oldest.IsZero() || ev.CreatedDate.Before(oldest) {
			oldest = ev.CreatedDate
		}
	}
	if copied != 1 {
		t.Fatalf("%d streams copied, want 1 (one write)", copied)
	}
	var out, errOut bytes.Buffer
	if code := run([]string{"status", "--json"}, &out, &errOut); code != 0 {
		t.Fatalf("ditto status: exit %d: %s", code, errOut.String())
	}
	var points []recovery.Point
	if err := json.Unmarshal(out.Bytes(), &points); err != nil {
		t.Fatalf("%v:\n%s", err, out.String())
	}
	if len(points) != 1 || points[0].Events != 99 || !points[0].Exact || !points[0].Oldest.Equal(oldest) || points[0].SourceLast != 99 {
		t.Fatalf("ditto status --json: %+v; want 99 events, the oldest created %s", points, oldest)
	}
	out.Reset()
	if code := run([]string{"status"}, &out, &errOut); code != 0 || !strings.Contains(out.String(), "$ce-customer::ditto  99 ") {
		t.Fatalf("ditto status: exit %d:\n%s", code, out.String())
	}

	r.stop(t)
	delete(settings, "DITTO_REPLICATION_THROTTLE_INTERVAL")
	r = startDitto(t, e, settings)
	e.waitIdentical(t, verify.Options{Streams: streams})
	testutil.Eventually(t, 30*time.Second, "the gauge at 0", func() bool { return events() == 0 && seconds() == 0 && exact() == 1 })
}

func testStatusMissingGroup(t *testing.T) {
	e := newEnv(t)
	p := startProcess(t, baseEnv(e.src.ConnectionString(), e.dst.ConnectionString(), nil), "status")
	if code := p.exitCode(t); code != 1 || !strings.Contains(p.output.String(), "reading the group $ce-customer::ditto on the source") {
		t.Fatalf("exit %d:\n%s", code, p.output)
	}
}
