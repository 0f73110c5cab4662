package verify

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"

	"github.com/EventStore/EventStore-Client-Go/v4/esdb"

	"github.com/ditto-replicator/ditto/policy"
)

// Exit codes of Main, chosen so that scripts and CI can tell "replica differs" from "could not
// check".
const (
	ExitIdentical = 0
	ExitDiverged  = 1
	ExitError     = 2
)

// listFlag collects a flag that may be repeated and may hold a comma-separated list.
type listFlag []string

func (l *listFlag) String() string { return strings.Join(*l, ",") }

func (l *listFlag) Set(v string) error {
	for part := range strings.SplitSeq(v, ",") {
		if part = strings.TrimSpace(part); part != "" {
			*l = append(*l, part)
		}
	}
	return nil
}

// Defaults are what ditto's configuration says of a comparison: the categories it replicates,
// compared when no flag names streams, and its selective-replication policy (nil: none).
type Defaults struct {
	Categories []string
	Policy     *policy.Policy
}

// Main runs the `ditto verify` subcommand with args (without the subcommand name) and returns
// the process exit code: ExitIdentical, ExitDiverged on any divergence, ExitError on a usage or
// connection error. The report goes to stdout, progress and errors to stderr.
//
// Flags: --streams a,b,c and --category NAME (both repeatable or comma lists; a category without
// a leading "$" means "$ce-NAME"), --json, --page-size N. Without --streams or --category,
// def.Categories (the categories ditto replicates) are compared, under def.Policy.
func Main(ctx context.Context, src, dst *esdb.Client, def Defaults, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("ditto verify", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var streams, categories listFlag
	fs.Var(&streams, "streams", "original streams to compare, comma-separated or repeated (exclusive with --category)")
	fs.Var(&categories, "category", "category stream such as '$ce-customer' (or just 'customer') whose linked streams are compared; comma-separated or repeated")
	asJSON := fs.Bool("json", false, "write the report as JSON")
	pageSize := fs.Int("page-size", DefaultPageSize, "events read per request and side")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: ditto verify [--streams a,b | --category '$ce-customer'] [--json] [--page-size N]\n\n"+
			"Compares source and destination event by event. Exit code 0: identical, 1: diverged, 2: error.\n\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return ExitIdentical
		}
		return ExitError // the flag package has already printed the error and the usage
	}
	usage := func(format string, a ...any) int {
		fmt.Fprintf(stderr, "ditto verify: "+format+"\n", a...)
		fs.Usage()
		return ExitError
	}
	switch {
	case fs.NArg() > 0:
		return usage("unexpected arguments: %s", strings.Join(fs.Args(), " "))
	case *pageSize <= 0:
		return usage("--page-size must be positive, got %d", *pageSize)
	case len(streams) > 0 && len(categories) > 0:
		return usage("--streams and --category are exclusive")
	}
	if len(streams) == 0 && len(categories) == 0 {
		categories = def.Categories
	}
	if len(streams) == 0 && len(categories) == 0 {
		return usage("nothing to compare: give --streams or --category")
	}
	if src == nil || dst == nil {
		fmt.Fprintln(stderr, "ditto verify: source and destination connections are required")
		return ExitError
	}

	rep, err := Compare(ctx, src, dst, Options{
		Streams:    streams,
		Categories: categories,
		PageSize:   *pageSize,
		Progress:   stderr,
		Policy:     def.Policy,
	})
	if err != nil {
		fmt.Fprintf(stderr, "ditto verify: %v\n", err)
		return ExitError
	}
	if *asJSON {
		err = rep.WriteJSON(stdout)
	} else {
		err = rep.WriteText(stdout)
	}
	if err != nil {
		fmt.Fprintf(stderr, "ditto verify: %v\n", err)
		return ExitError
	}
	if !rep.OK() {
		return ExitDiverged
	}
	return ExitIdentical
}
