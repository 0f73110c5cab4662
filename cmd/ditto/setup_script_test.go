package main

import (
	"bufio"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/EventStore/EventStore-Client-Go/v4/esdb"

	"github.com/ditto-replicator/ditto/internal/esdbtest"
)

// kinesaliteDir is where .ci/setup installs kinesalite (npm).
const kinesaliteDir = "../../.ci/npm/node_modules/kinesalite"

// startKinesalite runs kinesalite on a free 127.0.0.1 port (its CLI would
// listen on every interface) and returns its URL.
func startKinesalite(t *testing.T) string {
	t.Helper()
	dir, err := filepath.Abs(kinesaliteDir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "package.json")); err != nil {
		t.Fatalf("kinesalite is not installed in %s: bash .ci/setup installs it (npm install --prefix .ci/npm kinesalite@3.3.3)", kinesaliteDir)
	}
	const script = `require(process.argv[1])({createStreamMs: 50, deleteStreamMs: 50, updateStreamMs: 50})
  .listen(0, '127.0.0.1', function () { console.log('listening ' + this.address().port) })`
	cmd := exec.Command("node", "-e", script, dir)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting kinesalite: %v", err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	port := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if p, ok := strings.CutPrefix(sc.Text(), "listening "); ok {
				port <- p
			}
		}
	}()
	select {
	case p := <-port:
		return "http://127.0.0.1:" + p
	case <-time.After(30 * time.Second):
		t.Fatal("kinesalite did not start within 30s")
		return ""
	}
}

// docker/setup.sh is what docker-compose runs against a real node and
// kinesalite; it uses the classic HTTP API, which the test server also
// serves, and Kinesis's JSON API.
func TestDockerSetupScript(t *testing.T) {
	if _, err := exec.LookPath("curl"); err != nil {
		t.Fatal("curl is needed to run docker/setup.sh; .ci/setup installs it")
	}
	srv := esdbtest.Start(t, esdbtest.Options{Insecure: true})
	kinesis := startKinesalite(t)
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
