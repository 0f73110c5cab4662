package main

// Every sink ditto offers: each registers itself under its DITTO_SINK name.
import (
	_ "github.com/ditto-replicator/ditto/sinks/eventstore"
	_ "github.com/ditto-replicator/ditto/sinks/kafka"
	_ "github.com/ditto-replicator/ditto/sinks/kinesis"
	_ "github.com/ditto-replicator/ditto/sinks/stdout"
)
