package buildinfo

import (
	"strings"
	"testing"
)

func TestStampedVersionWins(t *testing.T) {
	defer func(v string) { version = v }(version)
	version = "v9.8.7"
	if got := Version(); got != "v9.8.7" {
		t.Fatalf("Version() = %q, want the stamped v9.8.7", got)
	}
}

// A test binary has build info but no stamp: the fallback must say something
// rather than print an empty version.
func TestUnstampedVersionFallsBackToBuildInfo(t *testing.T) {
	defer func(v string) { version = v }(version)
	version = ""
	got := Version()
	if got == "" || got == "unknown" {
		t.Fatalf("Version() = %q, want the build info's version", got)
	}
	if strings.TrimSpace(got) != got {
		t.Fatalf("Version() = %q has stray spaces", got)
	}
}
