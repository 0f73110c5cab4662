package main

import (
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/EventStore/EventStore-Client-Go/v4/esdb"
	"sigs.k8s.io/yaml"

	"github.com/ditto-replicator/ditto/internal/testutil"
	"github.com/ditto-replicator/ditto/verify"
)

// The monitoring that ships beside ditto: Prometheus' alert rules
// (docker/prometheus/alerts.yml, unit-tested in alerts_test.yml) and the
// Grafana dashboard (docker/grafana/dashboards/ditto.json).

const (
	alertsFile     = "docker/prometheus/alerts.yml"
	alertTestsFile = "docker/prometheus/alerts_test.yml"
	promConfigFile = "docker/prometheus/prometheus.yml"
	dashboardFile  = "docker/grafana/dashboards/ditto.json"
)

// promtool runs Prometheus' own checker; .ci/setup installs it (Debian
// package prometheus).
func promtool(t *testing.T, args ...string) string {
	t.Helper()
	bin, err := exec.LookPath("promtool")
	if err != nil {
		t.Fatal("promtool is needed to check the alert rules and dashboard queries: bash .ci/setup installs it (apt-get install prometheus)")
	}
	cmd := exec.Command(bin, args...)
	cmd.Dir = repoRoot
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

func TestAlertRulesWithPromtool(t *testing.T) {
	promtool(t, "check", "rules", alertsFile)
	promtool(t, "check", "config", promConfigFile)
	out := promtool(t, "test", "rules", alertTestsFile)
	if !strings.Contains(out, "SUCCESS") {
		t.Fatalf("promtool test rules:\n%s", out)
	}
	// Every alert has a unit test that expects it to fire.
	var rules struct {
		Groups []struct {
			Rules []struct {
				Alert string `json:"alert"`
			} `json:"rules"`
		} `json:"groups"`
	}
	readYAMLLoose(t, alertsFile, &rules)
	tests, err := os.ReadFile(filepath.Join(repoRoot, alertTestsFile))
	if err != nil {
		t.Fatal(err)
	}
	var alerts []string
	for _, g := range rules.Groups {
		for _, r := range g.Rules {
			alerts = append(alerts, r.Alert)
			if !regexp.MustCompile(`alertname: ` + r.Alert + `\s+exp_alerts:\s+- exp_labels`).Match(tests) {
				t.Errorf("%s has no test in %s in which it fires", r.Alert, alertTestsFile)
			}
		}
	}
	for _, want := range []string{"DittoNotReady", "DittoEventsParked", "DittoReplicationDelayHigh", "DittoNoProgress"} {
		if !slices.Contains(alerts, want) {
			t.Errorf("%s has no alert %s", alertsFile, want)
		}
	}
}

// dashboard is the part of a Grafana dashboard that the tests read.
type dashboard struct {
	UID        string  `json:"uid"`
	Title      string  `json:"title"`
	Panels     []panel `json:"panels"`
	Templating struct {
		List []struct {
			Name       string         `json:"name"`
			Datasource map[string]any `json:"datasource"`
			Query      struct {
				Query string `json:"query"`
			} `json:"query"`
		} `json:"list"`
	} `json:"templating"`
}

type panel struct {
	ID         int            `json:"id"`
	Title      string         `json:"title"`
	Type       string         `json:"type"`
	Datasource map[string]any `json:"datasource"`
	Targets    []struct {
		RefID      string         `json:"refId"`
		Expr       string         `json:"expr"`
		Datasource map[string]any `json:"datasource"`
	} `json:"targets"`
}

func readDashboard(t *testing.T) dashboard {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repoRoot, dashboardFile))
	if err != nil {
		t.Fatal(err)
	}
	var d dashboard
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatalf("%s: %v", dashboardFile, err)
	}
	return d
}

// grafanaVariables stand in for Grafana's variables so that promtool can
// parse the panels' queries.
var grafanaVariables = strings.NewReplacer("$__rate_interval", "1m", "$__interval", "1m", "$__range", "1h", "$job", ".*", "$instance", ".*")

// TestDashboard: the dashboard shows what an operator needs, every query
// goes to the provisioned data source, and every query is PromQL that
// Prometheus parses.
func TestDashboard(t *testing.T) {
	d := readDashboard(t)
	uid := grafanaDatasource(t).UID
	if d.UID == "" || len(d.Panels) == 0 {
		t.Fatalf("%s: uid %q, %d panels", dashboardFile, d.UID, len(d.Panels))
	}
	var titles []string
	type rule struct {
		Record string `json:"record"`
		Expr   string `json:"expr"`
	}
	var rules []rule
	ids := map[int]bool{}
	for _, p := range d.Panels {
		titles = append(titles, strings.ToLower(p.Title))
		if ids[p.ID] {
			t.Errorf("panel id %d is used twice", p.ID)
		}
		ids[p.ID] = true
		if p.Datasource["uid"] != uid {
			t.Errorf("panel %q uses data source %v, want the provisioned uid %q", p.Title, p.Datasource, uid)
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, q := range p.Targets {
			if q.Datasource["uid"] != uid {
				t.Errorf("panel %q query %s uses data source %v", p.Title, q.RefID, q.Datasource)
			}
			rules = append(rules, rule{Record: fmt.Sprintf("dashboard:panel%d_%s", p.ID, q.RefID), Expr: grafanaVariables.Replace(q.Expr)})
		}
	}
	for _, v := range d.Templating.List {
		if v.Datasource["uid"] != uid {
			t.Errorf("variable %s uses data source %v", v.Name, v.Datasource)
		}
	}
	for _, want := range []string{"readiness", "throughput", "lag", "in flight", "parked", "retries", "reconnects"} {
		if !slices.ContainsFunc(titles, func(s string) bool { return strings.Contains(s, want) }) {
			t.Errorf("no panel of %s shows %s (titles %v)", dashboardFile, want, titles)
		}
	}
	// promtool parses rule expressions with Prometheus' own parser: the
	// panels' queries, as recording rules.
	b, err := yaml.Marshal(map[string]any{"groups": []any{map[string]any{"name": "dashboard", "rules": rules}}})
	if err != nil {
		t.Fatal(err)
	}
	f := filepath.Join(t.TempDir(), "dashboard-rules.yml")
	if err := os.WriteFile(f, b, 0o644); err != nil {
		t.Fatal(err)
	}
	promtool(t, "check", "rules", f)
}

// metricNames are the ditto_* metric names that PromQL text src names,
// with string literals (label values) left out.
func metricNames(src string) []string {
	src = regexp.MustCompile(`"(\\.|[^"\\])*"|'(\\.|[^'\\])*'`).ReplaceAllString(src, `""`)
	return regexp.MustCompile(`\bditto_[a-zA-Z0-9_:]+`).FindAllString(src, -1)
}

// monitoringQueries are the PromQL texts of each monitoring file: the
// dashboard's queries and variables, the rules' expressions, the series of
// the rules' tests.
func monitoringQueries(t *testing.T) map[string][]string {
	t.Helper()
	out := map[string][]string{}
	d := readDashboard(t)
	for _, p := range d.Panels {
		for _, q := range p.Targets {
			out[dashboardFile] = append(out[dashboardFile], q.Expr)
		}
	}
	for _, v := range d.Templating.List {
		out[dashboardFile] = append(out[dashboardFile], v.Query.Query)
	}
	var rules struct {
		Groups []struct {
			Rules []struct {
				Expr string `json:"expr"`
			} `json:"rules"`
		} `json:"groups"`
	}
	readYAMLLoose(t, alertsFile, &rules)
	for _, g := range rules.Groups {
		for _, r := range g.Rules {
			out[alertsFile] = append(out[alertsFile], r.Expr)
		}
	}
	var tests struct {
		Tests []struct {
			InputSeries []struct {
				Series string `json:"series"`
			} `json:"input_series"`
		} `json:"tests"`
	}
	readYAMLLoose(t, alertTestsFile, &tests)
	for _, tc := range tests.Tests {
		for _, s := range tc.InputSeries {
			out[alertTestsFile] = append(out[alertTestsFile], s.Series)
		}
	}
	for _, f := range []string{dashboardFile, alertsFile, alertTestsFile} {
		if len(out[f]) == 0 {
			t.Fatalf("no queries found in %s", f)
		}
	}
	return out
}

// readYAMLLoose decodes the parts of a YAML file that v declares.
func readYAMLLoose(t *testing.T, path string, v any) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repoRoot, path))
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(b, v); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}

// TestMonitoringNamesOnlyExistingMetrics scrapes a ditto that has replicated
// events (so that every labelled series exists) and checks that every
// metric the dashboard, the alert rules and their tests name is there.
func TestMonitoringNamesOnlyExistingMetrics(t *testing.T) {
	named := map[string][]string{} // metric → files naming it
	for f, exprs := range monitoringQueries(t) {
		for _, expr := range exprs {
			for _, m := range metricNames(expr) {
				if !slices.Contains(named[m], f) {
					named[m] = append(named[m], f)
				}
			}
		}
	}
	for _, want := range []string{"ditto_ready", "ditto_events_processed_total", "ditto_replication_delay_seconds_bucket", "ditto_events_in_flight",
		"ditto_events_parked_total", "ditto_events_retried_total", "ditto_subscription_reconnects_total"} {
		if named[want] == nil {
			t.Errorf("neither the dashboard nor the rules use %s", want)
		}
	}

	e := newEnv(t)
	e.createGroup(t, "$ce-customer", "ditto", esdb.ConsumerStrategyPinned)
	streams := e.seed(t, "customer", 3, 4)
	addr := testutil.FreeAddr(t)
	startProcess(t, baseEnv(e.src.ConnectionString(), e.dst.ConnectionString(), map[string]string{"DITTO_METRICS_ADDRESS": addr}))
	e.waitIdentical(t, verify.Options{Streams: streams})
	var scraped map[string]bool
	testutil.Eventually(t, 30*time.Second, "the written events counted in /metrics", func() bool {
		body := scrape(t, addr)
		scraped = map[string]bool{}
		for _, line := range strings.Split(body, "\n") {
			if line == "" || strings.HasPrefix(line, "#") {
				continue
			}
			scraped[line[:strings.IndexAny(line, "{ ")]] = true
		}
		return strings.Contains(body, `ditto_events_processed_total{app="ditto",group="ditto",stream="$ce-customer"} 12`)
	})
	for _, m := range slices.Sorted(maps.Keys(named)) {
		if !scraped[m] {
			t.Errorf("%v name %s, which ditto's /metrics does not have", named[m], m)
		}
	}
}

func TestMetricNames(t *testing.T) {
	got := metricNames(`sum by (group) (rate(ditto_events_processed_total{group="ditto_x", a='ditto_y\'s'}[5m])) / ditto_batch_size_count`)
	if !slices.Equal(got, []string{"ditto_events_processed_total", "ditto_batch_size_count"}) {
		t.Fatalf("metricNames: %v", got)
	}
}
