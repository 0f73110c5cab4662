package main

import (
	"runtime/debug"
	"testing"
)

// TestGCDefault checks that ditto collects less often than Go's default
// unless GOGC says otherwise.
func TestGCDefault(t *testing.T) {
	prev := debug.SetGCPercent(100)
	defer debug.SetGCPercent(prev)
	defaultGC(func(string) string { return "" })
	if got := debug.SetGCPercent(100); got != gcPercent {
		t.Errorf("without GOGC: GC percent %d, want %d", got, gcPercent)
	}
	defaultGC(func(k string) string {
		if k == "GOGC" {
			return "50" // applied by the runtime itself at start
		}
		return ""
	})
	if got := debug.SetGCPercent(100); got != 100 {
		t.Errorf("with GOGC set: GC percent changed to %d", got)
	}
}
