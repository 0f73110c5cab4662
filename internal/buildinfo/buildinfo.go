// Package buildinfo says which build of ditto is running: the version the
// build stamped in, or else what the Go toolchain recorded.
package buildinfo

import (
	"runtime/debug"
)

// version is stamped in at build time:
//
//	go build -ldflags "-X github.com/ditto-replicator/ditto/internal/buildinfo.version=v1.2.3" ./cmd/ditto
//
// The Dockerfile does this with its VERSION build argument.
var version string

// Version is the stamped version; without one, the main module's version
// from the build info (a tag or pseudo-version for go install, "(devel)" for
// a build in a work tree), with the VCS revision when the toolchain recorded
// it; "unknown" when there is no build info at all.
func Version() string {
	if version != "" {
		return version
	}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}
	v := bi.Main.Version
	if v == "" {
		v = "(devel)"
	}
	if v == "(devel)" {
		var rev, dirty string
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				rev = s.Value
			case "vcs.modified":
				if s.Value == "true" {
					dirty = "-dirty"
				}
			}
		}
		if len(rev) > 12 {
			rev = rev[:12]
		}
		if rev != "" {
			v += " " + rev + dirty
		}
	}
	return v
}
