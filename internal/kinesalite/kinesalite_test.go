package kinesalite

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kinesis"
	"github.com/aws/aws-sdk-go-v2/service/kinesis/types"
	"github.com/aws/smithy-go"
)

func TestMissingPackageSaysHowToInstall(t *testing.T) {
	dir := t.TempDir()
	t.Setenv(PrefixEnv, dir)
	_, err := StartServer()
	if err == nil || !strings.Contains(err.Error(), "npm install --prefix "+dir+" kinesalite@"+Version) {
		t.Fatalf("StartServer without the package: %v", err)
	}
}

// The proxy's faults reach the SDK as Kinesis's would: records rejected in
// the answer (the others written), a throttled call, refused requests.
func TestProxyFaults(t *testing.T) {
	srv := Start(t)
	ctx := context.Background()
	direct := NewClient(srv.Endpoint())
	if err := CreateStream(ctx, direct, "s", 2); err != nil {
		t.Fatal(err)
	}
	p, err := StartProxy(srv.Endpoint())
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	c := NewClient(p.Endpoint(), func(o *kinesis.Options) { o.RetryMaxAttempts = 1 })
	p.SetRule(func(n int, recs []Entry) Fault {
		if n == 0 {
			return Fault{Reject: map[int]string{1: "InternalFailure"}}
		}
		return Fault{Call: Throttle}
	})
	put := func() (*kinesis.PutRecordsOutput, error) {
		var recs []types.PutRecordsRequestEntry
		for _, k := range []string{"a", "b", "c"} {
			recs = append(recs, types.PutRecordsRequestEntry{PartitionKey: aws.String(k), Data: []byte(k)})
		}
		return c.PutRecords(ctx, &kinesis.PutRecordsInput{StreamName: aws.String("s"), Records: recs})
	}
	out, err := put()
	if err != nil {
		t.Fatal(err)
	}
	if aws.ToInt32(out.FailedRecordCount) != 1 || aws.ToString(out.Records[1].ErrorCode) != "InternalFailure" ||
		out.Records[0].SequenceNumber == nil || out.Records[2].SequenceNumber == nil {
		t.Fatalf("partial failure answered %+v", out.Records)
	}
	got, err := ReadAll(ctx, direct, "s")
	if err != nil {
		t.Fatal(err)
	}
	keys := map[string]bool{}
	for _, r := range got {
		keys[r.PartitionKey] = true
	}
	if len(got) != 2 || !keys["a"] || !keys["c"] {
		t.Fatalf("stream holds %+v, want the records of a and c", got)
	}
	var throttled *types.ProvisionedThroughputExceededException
	if _, err := put(); !errors.As(err, &throttled) {
		t.Fatalf("throttled call: %v", err)
	}
	p.Refuse(&Refusal{Status: 400, Type: "UnrecognizedClientException", Message: "bad token"})
	_, err = c.DescribeStreamSummary(ctx, &kinesis.DescribeStreamSummaryInput{StreamName: aws.String("s")})
	var ae smithy.APIError
	if !errors.As(err, &ae) || ae.ErrorCode() != "UnrecognizedClientException" {
		t.Fatalf("refused request: %v", err)
	}
	if calls := p.Calls(); len(calls) != 2 || len(calls[0].Records) != 3 || calls[1].Fault.Call != Throttle {
		t.Fatalf("calls logged: %+v", calls)
	}
}

// A client that vanishes mid-request (a ditto killed by SIGKILL) resets its
// connection; the server must go on serving. (Regression: kinesalite left
// the reset unhandled, and node ended the server process with it.)
func TestServerOutlivesAResetConnection(t *testing.T) {
	srv := Start(t)
	for i := 0; i < 5; i++ {
		conn, err := net.Dial("tcp", srv.Addr())
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(conn, "POST / HTTP/1.1\r\nHost: %s\r\nContent-Type: application/x-amz-json-1.1\r\nX-Amz-Target: Kinesis_20131202.ListStreams\r\nContent-Length: 1000\r\n\r\n{\"Lim", srv.Addr())
		conn.(*net.TCPConn).SetLinger(0) // close with a reset
		conn.Close()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := NewClient(srv.Endpoint()).ListStreams(ctx, &kinesis.ListStreamsInput{}); err != nil {
		t.Fatalf("kinesalite after reset connections: %v", err)
	}
}
