package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/ditto-replicator/ditto/config"
	"github.com/ditto-replicator/ditto/internal/testutil"
)

// Shared by the tests of the compose files and of deploy/: the DITTO_*
// variables they set must be ones ditto reads, the required ones must be
// there, and together they must make a configuration that loads.

// checkDittoEnv checks the environment env that where (a compose service,
// a Kubernetes container) gives ditto.
func checkDittoEnv(t *testing.T, where string, env map[string]string) {
	t.Helper()
	known := map[string]bool{}
	for _, v := range config.Variables() {
		known[v.Name] = true
	}
	for name := range env {
		if strings.HasPrefix(name, config.Prefix+"_") && !known[name] {
			t.Errorf("%s: %s is not a variable ditto reads (ditto config lists them)", where, name)
		}
	}
	sink := env[config.Prefix+"_SINK"]
	if sink == "" {
		sink = "eventstore"
	}
	for _, v := range config.Variables() {
		// A sink's required variables are required only with that sink.
		if v.Required && (v.Sink == "" || v.Sink == sink) && env[v.Name] == "" {
			t.Errorf("%s: the required %s is missing", where, v.Name)
		}
	}
	if t.Failed() {
		return
	}
	t.Run(where, func(t *testing.T) {
		if _, err := testutil.LoadConfig(t, env, nil); err != nil {
			t.Errorf("%s: ditto would not start: %v", where, err)
		}
	})
}

// dittoDuration is the value of a duration variable in env, or its default.
func dittoDuration(t *testing.T, env map[string]string, name string) time.Duration {
	t.Helper()
	s, ok := env[name]
	if !ok {
		for _, v := range config.Variables() {
			if v.Name == name {
				s = v.Default
			}
		}
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		t.Fatalf("%s=%q: %v", name, s, err)
	}
	return d
}

// readYAML decodes the YAML file path (relative to the repository) into v.
func readYAML(t *testing.T, path string, v any) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repoRoot, path))
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.UnmarshalStrict(b, v); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}

// readmeSection is the text of README.md from the heading "## "+title to
// the next heading of that level.
func readmeSection(t *testing.T, title string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repoRoot, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(b), "\n## "+title+"\n")
	if !ok {
		t.Fatalf("README.md has no section %q", "## "+title)
	}
	if i := strings.Index(rest, "\n## "); i >= 0 {
		rest = rest[:i]
	}
	return rest
}
