package main

import (
	"context"
	"os/exec"
	"strings"
	"testing"

	"github.com/EventStore/EventStore-Client-Go/v4/esdb"

	"github.com/ditto-replicator/ditto/internal/esdbtest"
)

// docker/setup.sh is what docker-compose runs against a real node; it uses
// the classic HTTP API, which the test server also serves.
func TestDockerSetupScript(t *testing.T) {
	if _, err := exec.LookPath("curl"); err != nil {
		t.Fatal("curl is needed to run docker/setup.sh; .ci/run installs it")
	}
	srv := esdbtest.Start(t, esdbtest.Options{Insecure: true})
	cmd := exec.Command("sh", "../../docker/setup.sh")
	cmd.Env = []string{"PATH=/usr/bin:/bin:/usr/local/bin", "SOURCE_URL=http://" + srv.Addr(), "SEED_CUSTOMERS=3"}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("setup.sh: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "seeded 3 customer streams") {
		t.Fatalf("unexpected output:\n%s", out)
	}
	c := mustClient(t, srv.ConnectionString())
	info, err := c.GetPersistentSubscriptionInfo(context.Background(), "$ce-customer", "ditto-customer", esdb.GetPersistentSubscriptionOptions{})
	if err != nil {
		t.Fatalf("subscription not created: %v", err)
	}
	if !info.Settings.ResolveLinkTos || info.Settings.ConsumerStrategyName != esdb.ConsumerStrategyPinned {
		t.Fatalf("subscription settings %+v: want resolve links and Pinned", info.Settings)
	}
	if got := len(readAll(t, c, "$ce-customer")); got != 6 {
		t.Fatalf("$ce-customer holds %d events, want 6", got)
	}
}
