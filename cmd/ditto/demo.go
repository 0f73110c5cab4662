package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"time"

	"github.com/EventStore/EventStore-Client-Go/v4/esdb"
	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/rs/zerolog"

	"github.com/ditto-replicator/ditto/config"
	"github.com/ditto-replicator/ditto/internal/esdbtest"
	"github.com/ditto-replicator/ditto/verify"
)

// demo starts two embedded test servers, seeds customer events on the
// source, replicates them, shows the comparison, and keeps running so that a
// user can write more events and watch them arrive.
func demo(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("ditto demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	srcAddr := fs.String("source", "127.0.0.1:2113", "listen address of the embedded source server")
	dstAddr := fs.String("destination", "127.0.0.1:4113", "listen address of the embedded destination server")
	customers := fs.Int("customers", 20, "customer streams to seed")
	exit := fs.Bool("exit", false, "stop after the comparison instead of running until Ctrl-C")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if err := runDemo(ctx, *srcAddr, *dstAddr, *customers, *exit, stdout, stderr); err != nil {
		fmt.Fprintf(stderr, "ditto demo: %v\n", err)
		return 1
	}
	return 0
}

func runDemo(ctx context.Context, srcAddr, dstAddr string, customers int, exit bool, stdout, stderr io.Writer) error {
	src, err := esdbtest.StartServer(esdbtest.Options{Addr: srcAddr, Insecure: true})
	if err != nil {
		return fmt.Errorf("starting the source test server on %s: %w", srcAddr, err)
	}
	defer src.Close()
	dst, err := esdbtest.StartServer(esdbtest.Options{Addr: dstAddr, Insecure: true})
	if err != nil {
		return fmt.Errorf("starting the destination test server on %s: %w", dstAddr, err)
	}
	defer dst.Close()
	fmt.Fprintf(stdout, "source:      %s (embedded test server, in memory)\n", src.ConnectionString())
	fmt.Fprintf(stdout, "destination: %s (embedded test server, in memory)\n", dst.ConnectionString())

	srcClient, err := newClient(src.ConnectionString(), zerolog.Nop())
	if err != nil {
		return err
	}
	defer srcClient.Close()
	dstClient, err := newClient(dst.ConnectionString(), zerolog.Nop())
	if err != nil {
		return err
	}
	defer dstClient.Close()

	settings := esdb.SubscriptionSettingsDefault()
	settings.ResolveLinkTos = true
	settings.ConsumerStrategyName = esdb.ConsumerStrategyPinned
	if err := srcClient.CreatePersistentSubscription(ctx, "$ce-customer", "ditto-customer",
		esdb.PersistentStreamSubscriptionOptions{Settings: &settings, StartFrom: esdb.Start{}}); err != nil {
		return fmt.Errorf("creating subscription $ce-customer::ditto-customer: %w", err)
	}
	seeded, err := seed(ctx, srcClient, customers)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "seeded %d events in %d customer streams; subscription $ce-customer::ditto-customer (resolve links, Pinned)\n", seeded, customers)

	metricsAddr := "127.0.0.1:5000"
	if l, err := net.Listen("tcp", metricsAddr); err != nil {
		metricsAddr = "127.0.0.1:0"
	} else {
		l.Close()
	}
	env := map[string]string{
		"DITTO_SOURCE_CONNECTION_STRING":      src.ConnectionString(),
		"DITTO_DESTINATION_CONNECTION_STRING": dst.ConnectionString(),
		"DITTO_SUBSCRIPTIONS":                 "$ce-customer:ditto-customer",
		"DITTO_METRICS_ADDRESS":               metricsAddr,
		"DITTO_LOG_FORMAT":                    "console",
		"DITTO_LOG_LEVEL":                     "debug",
		"DITTO_SHUTDOWN_TIMEOUT":              "5s",
	}
	cfg, err := loadWith(env)
	if err != nil {
		return err
	}
	svc, err := newService(ctx, cfg, newLogger(cfg, stderr), stdout)
	if err != nil {
		return err
	}
	if svc.listener != nil {
		fmt.Fprintf(stdout, "metrics:     http://%s/metrics\n", svc.listener.Addr())
	}
	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	done := make(chan error, 1)
	go func() { done <- svc.run(runCtx) }()

	processed := svc.metrics.Processed.WithLabelValues("ditto", "$ce-customer", "ditto-customer")
	deadline := time.Now().Add(60 * time.Second)
	last := -1
	for n := int(counterValue(processed)); n < seeded && time.Now().Before(deadline); n = int(counterValue(processed)) {
		if n != last {
			fmt.Fprintf(stdout, "replicated %d/%d events\n", n, seeded)
			last = n
		}
		select {
		case <-ctx.Done():
			return nil
		case err := <-done:
			return fmt.Errorf("ditto stopped: %w", err)
		case <-time.After(200 * time.Millisecond):
		}
	}
	fmt.Fprintf(stdout, "replicated %d/%d events\n\n", int(counterValue(processed)), seeded)

	rep, err := verify.Compare(ctx, srcClient, dstClient, verify.Options{Categories: []string{"$ce-customer"}})
	if err != nil {
		return fmt.Errorf("comparing source and destination: %w", err)
	}
	rep.WriteText(stdout)
	if exit {
		stop()
		<-done
		if !rep.OK() {
			return errors.New("destination differs from source")
		}
		return nil
	}
	fmt.Fprintf(stdout, `
ditto keeps running. Write another event to the source and watch it arrive:

  curl -i -X POST http://%s/streams/customer-%s \
    -H 'Content-Type: application/vnd.eventstore.events+json' \
    --data-raw '[{"eventId":"%s","eventType":"customer_registered","data":{"first_name":"John","last_name":"Smith"},"metadata":{"source":"demo"}}]'

The log shows the write ("Replicating customer_registered #0..#0 from customer-..."). Compare
both sides at any time from another terminal:

  DITTO_SOURCE_CONNECTION_STRING='%s' DITTO_DESTINATION_CONNECTION_STRING='%s' \
    DITTO_SUBSCRIPTIONS='$ce-customer:ditto-customer' go run ./cmd/ditto verify

Ctrl-C stops.
`, srcAddr, uuid.NewString(), uuid.NewString(), src.ConnectionString(), dst.ConnectionString())
	select {
	case <-ctx.Done():
	case err := <-done:
		return fmt.Errorf("ditto stopped: %w", err)
	}
	stop()
	<-done
	return nil
}

// seed writes a few customer events per stream, like benfoster/ditto's
// create_events.sh.
func seed(ctx context.Context, c *esdb.Client, customers int) (int, error) {
	types := []string{"customer_registered", "customer_email_changed", "customer_address_changed", "customer_verified"}
	total := 0
	for i := 0; i < customers; i++ {
		stream := "customer-" + uuid.NewString()
		events := make([]esdb.EventData, 0, len(types))
		for j, t := range types[:1+i%len(types)] {
			data, _ := json.Marshal(map[string]any{"customer_id": stream[len("customer-"):], "seq": j, "email": fmt.Sprintf("customer%d@example.com", i)})
			meta, _ := json.Marshal(map[string]string{"source": "ditto-demo"})
			events = append(events, esdb.EventData{EventID: uuid.New(), EventType: t, ContentType: esdb.ContentTypeJson, Data: data, Metadata: meta})
		}
		if _, err := c.AppendToStream(ctx, stream, esdb.AppendToStreamOptions{ExpectedRevision: esdb.NoStream{}}, events...); err != nil {
			return total, fmt.Errorf("seeding %s: %w", stream, err)
		}
		total += len(events)
	}
	return total, nil
}

func counterValue(c prometheus.Counter) float64 {
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		return 0
	}
	return m.GetCounter().GetValue()
}

// loadWith loads the configuration with env on top of the process
// environment, then restores the environment.
func loadWith(env map[string]string) (*config.Config, error) {
	for k, v := range env {
		old, had := os.LookupEnv(k)
		os.Setenv(k, v)
		defer func() {
			if had {
				os.Setenv(k, old)
			} else {
				os.Unsetenv(k)
			}
		}()
	}
	return config.Load()
}
