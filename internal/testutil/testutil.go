// Package testutil holds helpers shared by tests that run real servers.
package testutil

import (
	"testing"
	"time"
)

// Eventually polls cond every 10ms until it returns true, and fails the test
// with msg if that has not happened within timeout. It stands in for sleeps:
// a test waits exactly as long as the condition takes.
func Eventually(t testing.TB, timeout time.Duration, msg string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		if cond() {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("condition not met within %s: %s", timeout, msg)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
