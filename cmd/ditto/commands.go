package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/EventStore/EventStore-Client-Go/v4/esdb"
	"github.com/rs/zerolog"

	"github.com/ditto-replicator/ditto/config"
)

// What the commands beside the replicator (ditto verify, groups copy,
// status) share.

// clusterVariables reads what ditto verify and ditto groups copy take of
// ditto's variables: both connection strings, which cmd requires, and
// DITTO_SUBSCRIPTIONS, which may be unset. Each problem names its variable.
func clusterVariables(cmd string) (srcCS, dstCS string, subs []config.Subscription, problems []string) {
	need := func(name string) string {
		v := os.Getenv(name)
		if v == "" {
			problems = append(problems, name+" is required by "+cmd)
		}
		return v
	}
	srcCS, dstCS = need("DITTO_SOURCE_CONNECTION_STRING"), need("DITTO_DESTINATION_CONNECTION_STRING")
	if s := os.Getenv("DITTO_SUBSCRIPTIONS"); s != "" {
		var err error
		if subs, err = config.ParseSubscriptions(s); err != nil {
			problems = append(problems, fmt.Sprintf("DITTO_SUBSCRIPTIONS=%q: %v", s, err))
		}
	}
	return srcCS, dstCS, subs, problems
}

// connectClusters makes a client of each connection string. On an error it
// prints it, naming the variable, closes what it made and returns ok false.
func connectClusters(cmd, srcCS, dstCS string, stderr io.Writer) (src, dst *esdb.Client, ok bool) {
	src, err := newClient(srcCS, zerolog.Nop())
	if err != nil {
		fmt.Fprintf(stderr, "%s: DITTO_SOURCE_CONNECTION_STRING: %v\n", cmd, err)
		return nil, nil, false
	}
	if dst, err = newClient(dstCS, zerolog.Nop()); err != nil {
		src.Close()
		fmt.Fprintf(stderr, "%s: DITTO_DESTINATION_CONNECTION_STRING: %v\n", cmd, err)
		return nil, nil, false
	}
	return src, dst, true
}

// parseFlags parses args into fs, whose command takes no arguments. Unless
// ok, the command ends with code: 0 after --help, 2 on bad input (the flag
// package has printed why).
func parseFlags(fs *flag.FlagSet, args []string, stderr io.Writer) (code int, ok bool) {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0, false
		}
		return 2, false
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "%s: unexpected arguments %q\n", fs.Name(), fs.Args())
		return 2, false
	}
	return 0, true
}

// printJSON writes v as indented JSON, the form of the commands' --json.
func printJSON(w io.Writer, v any) {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}
