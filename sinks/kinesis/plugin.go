package kinesis

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws/arn"
	awsconfig "github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/kinesis"
	"github.com/aws/aws-sdk-go-v2/service/kinesis/types"

	"github.com/ditto-replicator/ditto/sinks"
)

// Settings are the kinesis sink's variables. Everything AWS (region,
// credentials, endpoint, the SDK's retries) comes from the SDK's own
// variables and files, not from DITTO_* ones.
type Settings struct {
	StreamName string `envconfig:"KINESIS_STREAM_NAME" ditto:"required" desc:"Kinesis data stream to put the events to: its name, or its ARN (arn:aws:kinesis:REGION:ACCOUNT:stream/NAME, whose region is then used). Region, credentials, endpoint and the SDK's retries come from the AWS SDK's own settings: AWS_REGION, AWS_PROFILE, AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, web identity or the container/instance role, AWS_ENDPOINT_URL_KINESIS, AWS_MAX_ATTEMPTS, AWS_RETRY_MODE."`
}

// writers is DITTO_WRITERS' default with this sink.
const writers = 500

// Validate checks the stream's name or ARN as Kinesis would.
func (s *Settings) Validate() []string {
	if s.StreamName == "" {
		return nil // reported as required
	}
	if _, err := parseStream(s.StreamName); err != nil {
		return []string{fmt.Sprintf("DITTO_KINESIS_STREAM_NAME=%q %v", s.StreamName, err)}
	}
	return nil
}

func init() {
	sinks.Register(sinks.Plugin{
		Name: "kinesis",
		Summary: "puts each event as one record (the JSON envelope of benfoster/ditto's Kinesis image, partition key = the original stream id) to an Amazon Kinesis data stream. " +
			"DITTO_WRITERS defaults to " + strconv.Itoa(writers) + " with this sink: a PutRecords call carries at most one record per stream (to keep each stream's order), so calls fill up only with many streams written at once.",
		Settings: func() sinks.Settings { return &Settings{} },
		Writers:  writers,
		Open:     open,
	})
}

// streamID is a stream named by its name or by its ARN.
type streamID struct {
	name, arn, region string
}

func (id streamID) display() string {
	if id.arn != "" {
		return id.arn
	}
	return id.name
}

// names name the stream in a call: by name, and by ARN too when it has one
// (the API takes both).
func (id *streamID) names() (name, arn *string) {
	if id.arn != "" {
		arn = &id.arn
	}
	return &id.name, arn
}

func (id *streamID) describeInput() *kinesis.DescribeStreamSummaryInput {
	in := &kinesis.DescribeStreamSummaryInput{}
	in.StreamName, in.StreamARN = id.names()
	return in
}

var streamNameRE = regexp.MustCompile(`^[a-zA-Z0-9_.-]{1,128}$`)

// parseStream reads a stream name or ARN.
func parseStream(s string) (streamID, error) {
	if !strings.HasPrefix(s, "arn:") {
		if !streamNameRE.MatchString(s) {
			return streamID{}, errors.New("is not a Kinesis stream name (1-128 letters, digits, '_', '.' or '-') or ARN (arn:aws:kinesis:REGION:ACCOUNT:stream/NAME)")
		}
		return streamID{name: s}, nil
	}
	a, err := arn.Parse(s)
	if err != nil {
		return streamID{}, fmt.Errorf("is not a valid ARN: %v", err)
	}
	name, ok := strings.CutPrefix(a.Resource, "stream/")
	if a.Service != "kinesis" || !ok || a.Region == "" || a.AccountID == "" {
		return streamID{}, errors.New("is not the ARN of a Kinesis stream: expected arn:aws:kinesis:REGION:ACCOUNT:stream/NAME")
	}
	if !streamNameRE.MatchString(name) {
		return streamID{}, fmt.Errorf("names the stream %q, which is not a Kinesis stream name (1-128 letters, digits, '_', '.' or '-')", name)
	}
	return streamID{name: name, arn: s, region: a.Region}, nil
}

// startCheck bounds the check of the stream at start.
const startCheck = 30 * time.Second

func open(ctx context.Context, settings sinks.Settings, env sinks.Env) (sinks.Sink, error) {
	s := settings.(*Settings)
	id, err := parseStream(s.StreamName)
	if err != nil {
		return nil, fmt.Errorf("DITTO_KINESIS_STREAM_NAME: %w", err)
	}
	// No HTTP client of ours: the SDK's honours AWS_CA_BUNDLE, and
	// LoadDefaultConfig refuses a custom one when it is set.
	cfg, err := awsconfig.LoadDefaultConfig(ctx)
	if err != nil {
		return nil, fmt.Errorf("loading the AWS configuration (AWS_* variables, profile files): %w", err)
	}
	if id.region != "" && cfg.Region != id.region {
		if cfg.Region != "" {
			env.Log.Info().Str("awsRegion", cfg.Region).Str("streamRegion", id.region).Msg("using the region of the stream's ARN")
		}
		cfg.Region = id.region
	}
	if cfg.Region == "" {
		return nil, errors.New("no AWS region: set AWS_REGION (or a region in the AWS profile), or give DITTO_KINESIS_STREAM_NAME as the stream's ARN")
	}
	client := kinesis.NewFromConfig(cfg)
	log := env.Log.Info().Str("stream", id.display()).Str("region", cfg.Region)
	if ep := client.Options().BaseEndpoint; ep != nil {
		log = log.Str("endpoint", *ep)
	}
	log.Msg("writing to Kinesis")

	cctx, cancel := context.WithTimeout(ctx, startCheck)
	defer cancel()
	_, err = client.DescribeStreamSummary(cctx, id.describeInput())
	var notFound *types.ResourceNotFoundException
	switch {
	case errors.As(err, &notFound):
		return nil, fmt.Errorf("DITTO_KINESIS_STREAM_NAME: Kinesis stream %s does not exist in region %s: create it first (ditto does not create streams)", id.display(), cfg.Region)
	case err != nil:
		// Credentials or the network may come right later; writes wait
		// and /health/ready says why meanwhile.
		env.Log.Warn().Err(classify(err, id.display()).err).Msg("cannot check the Kinesis stream; starting anyway")
	}
	sink, err := New(client, Options{Stream: s.StreamName, Observe: env.Observe, Metrics: env.Metrics, Log: env.Log})
	if err != nil {
		return nil, err
	}
	return sink, nil
}
