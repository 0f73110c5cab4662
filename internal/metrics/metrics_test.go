package metrics

import (
	"runtime"
	"testing"

	dto "github.com/prometheus/client_model/go"

	"github.com/ditto-replicator/ditto/internal/buildinfo"
)

// gather returns the series of the family name.
func gather(t *testing.T, m *Metrics, name string) []*dto.Metric {
	t.Helper()
	mfs, err := m.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			return mf.GetMetric()
		}
	}
	t.Fatalf("%s is not registered", name)
	return nil
}

func TestBuildInfoNamesTheRunningBuild(t *testing.T) {
	series := gather(t, New(), "ditto_build_info")
	if len(series) != 1 || series[0].GetGauge().GetValue() != 1 {
		t.Fatalf("ditto_build_info = %v, want one series of value 1", series)
	}
	labels := map[string]string{}
	for _, l := range series[0].GetLabel() {
		labels[l.GetName()] = l.GetValue()
	}
	if labels["version"] != buildinfo.Version() || labels["goversion"] != runtime.Version() {
		t.Fatalf("labels %v, want version %q and goversion %q", labels, buildinfo.Version(), runtime.Version())
	}
}

func TestReadyFollowsTheCheckAtEachScrape(t *testing.T) {
	m := New()
	ready := false
	m.ObserveReady(func() bool { return ready })
	for _, want := range []float64{0, 1, 0} {
		series := gather(t, m, "ditto_ready")
		if len(series) != 1 {
			t.Fatalf("ditto_ready has %d series", len(series))
		}
		if got := series[0].GetGauge().GetValue(); got != want {
			t.Fatalf("ditto_ready = %v, want %v (ready=%v)", got, want, ready)
		}
		ready = !ready
	}
}
