package eventstore

import (
	"context"
	"encoding/json"
	"reflect"
	"testing"
	"time"

	"github.com/EventStore/EventStore-Client-Go/v4/esdb"
	"github.com/google/uuid"

	"github.com/ditto-replicator/ditto/internal/esdbconn"
	"github.com/ditto-replicator/ditto/internal/esdbtest"
	"github.com/ditto-replicator/ditto/policy"
	"github.com/ditto-replicator/ditto/sinks"
)

func setMeta(t *testing.T, c *esdb.Client, stream, md string) {
	t.Helper()
	if _, err := c.AppendToStream(context.Background(), "$$"+stream, esdb.AppendToStreamOptions{},
		esdb.EventData{EventID: uuid.New(), EventType: "$metadata", ContentType: esdb.ContentTypeJson, Data: []byte(md)}); err != nil {
		t.Fatal(err)
	}
}

// metadataOf returns the metadata of stream on c, decoded, and the number of
// its event in the metadata stream (which keeps only the last), or -1.
func metadataOf(t *testing.T, c *esdb.Client, stream string) (map[string]any, int64) {
	t.Helper()
	evs := readAllEvents(t, c, "$$"+stream)
	if len(evs) == 0 {
		return nil, -1
	}
	var m map[string]any
	if err := json.Unmarshal(evs[len(evs)-1].Data, &m); err != nil {
		t.Fatal(err)
	}
	return m, int64(evs[len(evs)-1].EventNumber)
}

// TestStreamMetadataCopied: the source stream's metadata is set on the
// destination stream when the sink first writes it, without $tb and (unless
// asked) $acl, with DITTO_TIME_TO_LIVE as $maxAge; a later change is copied
// once it is looked at again, an unchanged one is not written twice.
func TestStreamMetadataCopied(t *testing.T) {
	src := esdbtest.Start(t, esdbtest.Options{Insecure: true})
	srcC := esdbtest.Connect(t, esdbtest.Config(t, src.ConnectionString()))
	pol, _ := policy.Compile(policy.Spec{})
	reads := esdbconn.New(srcC, nil)
	call := func(ctx context.Context, fn func(*esdb.Client) error) error {
		_, err := esdbconn.Call(ctx, reads, func(c *esdb.Client, _ func() bool) (struct{}, error) { return struct{}{}, fn(c) })
		return err
	}
	ctx := context.Background()
	setMeta(t, srcC, "order-1", `{"$maxCount":10,"$maxAge":60,"$tb":0,"$cacheControl":30,"$acl":{"$r":"$ops"},"owner":"team-a"}`)

	s, dstC := newSink(t, Options{TimeToLive: time.Hour, Source: policy.NewSource(pol, policy.ClientReader(call, nil), true, false)})
	evs := events("order-1", 0, 4)
	for _, b := range [][]sinks.Event{evs[:2], evs[2:3]} {
		if err := s.Write(ctx, "order-1", b); err != nil {
			t.Fatal(err)
		}
	}
	want := map[string]any{"$maxCount": 10.0, "$maxAge": 3600.0, "$cacheControl": 30.0, "owner": "team-a"}
	if got, rev := metadataOf(t, dstC, "order-1"); rev != 0 || !reflect.DeepEqual(got, want) {
		t.Fatalf("destination metadata %v (revision %d), want %v once", got, rev, want)
	}
	// A new process writes the same metadata only if it is not there.
	s2 := New(esdbtest.Connect(t, s.opts.Config), Options{TimeToLive: time.Hour, Source: s.src})
	if err := s2.Write(ctx, "order-1", evs[3:]); err != nil {
		t.Fatal(err)
	}
	if _, rev := metadataOf(t, dstC, "order-1"); rev != 0 {
		t.Fatalf("unchanged metadata written again (revision %d)", rev)
	}

	setMeta(t, srcC, "order-1", `{"$maxCount":20,"owner":"team-b"}`)
	more := events("order-1", 4, 2)
	if err := s.Write(ctx, "order-1", more[:1]); err != nil {
		t.Fatal(err)
	}
	if _, rev := metadataOf(t, dstC, "order-1"); rev != 0 {
		t.Fatalf("metadata looked at again within %s", metadataPoll)
	}
	s.metaPoll = 0
	if err := s.Write(ctx, "order-1", more[1:]); err != nil {
		t.Fatal(err)
	}
	want = map[string]any{"$maxCount": 20.0, "$maxAge": 3600.0, "owner": "team-b"}
	if got, rev := metadataOf(t, dstC, "order-1"); rev != 1 || !reflect.DeepEqual(got, want) {
		t.Fatalf("destination metadata %v (revision %d), want %v at 1", got, rev, want)
	}
	if err := s.Write(ctx, "order-1", events("order-1", 6, 1)); err != nil {
		t.Fatal(err)
	}
	if _, rev := metadataOf(t, dstC, "order-1"); rev != 1 {
		t.Fatalf("unchanged source metadata copied again (revision %d)", rev)
	}

	// $acl only when asked.
	setMeta(t, srcC, "order-2", `{"$acl":{"$r":"$ops"}}`)
	withACL, dst2 := newSink(t, Options{Source: policy.NewSource(pol, policy.ClientReader(call, nil), true, true)})
	if err := withACL.Write(ctx, "order-2", events("order-2", 0, 1)); err != nil {
		t.Fatal(err)
	}
	if got, _ := metadataOf(t, dst2, "order-2"); !reflect.DeepEqual(got, map[string]any{"$acl": map[string]any{"$r": "$ops"}}) {
		t.Fatalf("destination metadata %v", got)
	}
	// A source stream without metadata leaves the destination's alone.
	if err := withACL.Write(ctx, "order-3", events("order-3", 0, 1)); err != nil {
		t.Fatal(err)
	}
	if got, rev := metadataOf(t, dst2, "order-3"); rev >= 0 {
		t.Fatalf("metadata %v set for a stream without", got)
	}
}
