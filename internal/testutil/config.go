package testutil

import (
	"os"
	"testing"

	"github.com/ditto-replicator/ditto/config"
)

// LoadConfig loads ditto's configuration as config.Load does, with no DITTO_*
// variable set but base and vars (vars over base; "" leaves one unset), and
// every one restored after the test.
func LoadConfig(t testing.TB, base, vars map[string]string) (*config.Config, error) {
	t.Helper()
	for _, v := range config.Variables() {
		t.Setenv(v.Name, "")
		os.Unsetenv(v.Name)
	}
	env := map[string]string{}
	for k, v := range base {
		env[k] = v
	}
	for k, v := range vars {
		env[k] = v
	}
	for k, v := range env {
		if v != "" {
			t.Setenv(k, v)
		}
	}
	return config.Load()
}
