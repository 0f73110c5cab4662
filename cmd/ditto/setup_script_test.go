package main

import (
	"context"
	"os/exec"
	"strings"
	"testing"

	"github.com/EventStore/EventStore-Client-Go/v4/esdb"

	"github.com/ditto-replicator/ditto/internal/esdbtest"
	"github.com/ditto-replicator/ditto/internal/kinesalite"
)

// docker/setup.sh is what docker-compose runs against a real node and
// kinesalite; it uses the classic HTTP API, which the test server also
// serves, and Kinesis's JSON API.
func TestDockerSetupScript(t *testing.T) {
	if _, err := exec.LookPath("curl"); err != nil {
		t.Fatal("curl is needed to run docker/setup.sh; .ci/setup installs it")
	}
	srv := esdbtest.Start(t, esdbtest.Options{Insecure: true})
	kinesis := kinesalite.Start(t).Endpoint()
	setup := func() string {
		t.Helper()
		cmd := exec.Command("sh", "../../docker/setup.sh")
		cmd.Env = []string{"PATH=/usr/bin:/bin:/usr/local/bin", "SOURCE_URL=http://" + srv.Addr(), "SEED_CUSTOMERS=3",
			"SUBSCRIPTION_GROUPS=ditto-customer ditto-kinesis", "KINESIS_URL=" + kinesis, "KINESIS_STREAM=customers"}
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("setup.sh: %v\n%s", err, out)
		}
		return string(out)
	}
	out := setup()
	for _, want := range []string{"seeded 3 customer streams", "Kinesis stream customers active (2 shards)"} {
		if !strings.Contains(out, want) {
			t.Fatalf("setup.sh printed no %q:\n%s", want, out)
		}
	}
	c := mustClient(t, srv.ConnectionString())
	for _, group := range []string{"ditto-customer", "ditto-kinesis"} {
		info, err := c.GetPersistentSubscriptionInfo(context.Background(), "$ce-customer", group, esdb.GetPersistentSubscriptionOptions{})
		if err != nil {
			t.Fatalf("subscription %s not created: %v", group, err)
		}
		if !info.Settings.ResolveLinkTos || info.Settings.ConsumerStrategyName != esdb.ConsumerStrategyPinned {
			t.Fatalf("subscription %s settings %+v: want resolve links and Pinned", group, info.Settings)
		}
	}
	if got := len(readAll(t, c, "$ce-customer")); got != 6 {
		t.Fatalf("$ce-customer holds %d events, want 6", got)
	}
	// Run again, as `docker compose up` does after a restart: the groups
	// and the stream exist already, which is no failure.
	out = setup()
	if !strings.Contains(out, "ditto-kinesis ready (409)") || !strings.Contains(out, "Kinesis stream customers active") {
		t.Fatalf("second run:\n%s", out)
	}
	if got := len(readAll(t, c, "$ce-customer")); got != 12 {
		t.Fatalf("$ce-customer holds %d events after two runs, want 12", got)
	}
}
