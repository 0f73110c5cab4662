package main

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/EventStore/EventStore-Client-Go/v4/esdb"
	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kinesis"
	"github.com/aws/aws-sdk-go-v2/service/kinesis/types"

	"github.com/ditto-replicator/ditto/internal/faultproxy"
	"github.com/ditto-replicator/ditto/internal/kinesalite"
	"github.com/ditto-replicator/ditto/sinks"
)

// Scenarios k and l: ditto's Kinesis sink into kinesalite, against one
// PutRecord per event, sequentially (benfoster/ditto's Kinesis image:
// baseline 1), and against the same records put straight to kinesalite in
// calls of 500 (kinesalite's own limit: baseline 2), all in the same run;
// l puts a delay each way between every writer and kinesalite, as between
// a replicator and a Kinesis endpoint across a network.
const (
	kinesisShards   = 4
	kinesisRawCalls = 4   // PutRecords calls at once in baseline 2
	kinesisRawBatch = 500 // records per call in baseline 2: the service limit
	targetKB1       = 20.0
)

func kinesisThroughput(ctx context.Context, e *env, delay time.Duration) (*result, error) {
	w := newWorkload(e.scaled(100_000), 1000)
	res := &result{Events: w.events, Streams: w.streams, DelayMs: ms(delay)}
	kin, err := kinesalite.StartServer()
	if err != nil {
		return res, fmt.Errorf("the Kinesis scenarios need kinesalite: %w", err)
	}
	defer kin.Close()
	// direct reads the streams back; the writers go through the proxy.
	direct := kinesalite.NewClient(kin.Endpoint())
	endpoint := kin.Endpoint()
	if delay > 0 {
		p, err := faultproxy.Start(kin.Addr())
		if err != nil {
			return res, err
		}
		defer p.Close()
		p.SetDelay(delay)
		endpoint = "http://" + p.Addr()
	}
	client := kinesalite.NewClient(endpoint)
	for _, s := range []string{"raw", "ditto", "baseline"} {
		if err := kinesalite.CreateStream(ctx, direct, s, kinesisShards); err != nil {
			return res, err
		}
	}
	src, err := e.seededSource(ctx, w, 0, []string{"ditto-bench", "baseline-1"}...)
	if err != nil {
		return res, err
	}
	defer src.Close()
	if err := e.kinesisRaw(ctx, res, kin, client, w); err != nil {
		return res, err
	}
	if err := e.kinesisDitto(ctx, res, src, kin, endpoint, direct, w); err != nil {
		return res, err
	}
	if err := e.reference(ctx, res, src, w, "one PutRecord per event", putEach(client)); err != nil {
		return res, err
	}
	return res, nil
}

// envelope is event i's record data, as ditto writes it.
func (w workload) envelope(i int, now time.Time) []byte {
	ev := sinks.Event{Stream: w.stream(i), Number: w.number(i), ID: w.id(i), Type: eventType, ContentType: "application/json",
		Data: w.data(i), Metadata: w.metadata(i), Created: now}
	return sinks.AppendEnvelope(nil, &ev, now)
}

// kinesisRaw measures baseline 2: every event's record put straight to the
// stream "raw", kinesisRawBatch per PutRecords call (consecutive events
// belong to different streams), kinesisRawCalls calls at once. No
// subscription.
func (e *env) kinesisRaw(ctx context.Context, res *result, kin *kinesalite.Server, client *kinesis.Client, w workload) error {
	now := time.Now()
	calls := make(chan []types.PutRecordsRequestEntry, w.events/kinesisRawBatch+1)
	for from := 0; from < w.events; from += kinesisRawBatch {
		batch := make([]types.PutRecordsRequestEntry, 0, kinesisRawBatch)
		for i := from; i < min(from+kinesisRawBatch, w.events); i++ {
			batch = append(batch, types.PutRecordsRequestEntry{Data: w.envelope(i, now), PartitionKey: aws.String(w.stream(i))})
		}
		calls <- batch
	}
	close(calls)
	m, err := e.measureLimit(w.events, func() time.Duration { return procUsage(kin.Pid()).cpu }, func() (time.Duration, error) {
		var wg sync.WaitGroup
		var firstErr atomic.Pointer[error]
		start := time.Now()
		for range kinesisRawCalls {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for batch := range calls {
					out, err := client.PutRecords(ctx, &kinesis.PutRecordsInput{StreamName: aws.String("raw"), Records: batch})
					if err == nil && aws.ToInt32(out.FailedRecordCount) > 0 {
						err = fmt.Errorf("%d records rejected", aws.ToInt32(out.FailedRecordCount))
					}
					if err != nil {
						err = fmt.Errorf("baseline 2: PutRecords: %w", err)
						firstErr.CompareAndSwap(nil, &err)
						return
					}
				}
			}()
		}
		wg.Wait()
		took := time.Since(start)
		if err := firstErr.Load(); err != nil {
			return 0, *err
		}
		return took, nil
	})
	if err != nil {
		return err
	}
	m.Note = fmt.Sprintf("the records put straight to kinesalite, %d per PutRecords call, %d calls at once; CPU per event (client and kinesalite) %.1f µs, cores busy %.2f",
		kinesisRawBatch, kinesisRawCalls, m.CPUMicrosPerEvent, m.CoresBusy)
	res.Baseline2 = m
	e.logf("baseline 2 (kinesalite's limit): %d records in %s: %.0f records/s", w.events, m.took(), m.EventsPerSec)
	return nil
}

// kinesisPollEvery is how often the Kinesis run reads ditto's /metrics for
// its acks: serving them costs ditto CPU, so not at every poll.
const kinesisPollEvery = 20 * time.Millisecond

// kinesisDitto runs ditto with DITTO_SINK=kinesis from the source's start
// until it has acked every event, then checks that the stream "ditto"
// holds them all. The time runs from starting the process to the last ack
// seen in /metrics.
func (e *env) kinesisDitto(ctx context.Context, res *result, src *server, kin *kinesalite.Server, endpoint string, direct *kinesis.Client, w workload) error {
	extra := []string{"DITTO_SINK=kinesis", "DITTO_KINESIS_STREAM_NAME=ditto"}
	for k, v := range kinesalite.Env(endpoint) {
		extra = append(extra, k+"="+v)
	}
	var d *ditto
	var text string // ditto's /metrics, as last read
	var acked int64
	var read time.Time
	f, err := e.measure(ctx, runSpec{events: w.events, want: w.events,
		start: func() ([]*ditto, error) {
			var err error
			d, err = startDitto(e.bin, e.dir, src.conn(), "", "ditto-bench", extra...)
			return []*ditto{d}, err
		},
		count: func() int64 {
			if time.Since(read) >= kinesisPollEvery {
				text, read = d.scrape(ctx), time.Now()
				acked = int64(promSum(text, "ditto_events_processed_total", ""))
			}
			return acked
		},
		others: func() time.Duration { return procUsage(kin.Pid()).cpu },
	})
	if err != nil {
		return fmt.Errorf("ditto: %w", err)
	}
	m := f.m
	res.PeakRSSMB = f.rss
	// Records per PutRecords call rather than events per lane write.
	calls := promSum(text, "ditto_io_duration_seconds_count", `operation="put_records"`)
	m.MeanBatch = 0
	if calls > 0 {
		m.MeanBatch = float64(w.events) / calls
	}
	t := time.Now()
	recs, err := kinesalite.ReadAll(ctx, direct, "ditto")
	if err != nil {
		return err
	}
	if len(recs) < w.events {
		return fmt.Errorf("ditto acked %d events but the stream holds %d records", w.events, len(recs))
	}
	m.Note = fmt.Sprintf("%.0f PutRecords calls, %.1f records per call; CPU per event: ditto %.1f µs, source server %.1f µs, kinesalite %.1f µs; cores busy %.2f; %d records read back",
		calls, m.MeanBatch, m.CPUMicrosPerEvent, perEvent(f.servers, w.events), perEvent(f.others, w.events), m.CoresBusy, len(recs))
	res.Ditto = m
	e.logf("ditto: %d events in %s: %.0f events/s, %.1f records per PutRecords call, peak RSS %.1f MiB (read back %d records in %s)",
		w.events, m.took(), m.EventsPerSec, m.MeanBatch, res.PeakRSSMB, len(recs), time.Since(t).Round(time.Millisecond))
	return nil
}

// putEach is baseline 1's write in benfoster/ditto's Kinesis image: one
// PutRecord of the event's envelope to stream "baseline", its stream the
// partition key.
func putEach(client *kinesis.Client) func(context.Context, *esdb.RecordedEvent) error {
	return func(ctx context.Context, rec *esdb.RecordedEvent) error {
		se := sinks.Event{Stream: rec.StreamID, Number: rec.EventNumber, ID: rec.EventID, Type: rec.EventType, ContentType: rec.ContentType,
			Data: rec.Data, Metadata: rec.UserMetadata, Created: rec.CreatedDate}
		if _, err := client.PutRecord(ctx, &kinesis.PutRecordInput{StreamName: aws.String("baseline"), PartitionKey: aws.String(rec.StreamID),
			Data: sinks.AppendEnvelope(nil, &se, time.Now())}); err != nil {
			return fmt.Errorf("PutRecord: %w", err)
		}
		return nil
	}
}
