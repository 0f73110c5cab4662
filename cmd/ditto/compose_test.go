package main

import (
	"context"
	"maps"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/compose-spec/compose-go/v2/cli"
	"github.com/compose-spec/compose-go/v2/types"

	"github.com/ditto-replicator/ditto/config"
)

// composeFiles are README's Docker quickstart:
// docker compose -f docker-compose.yml -f docker-compose.apps.yml up --build
var composeFiles = []string{"docker-compose.yml", "docker-compose.apps.yml"}

// loadCompose loads both compose files as docker compose does (the compose
// specification's schema, merging, interpolation, $$ escapes), with an
// empty host environment so that defaults apply.
func loadCompose(t *testing.T) *types.Project {
	t.Helper()
	root, err := filepath.Abs(repoRoot)
	if err != nil {
		t.Fatal(err)
	}
	var files []string
	for _, f := range composeFiles {
		files = append(files, filepath.Join(root, f))
	}
	opts, err := cli.NewProjectOptions(files, cli.WithWorkingDirectory(root), cli.WithName("ditto"), cli.WithEnv(nil))
	if err != nil {
		t.Fatal(err)
	}
	p, err := opts.LoadProject(context.Background())
	if err != nil {
		t.Fatalf("loading %v: %v", composeFiles, err)
	}
	return p
}

func envOf(s types.ServiceConfig) map[string]string {
	env := map[string]string{}
	for k, v := range s.Environment {
		if v != nil {
			env[k] = *v
		}
	}
	return env
}

// dittoServices are the services built from the Dockerfile's ditto stage.
func dittoServices(t *testing.T, p *types.Project) map[string]types.ServiceConfig {
	t.Helper()
	out := map[string]types.ServiceConfig{}
	for name, s := range p.Services {
		if s.Build != nil && s.Build.Target == "ditto" {
			out[name] = s
		}
	}
	return out
}

func composeService(t *testing.T, p *types.Project, name string) types.ServiceConfig {
	t.Helper()
	s, err := p.GetService(name)
	if err != nil {
		t.Fatalf("compose: %v", err)
	}
	return s
}

// TestComposeDittoVariables: every DITTO_* variable in the compose files is
// one ditto reads, the required ones are set, and each ditto service's
// settings load.
func TestComposeDittoVariables(t *testing.T) {
	p := loadCompose(t)
	dittos := dittoServices(t, p)
	names := slices.Sorted(maps.Keys(dittos))
	if !slices.Equal(names, []string{"ditto", "ditto-kinesis"}) {
		t.Fatalf("services built as ditto: %v, want ditto and ditto-kinesis", names)
	}
	for name, s := range p.Services {
		env := envOf(s)
		if _, ok := dittos[name]; !ok {
			for k := range env {
				if strings.HasPrefix(k, config.Prefix+"_") {
					t.Errorf("service %s is no ditto but sets %s", name, k)
				}
			}
			continue
		}
		checkDittoEnv(t, "compose service "+name, env)
		if s.StopGracePeriod == nil || time.Duration(*s.StopGracePeriod) <= dittoDuration(t, env, "DITTO_SHUTDOWN_TIMEOUT") {
			t.Errorf("service %s: stop_grace_period %v must exceed DITTO_SHUTDOWN_TIMEOUT (%s), or Docker kills in-flight writes",
				name, s.StopGracePeriod, dittoDuration(t, env, "DITTO_SHUTDOWN_TIMEOUT"))
		}
		if !slices.ContainsFunc(s.Ports, func(pc types.ServicePortConfig) bool { return pc.Target == portNumber(t, metricsPort(t)) }) {
			t.Errorf("service %s does not publish the metrics port %s", name, metricsPort(t))
		}
	}
}

func portNumber(t *testing.T, s string) uint32 {
	t.Helper()
	var n uint32
	for _, c := range s {
		if c < '0' || c > '9' {
			t.Fatalf("port %q", s)
		}
		n = n*10 + uint32(c-'0')
	}
	return n
}

// TestComposeBuildsAndPaths: services build stages that the Dockerfile has,
// and every file a service mounts exists.
func TestComposeBuildsAndPaths(t *testing.T) {
	p := loadCompose(t)
	d := parseDockerfile(t)
	root, _ := filepath.Abs(repoRoot)
	for name, s := range p.Services {
		if s.Build != nil {
			if s.Build.Context != root || (s.Build.Dockerfile != "" && s.Build.Dockerfile != "Dockerfile") {
				t.Errorf("service %s builds %s in %s, want the repository's Dockerfile", name, s.Build.Dockerfile, s.Build.Context)
			}
			d.stage(t, s.Build.Target)
			for arg := range s.Build.Args {
				if !slices.ContainsFunc(d.needs(t, s.Build.Target), func(st *stage) bool {
					return slices.ContainsFunc(st.all("ARG"), func(a string) bool { return strings.Split(a, "=")[0] == arg })
				}) {
					t.Errorf("service %s passes the build argument %s, which the %s stage does not declare", name, arg, s.Build.Target)
				}
			}
		}
		for _, v := range s.Volumes {
			if v.Type != types.VolumeTypeBind {
				continue
			}
			if _, err := os.Stat(v.Source); err != nil {
				t.Errorf("service %s mounts %s, which does not exist: %v", name, v.Source, err)
			}
		}
	}
	// The setup container runs docker/setup.sh from its mount.
	setup := composeService(t, p, "setup")
	if got := []string(setup.Entrypoint); len(got) != 2 || hostPath(t, setup, got[1]) != filepath.Join(root, "docker", "setup.sh") {
		t.Errorf("setup runs %v, want docker/setup.sh through its mount", got)
	}
}

// hostPath maps a path inside service s's container to the host through its
// bind mounts.
func hostPath(t *testing.T, s types.ServiceConfig, inContainer string) string {
	t.Helper()
	for _, v := range s.Volumes {
		if v.Type != types.VolumeTypeBind {
			continue
		}
		if rest, ok := strings.CutPrefix(inContainer, v.Target); ok && (rest == "" || strings.HasPrefix(rest, "/")) {
			return filepath.Join(v.Source, rest)
		}
	}
	t.Fatalf("service %s mounts nothing at %s", s.Name, inContainer)
	return ""
}

// hostPort splits a URL's or address's host and port and fails unless the
// host is a service of p that publishes or exposes that port in its network.
func checkServiceAddr(t *testing.T, p *types.Project, where, addr string) string {
	t.Helper()
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		t.Errorf("%s: %q: %v", where, addr, err)
		return ""
	}
	if _, err := p.GetService(host); err != nil {
		t.Errorf("%s names %s, which is no service", where, host)
	}
	return port
}

// TestComposeWiring follows the names that tie the services together: the
// groups setup creates, the Kinesis stream, the hosts in connection strings
// and endpoints, Prometheus' targets and Grafana's provisioning.
func TestComposeWiring(t *testing.T) {
	p := loadCompose(t)
	setup := envOf(composeService(t, p, "setup"))
	groups := strings.Fields(setup["SUBSCRIPTION_GROUPS"])
	for name, s := range dittoServices(t, p) {
		env := envOf(s)
		subs, err := config.ParseSubscriptions(env["DITTO_SUBSCRIPTIONS"])
		if err != nil {
			t.Fatalf("service %s: %v", name, err)
		}
		for _, sub := range subs {
			if sub.Stream != "$ce-customer" || !slices.Contains(groups, sub.Group) {
				t.Errorf("service %s reads %s, which setup does not create (it creates $ce-customer groups %v)", name, sub, groups)
			}
		}
		for _, v := range config.Variables() {
			if !strings.HasSuffix(v.Name, "_CONNECTION_STRING") || env[v.Name] == "" {
				continue
			}
			u, err := url.Parse(env[v.Name])
			if err != nil {
				t.Fatalf("service %s: %s: %v", name, v.Name, err)
			}
			checkServiceAddr(t, p, "service "+name+" "+v.Name, u.Host)
		}
		if env["DITTO_SINK"] == "kinesis" {
			if env["DITTO_KINESIS_STREAM_NAME"] != setup["KINESIS_STREAM"] {
				t.Errorf("service %s writes to the stream %q, setup creates %q", name, env["DITTO_KINESIS_STREAM_NAME"], setup["KINESIS_STREAM"])
			}
			if env["AWS_ENDPOINT_URL_KINESIS"] != setup["KINESIS_URL"] || env["AWS_REGION"] != setup["AWS_REGION"] {
				t.Errorf("service %s uses Kinesis at %s in %s, setup creates the stream at %s in %s", name,
					env["AWS_ENDPOINT_URL_KINESIS"], env["AWS_REGION"], setup["KINESIS_URL"], setup["AWS_REGION"])
			}
			for _, k := range []string{"AWS_REGION", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} {
				if env[k] == "" {
					t.Errorf("service %s: %s is not set; the AWS SDK needs it", name, k)
				}
			}
		}
	}
	for _, k := range []string{"SOURCE_URL", "KINESIS_URL"} {
		u, err := url.Parse(setup[k])
		if err != nil {
			t.Fatal(err)
		}
		checkServiceAddr(t, p, "setup "+k, u.Host)
	}

	// Prometheus scrapes every ditto service on its metrics port, and its
	// rule files are beside its configuration in the mount.
	prom := composeService(t, p, "prometheus")
	if !slices.Contains([]string(prom.Command), "--config.file=/etc/prometheus/prometheus.yml") ||
		hostPath(t, prom, "/etc/prometheus/prometheus.yml") != mustAbs(t, "docker/prometheus/prometheus.yml") {
		t.Errorf("prometheus runs %v with mounts %v, want docker/prometheus/prometheus.yml", prom.Command, prom.Volumes)
	}
	var promConf struct {
		Global        map[string]string `json:"global"`
		RuleFiles     []string          `json:"rule_files"`
		ScrapeConfigs []struct {
			JobName       string `json:"job_name"`
			StaticConfigs []struct {
				Targets []string `json:"targets"`
			} `json:"static_configs"`
		} `json:"scrape_configs"`
	}
	readYAML(t, "docker/prometheus/prometheus.yml", &promConf)
	var targets []string
	for _, sc := range promConf.ScrapeConfigs {
		if sc.JobName != "ditto" {
			t.Errorf("prometheus.yml: job %q: the alert rules expect job=\"ditto\"", sc.JobName)
		}
		for _, st := range sc.StaticConfigs {
			for _, target := range st.Targets {
				if port := checkServiceAddr(t, p, "prometheus.yml target", target); port != metricsPort(t) {
					t.Errorf("prometheus.yml scrapes %s, not ditto's metrics port %s", target, metricsPort(t))
				}
				targets = append(targets, strings.Split(target, ":")[0])
			}
		}
	}
	for name := range dittoServices(t, p) {
		if !slices.Contains(targets, name) {
			t.Errorf("prometheus.yml does not scrape service %s", name)
		}
	}
	for _, f := range promConf.RuleFiles {
		if _, err := os.Stat(filepath.Join(repoRoot, "docker/prometheus", f)); err != nil {
			t.Errorf("prometheus.yml loads rules %s: %v", f, err)
		}
	}

	// Grafana: the dashboards provider reads the mounted dashboards, the
	// home dashboard is one of them, the data source is the prometheus
	// service.
	graf := composeService(t, p, "grafana")
	var provider struct {
		APIVersion int `json:"apiVersion"`
		Providers  []struct {
			Name, Folder, Type string
			AllowUIUpdates     bool `json:"allowUiUpdates"`
			Options            struct {
				Path                      string `json:"path"`
				FoldersFromFilesStructure bool   `json:"foldersFromFilesStructure"`
			} `json:"options"`
		} `json:"providers"`
	}
	provDir := hostPath(t, graf, "/etc/grafana/provisioning")
	readYAML(t, rel(t, filepath.Join(provDir, "dashboards", "ditto.yml")), &provider)
	if len(provider.Providers) != 1 || hostPath(t, graf, provider.Providers[0].Options.Path) != mustAbs(t, "docker/grafana/dashboards") {
		t.Errorf("the dashboards provider reads %+v, want the mount of docker/grafana/dashboards", provider.Providers)
	}
	home := envOf(graf)["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
	if _, err := os.Stat(hostPath(t, graf, home)); err != nil {
		t.Errorf("grafana's home dashboard %s: %v", home, err)
	}
	ds := grafanaDatasource(t)
	u, err := url.Parse(ds.URL)
	if err != nil {
		t.Fatal(err)
	}
	if port := checkServiceAddr(t, p, "grafana data source", u.Host); !slices.ContainsFunc(prom.Ports, func(pc types.ServicePortConfig) bool {
		return pc.Target == portNumber(t, port)
	}) {
		t.Errorf("grafana's data source %s is not prometheus' port", ds.URL)
	}
}

// grafanaDatasource is the one provisioned Prometheus data source.
type datasource struct {
	Name, UID, Type, Access, URL string
	IsDefault                    bool              `json:"isDefault"`
	JSONData                     map[string]string `json:"jsonData"`
}

func grafanaDatasource(t *testing.T) datasource {
	t.Helper()
	var conf struct {
		APIVersion  int          `json:"apiVersion"`
		Datasources []datasource `json:"datasources"`
	}
	readYAML(t, "docker/grafana/provisioning/datasources/prometheus.yml", &conf)
	if len(conf.Datasources) != 1 || conf.Datasources[0].Type != "prometheus" || conf.Datasources[0].UID == "" {
		t.Fatalf("provisioned data sources %+v, want one prometheus data source with a uid", conf.Datasources)
	}
	return conf.Datasources[0]
}

func mustAbs(t *testing.T, path string) string {
	t.Helper()
	abs, err := filepath.Abs(filepath.Join(repoRoot, path))
	if err != nil {
		t.Fatal(err)
	}
	return abs
}

// rel is path relative to the repository.
func rel(t *testing.T, path string) string {
	t.Helper()
	r, err := filepath.Rel(mustAbs(t, "."), path)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// TestReadmeDockerQuickstart: README's Docker section gives the command
// these files are written for, and every localhost port it names is one a
// service publishes.
func TestReadmeDockerQuickstart(t *testing.T) {
	p := loadCompose(t)
	doc := readmeSection(t, "Docker")
	if !strings.Contains(doc, "docker compose -f "+strings.Join(composeFiles, " -f ")+" up --build") {
		t.Errorf("README's Docker section lacks the quickstart command for %v", composeFiles)
	}
	published := map[string]bool{}
	for _, s := range p.Services {
		for _, pc := range s.Ports {
			published[pc.Published] = true
		}
	}
	rest := doc
	found := 0
	for {
		_, after, ok := strings.Cut(rest, "localhost:")
		if !ok {
			break
		}
		port := after[:strings.IndexFunc(after, func(r rune) bool { return r < '0' || r > '9' })]
		if !published[port] {
			t.Errorf("README's Docker section names localhost:%s, which no service publishes", port)
		}
		found++
		rest = after
	}
	if found == 0 {
		t.Error("README's Docker section names no localhost port")
	}
}
