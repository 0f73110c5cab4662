// Package kinesalite runs kinesalite, an implementation of the Kinesis API
// on node, on 127.0.0.1 for tests and the bench, and puts a fault-injecting
// HTTP proxy in front of it (see Proxy). It installs nothing: the npm
// package must be in the directory KINESALITE_PREFIX names, by default
// .ci/npm at the top of the module, where .ci/setup installs it
// (npm install --prefix .ci/npm kinesalite@3.3.3).
package kinesalite

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/kinesis"
	"github.com/aws/aws-sdk-go-v2/service/kinesis/types"
)

// Version is the kinesalite release the tests are written against.
const Version = "3.3.3"

// PrefixEnv names the variable that overrides where kinesalite is
// installed: the directory given to npm install --prefix.
const PrefixEnv = "KINESALITE_PREFIX"

// Region and the keys are what test clients and ditto processes use;
// kinesalite checks that requests are signed, not by whom. SecretKey is
// distinctive so that tests can check that it appears in no log line.
const (
	Region    = "us-east-1"
	AccessKey = "AKIDDITTOTESTKEY0001"
	SecretKey = "dittoTestSecret/never-in-a-log-line"
)

// script starts kinesalite on 127.0.0.1 (its command line listens on every
// interface) and prints the port it got. It exits with its parent's stdin,
// so that a killed test leaves no server behind. A client that goes away
// mid-request (a ditto killed with SIGKILL) resets its connection:
// kinesalite leaves that error unhandled, and node would end the server with
// it; every other uncaught error still ends it.
const script = `
const kinesalite = require(process.argv[1]);
const server = kinesalite({createStreamMs: 20, deleteStreamMs: 20, updateStreamMs: 20, shardLimit: 100});
process.on('uncaughtException', err => {
  if (err.code === 'ECONNRESET' || err.code === 'EPIPE') return;
  console.error(err);
  process.exit(1);
});
server.listen(0, '127.0.0.1', () => console.log('listening ' + server.address().port));
process.stdin.on('end', () => process.exit(0));
process.stdin.resume();
`

// Package returns the directory of the installed kinesalite package, or an
// error saying how to install it.
func Package() (string, error) {
	prefix := os.Getenv(PrefixEnv)
	if prefix == "" {
		root, err := moduleRoot()
		if err != nil {
			return "", err
		}
		prefix = filepath.Join(root, ".ci", "npm")
	}
	dir := filepath.Join(prefix, "node_modules", "kinesalite")
	if _, err := os.Stat(filepath.Join(dir, "package.json")); err != nil {
		return "", fmt.Errorf("kinesalite is not installed in %s: run npm install --prefix %s kinesalite@%s (.ci/setup does), or set %s to the prefix it is installed in",
			prefix, prefix, Version, PrefixEnv)
	}
	return dir, nil
}

// moduleRoot is the nearest directory above the working directory that
// holds a go.mod.
func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("no go.mod above the working directory; set %s", PrefixEnv)
		}
		dir = parent
	}
}

// Server is a running kinesalite process. Its streams live in memory.
type Server struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	addr  string
	done  chan struct{}
}

// StartServer starts kinesalite on a free 127.0.0.1 port.
func StartServer() (*Server, error) {
	pkg, err := Package()
	if err != nil {
		return nil, err
	}
	node, err := exec.LookPath("node")
	if err != nil {
		return nil, fmt.Errorf("kinesalite needs node: %w", err)
	}
	cmd := exec.Command(node, "-e", script, pkg)
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting kinesalite: %w", err)
	}
	s := &Server{cmd: cmd, stdin: stdin, done: make(chan struct{})}
	port := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if p, ok := strings.CutPrefix(sc.Text(), "listening "); ok {
				port <- p
			}
		}
		io.Copy(io.Discard, stdout)
	}()
	go func() {
		cmd.Wait()
		close(s.done)
	}()
	select {
	case p := <-port:
		s.addr = "127.0.0.1:" + p
		return s, nil
	case <-s.done:
		return nil, errors.New("kinesalite exited before listening")
	case <-time.After(30 * time.Second):
		s.Close()
		return nil, errors.New("kinesalite did not listen within 30s")
	}
}

// Start starts kinesalite for t and stops it at cleanup; it fails t with a
// clear message when kinesalite or node is missing.
func Start(t testing.TB) *Server {
	t.Helper()
	s, err := StartServer()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s
}

// Addr is host:port.
func (s *Server) Addr() string { return s.addr }

// Pid is the node process's id.
func (s *Server) Pid() int { return s.cmd.Process.Pid }

// Endpoint is the URL clients use (AWS_ENDPOINT_URL_KINESIS).
func (s *Server) Endpoint() string { return "http://" + s.addr }

// Close stops the server; it may be called more than once.
func (s *Server) Close() {
	s.stdin.Close()
	select {
	case <-s.done:
		return
	case <-time.After(5 * time.Second):
	}
	s.cmd.Process.Kill()
	<-s.done
}

// NewClient is a Kinesis client for endpoint with the test keys, built
// without the SDK's shared configuration (so no AWS_* variable of the
// machine changes what the tests talk to).
func NewClient(endpoint string, optFns ...func(*kinesis.Options)) *kinesis.Client {
	return kinesis.New(kinesis.Options{
		Region:       Region,
		BaseEndpoint: aws.String(endpoint),
		Credentials:  credentials.NewStaticCredentialsProvider(AccessKey, SecretKey, ""),
	}, optFns...)
}

// Env is the environment that points a process using the SDK's default
// configuration at endpoint.
func Env(endpoint string) map[string]string {
	return map[string]string{
		"AWS_REGION":               Region,
		"AWS_ACCESS_KEY_ID":        AccessKey,
		"AWS_SECRET_ACCESS_KEY":    SecretKey,
		"AWS_ENDPOINT_URL_KINESIS": endpoint,
		// No profile files or instance metadata are looked at.
		"AWS_CONFIG_FILE":             os.DevNull,
		"AWS_SHARED_CREDENTIALS_FILE": os.DevNull,
		"AWS_EC2_METADATA_DISABLED":   "true",
	}
}

// CreateStream creates a stream with shards shards and waits until it is
// ACTIVE.
func CreateStream(ctx context.Context, c *kinesis.Client, name string, shards int32) error {
	if _, err := c.CreateStream(ctx, &kinesis.CreateStreamInput{StreamName: aws.String(name), ShardCount: aws.Int32(shards)}); err != nil {
		return fmt.Errorf("creating Kinesis stream %s: %w", name, err)
	}
	return waitStatus(ctx, c, name, types.StreamStatusActive)
}

// DeleteStream deletes a stream and waits until it is gone.
func DeleteStream(ctx context.Context, c *kinesis.Client, name string) error {
	if _, err := c.DeleteStream(ctx, &kinesis.DeleteStreamInput{StreamName: aws.String(name)}); err != nil {
		return fmt.Errorf("deleting Kinesis stream %s: %w", name, err)
	}
	return waitStatus(ctx, c, name, "")
}

// waitStatus polls the stream until it has status want ("" = gone), for at
// most 30s.
func waitStatus(ctx context.Context, c *kinesis.Client, name string, want types.StreamStatus) error {
	deadline := time.Now().Add(30 * time.Second)
	for {
		out, err := c.DescribeStreamSummary(ctx, &kinesis.DescribeStreamSummaryInput{StreamName: aws.String(name)})
		var notFound *types.ResourceNotFoundException
		switch {
		case want == "" && errors.As(err, &notFound):
			return nil
		case err == nil && out.StreamDescriptionSummary.StreamStatus == want:
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("Kinesis stream %s not %q within 30s (last: %v)", name, want, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// Record is one record read back from a stream.
type Record struct {
	Shard          string
	SequenceNumber string
	PartitionKey   string
	Data           []byte
}

// ReadAll reads every record of every shard of the stream from its start:
// records of one shard in sequence order, shards one after the other (so
// the records of one partition key are in the order Kinesis stored them).
func ReadAll(ctx context.Context, c *kinesis.Client, name string) ([]Record, error) {
	var shards []types.Shard
	in := &kinesis.ListShardsInput{StreamName: aws.String(name)}
	for {
		out, err := c.ListShards(ctx, in)
		if err != nil {
			return nil, fmt.Errorf("listing the shards of %s: %w", name, err)
		}
		shards = append(shards, out.Shards...)
		if out.NextToken == nil {
			break
		}
		in = &kinesis.ListShardsInput{NextToken: out.NextToken}
	}
	var all []Record
	for _, sh := range shards {
		it, err := c.GetShardIterator(ctx, &kinesis.GetShardIteratorInput{StreamName: aws.String(name), ShardId: sh.ShardId,
			ShardIteratorType: types.ShardIteratorTypeTrimHorizon})
		if err != nil {
			return nil, fmt.Errorf("shard iterator of %s/%s: %w", name, *sh.ShardId, err)
		}
		iter := it.ShardIterator
		// An open shard always has a next iterator: read until a call
		// returns nothing. Bounded: 10,000 calls of up to 10,000 records.
		for i := 0; iter != nil && i < 10000; i++ {
			out, err := c.GetRecords(ctx, &kinesis.GetRecordsInput{ShardIterator: iter, Limit: aws.Int32(10000)})
			if err != nil {
				return nil, fmt.Errorf("reading %s/%s: %w", name, *sh.ShardId, err)
			}
			for _, r := range out.Records {
				all = append(all, Record{Shard: *sh.ShardId, SequenceNumber: aws.ToString(r.SequenceNumber), PartitionKey: aws.ToString(r.PartitionKey), Data: r.Data})
			}
			if len(out.Records) == 0 {
				break
			}
			iter = out.NextShardIterator
		}
	}
	return all, nil
}
