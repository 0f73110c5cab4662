package main

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/ditto-replicator/ditto/sinks/kafka"
)

// Scenario f: scenario a's workload into Kafka (franz-go's in-process kfake
// cluster), against franz-go producing the same records straight into a
// fresh cluster (the raw limit, baseline 2 of this scenario) and against
// ditto's EventStore sink on the same source in the same run.
const (
	kafkaTopic      = "bench"
	kafkaPartitions = 4
	targetFB2       = 0.5 // (f) ditto into Kafka ≥ 0.5 of franz-go's own rate
)

func kafkaScenario(ctx context.Context, e *env) (*result, error) {
	w := newWorkload(e.scaled(100_000), 1000)
	res := &result{Events: w.events, Streams: w.streams}
	src, err := e.seededSource(ctx, w, 0, []string{"ditto-bench", "ditto-kafka"}...)
	if err != nil {
		return res, err
	}
	defer src.Close()
	if err := e.kafkaRaw(ctx, res, w); err != nil {
		return res, err
	}
	k, err := e.kafkaDitto(ctx, src, w)
	if err != nil {
		return res, err
	}
	res.Ditto, res.PeakRSSMB, res.Timeline = k.m, k.rss, k.timeline
	// The EventStore sink, for comparison; the table shows the Kafka run.
	es, err := e.ditto(ctx, src, w, 0)
	if err != nil {
		return res, fmt.Errorf("EventStore sink: %w", err)
	}
	res.EventStoreSink = es.m
	return res, nil
}

// startKafka starts a one-broker kfake cluster on 127.0.0.1 with the bench
// topic.
func startKafka() (*kfake.Cluster, error) {
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(kafkaPartitions, kafkaTopic))
	if err != nil {
		return nil, fmt.Errorf("starting kfake: %w", err)
	}
	return c, nil
}

// producerOptions are the options of ditto's Kafka sink with its defaults:
// idempotent, acks from all in-sync replicas, zstd, no linger.
func producerOptions(c *kfake.Cluster) []kgo.Opt {
	return []kgo.Opt{kgo.SeedBrokers(c.ListenAddrs()...), kgo.RequiredAcks(kgo.AllISRAcks()),
		kgo.ProducerBatchCompression(kgo.ZstdCompression()), kgo.ProducerLinger(0)}
}

// kafkaRecord is event i as ditto's sink produces it in raw format: key the
// stream, value the data, its seven headers.
func kafkaRecord(w workload, i int, created time.Time) *kgo.Record {
	stream := []byte(w.stream(i))
	return &kgo.Record{Topic: kafkaTopic, Key: stream, Value: w.data(i), Headers: []kgo.RecordHeader{
		{Key: kafka.HeaderID, Value: []byte(w.id(i).String())},
		{Key: kafka.HeaderStream, Value: stream},
		{Key: kafka.HeaderNumber, Value: strconv.AppendUint(nil, w.number(i), 10)},
		{Key: kafka.HeaderCreated, Value: created.AppendFormat(nil, time.RFC3339Nano)},
		{Key: kafka.HeaderType, Value: []byte(eventType)},
		{Key: kafka.HeaderContentType, Value: []byte("application/json")},
		{Key: kafka.HeaderMetadata, Value: w.metadata(i)},
	}}
}

// kafkaRaw measures the raw limit: one franz-go client producing every
// record of the workload asynchronously, as fast as it accepts them, each
// stream's in order, until all are confirmed. The connection is warmed up
// first; building the records is part of the run.
func (e *env) kafkaRaw(ctx context.Context, res *result, w workload) error {
	c, err := startKafka()
	if err != nil {
		return err
	}
	defer c.Close()
	cl, err := kgo.NewClient(producerOptions(c)...)
	if err != nil {
		return err
	}
	defer cl.Close()
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	err = cl.ProduceSync(wctx, &kgo.Record{Topic: kafkaTopic, Key: []byte("warmup"), Value: []byte("{}")}).FirstErr()
	cancel()
	if err != nil {
		return fmt.Errorf("baseline 2 (Kafka): warm-up: %w", err)
	}
	m, err := e.measureLimit(w.events, nil, func() (time.Duration, error) {
		created := time.Now().UTC()
		var wg sync.WaitGroup
		var firstErr atomic.Pointer[error]
		start := time.Now()
		for i := 0; i < w.events; i++ {
			wg.Add(1)
			cl.Produce(ctx, kafkaRecord(w, i, created), func(_ *kgo.Record, err error) {
				if err != nil {
					firstErr.CompareAndSwap(nil, &err)
				}
				wg.Done()
			})
		}
		wg.Wait()
		took := time.Since(start)
		if err := firstErr.Load(); err != nil {
			return 0, fmt.Errorf("baseline 2 (Kafka): %w", *err)
		}
		return took, nil
	})
	if err != nil {
		return err
	}
	m.Note = fmt.Sprintf("franz-go producing the same records (key, data, seven headers) straight into kfake, %d partitions, acks all, idempotent, zstd; its CPU per event (client and broker) %.1f µs, cores busy %.2f",
		kafkaPartitions, m.CPUMicrosPerEvent, m.CoresBusy)
	res.Baseline2 = m
	e.logf("baseline 2 (franz-go into kfake): %d events in %s: %.0f events/s, CPU/event %.1f µs",
		w.events, m.took(), m.EventsPerSec, m.CPUMicrosPerEvent)
	return nil
}

// kafkaDitto runs ditto with DITTO_SINK=kafka from the source's start into a
// fresh cluster until the topic holds every event.
func (e *env) kafkaDitto(ctx context.Context, src *server, w workload) (*dittoFigures, error) {
	c, err := startKafka()
	if err != nil {
		return nil, err
	}
	defer c.Close()
	cl, err := kgo.NewClient(kgo.SeedBrokers(c.ListenAddrs()...))
	if err != nil {
		return nil, err
	}
	defer cl.Close()
	f, err := e.measure(ctx, runSpec{events: w.events, want: w.events, timeline: true,
		start: func() ([]*ditto, error) {
			d, err := startDitto(e.bin, e.dir, src.conn(), "", "ditto-kafka",
				"DITTO_SINK=kafka", "DITTO_KAFKA_BROKERS="+c.ListenAddrs()[0], "DITTO_KAFKA_TOPIC="+kafkaTopic)
			return []*ditto{d}, err
		},
		count: func() int64 { return endOffsets(ctx, cl) },
	})
	if err != nil {
		return nil, fmt.Errorf("ditto into Kafka: %w", err)
	}
	m := f.m
	m.Note = fmt.Sprintf("DITTO_SINK=kafka; first record in Kafka after %s; %.1f events per write; CPU per event: ditto %.1f µs, source and kfake %.1f µs; cores busy %.2f",
		f.first.Round(time.Millisecond), m.MeanBatch, m.CPUMicrosPerEvent, m.ServersCPUMicrosPerEvent, m.CoresBusy)
	e.logf("ditto into Kafka: %d events in %s: %.0f events/s, %.1f events per write, peak RSS %.1f MiB, CPU/event ditto %.1f µs, servers %.1f µs",
		w.events, m.took(), m.EventsPerSec, m.MeanBatch, f.rss, m.CPUMicrosPerEvent, m.ServersCPUMicrosPerEvent)
	return f, nil
}

// endOffsets is the number of records in the bench topic (the sum of its
// partitions' end offsets), or 0 when the cluster does not answer.
func endOffsets(ctx context.Context, cl *kgo.Client) int64 {
	req := kmsg.NewPtrListOffsetsRequest()
	t := kmsg.NewListOffsetsRequestTopic()
	t.Topic = kafkaTopic
	for p := int32(0); p < kafkaPartitions; p++ {
		rp := kmsg.NewListOffsetsRequestTopicPartition()
		rp.Partition, rp.Timestamp = p, -1 // the end
		t.Partitions = append(t.Partitions, rp)
	}
	req.Topics = append(req.Topics, t)
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	resp, err := req.RequestWith(ctx, cl)
	if err != nil {
		return 0
	}
	var n int64
	for _, t := range resp.Topics {
		for _, p := range t.Partitions {
			n += max(p.Offset, 0)
		}
	}
	return n
}
