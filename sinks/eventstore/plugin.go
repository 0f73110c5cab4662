package eventstore

import (
	"context"
	"fmt"
	"time"

	"github.com/EventStore/EventStore-Client-Go/v4/esdb"

	"github.com/ditto-replicator/ditto/config"
	"github.com/ditto-replicator/ditto/internal/esdbconn"
	"github.com/ditto-replicator/ditto/sinks"
)

// Settings are the eventstore sink's variables.
type Settings struct {
	DestinationConnectionString string        `envconfig:"DESTINATION_CONNECTION_STRING" ditto:"required" secret:"true" desc:"KurrentDB/EventStoreDB connection string of the destination cluster."`
	SkipVersionCheck            bool          `envconfig:"SKIP_VERSION_CHECK" default:"false" desc:"Append with expected revision any instead of n-1. Needed when the destination does not start from the same event numbers; loses the ordering guarantee across processes."`
	TimeToLive                  time.Duration `envconfig:"TIME_TO_LIVE" default:"0s" desc:"If set, $maxAge (whole seconds) is set on every stream ditto creates on the destination."`
	BatchAppend                 bool          `envconfig:"BATCH_APPEND" default:"true" desc:"Append through the destination's BatchAppend call (one message per write on a long-lived stream) when it offers it; false uses one Append call per write, as servers before 21.10 need anyway."`
}

// Validate checks what the client would only reject when connecting.
func (s *Settings) Validate() []string {
	var p []string
	if cs := s.DestinationConnectionString; cs != "" {
		if err := config.CheckConnectionString(cs); err != nil {
			p = append(p, fmt.Sprintf("DITTO_DESTINATION_CONNECTION_STRING is not a valid connection string (%s): %s", config.Redact(cs), config.RedactErr(err, cs)))
		}
	}
	if s.TimeToLive < 0 {
		p = append(p, fmt.Sprintf("DITTO_TIME_TO_LIVE=%s must not be negative", s.TimeToLive))
	}
	if s.TimeToLive > 0 && s.TimeToLive < time.Second {
		p = append(p, fmt.Sprintf("DITTO_TIME_TO_LIVE=%s is below the 1s resolution of $maxAge", s.TimeToLive))
	}
	return p
}

func init() {
	sinks.Register(sinks.Plugin{
		Name:     "eventstore",
		Summary:  "appends each event to its original stream on a KurrentDB/EventStoreDB cluster, with its id and number.",
		Settings: func() sinks.Settings { return &Settings{} },
		// DITTO_COPY_STREAM_METADATA sets the source stream's metadata.
		StreamMetadata: true,
		Open:           open,
	})
}

func open(_ context.Context, settings sinks.Settings, env sinks.Env) (sinks.Sink, error) {
	s := settings.(*Settings)
	cs := s.DestinationConnectionString
	dial := func() (*esdb.Client, error) { return esdbconn.NewClient(cs, env.Log) }
	env.Log.Info().Str("destination", config.Redact(cs)).Bool("skipVersionCheck", s.SkipVersionCheck).Msg("connecting to the destination")
	client, err := dial()
	if err != nil {
		return nil, fmt.Errorf("DITTO_DESTINATION_CONNECTION_STRING: %w", err)
	}
	var batchConf *esdb.Configuration
	if s.BatchAppend {
		// Parsed again: the client keeps its own copy.
		if batchConf, err = esdb.ParseConnectionString(cs); err != nil {
			client.Close()
			return nil, fmt.Errorf("DITTO_DESTINATION_CONNECTION_STRING: %w", err)
		}
	}
	return New(client, Options{
		Config:           batchConf,
		SkipVersionCheck: s.SkipVersionCheck,
		TimeToLive:       s.TimeToLive,
		Observe:          env.Observe,
		Dial:             dial,
		Source:           env.Source,
	}), nil
}
