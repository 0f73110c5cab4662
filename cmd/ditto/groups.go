package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/ditto-replicator/ditto/config"
	"github.com/ditto-replicator/ditto/internal/groups"
)

const groupsUsage = `Usage: ditto groups copy [--groups stream:group,...] [--dry-run] [--replace] [--json]

Copies persistent subscription groups from the source (DITTO_SOURCE_CONNECTION_STRING) to the
destination (DITTO_DESTINATION_CONNECTION_STRING) with their settings, each starting on the
destination at the first event after its source checkpoint (mapped through the original
streams, so category numbers may differ). Without --groups it copies every group of the streams
in DITTO_SUBSCRIPTIONS except ditto's own. A group that exists on the destination is left as it
is unless --replace. Exit code 0 when every group is copied (or exists), 1 if one failed, 2 on
bad input.
`

// groupsCmd runs `ditto groups ...`.
func groupsCmd(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] != "copy" {
		if len(args) > 0 && (args[0] == "-h" || args[0] == "--help" || args[0] == "help") {
			fmt.Fprint(stdout, groupsUsage)
			return 0
		}
		fmt.Fprint(stderr, "ditto groups: expected the subcommand copy\n\n"+groupsUsage)
		return 2
	}
	fs := flag.NewFlagSet("ditto groups copy", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, groupsUsage) }
	only := fs.String("groups", "", "comma-separated stream:group pairs to copy (default: every group of DITTO_SUBSCRIPTIONS' streams but ditto's own)")
	dryRun := fs.Bool("dry-run", false, "compute and print where each group would start; create nothing")
	replace := fs.Bool("replace", false, "delete a group that exists on the destination and create it anew")
	asJSON := fs.Bool("json", false, "print the results as JSON")
	if code, ok := parseFlags(fs, args[1:], stderr); !ok {
		return code
	}
	srcCS, dstCS, subs, problems := clusterVariables("ditto groups copy")
	opts := groups.Options{DryRun: *dryRun, Replace: *replace}
	seen := map[string]bool{}
	for _, sub := range subs {
		opts.Exclude = append(opts.Exclude, groups.Group{Stream: sub.Stream, Name: sub.Group})
		if !seen[sub.Stream] {
			seen[sub.Stream] = true
			opts.Streams = append(opts.Streams, sub.Stream)
		}
	}
	if *only != "" {
		subs, err := config.ParseSubscriptions(*only)
		if err != nil {
			problems = append(problems, fmt.Sprintf("--groups=%q: %v", *only, err))
		}
		for _, sub := range subs {
			opts.Groups = append(opts.Groups, groups.Group{Stream: sub.Stream, Name: sub.Group})
		}
	} else if os.Getenv("DITTO_SUBSCRIPTIONS") == "" {
		problems = append(problems, "DITTO_SUBSCRIPTIONS or --groups is required by ditto groups copy: it says which streams' groups to copy")
	}
	if len(problems) > 0 {
		fmt.Fprintln(stderr, "ditto groups copy: "+(&config.Error{Problems: problems}).Error())
		return 2
	}
	src, dst, ok := connectClusters("ditto groups copy", srcCS, dstCS, stderr)
	if !ok {
		return 2
	}
	defer src.Close()
	defer dst.Close()
	results, err := groups.Copy(ctx, src, dst, opts)
	if err != nil {
		fmt.Fprintf(stderr, "ditto groups copy: %v\n", err)
		return 1
	}
	if *asJSON {
		printJSON(stdout, results)
	} else {
		printGroups(stdout, results, opts)
	}
	for _, r := range results {
		if r.Outcome == groups.OutcomeFailed {
			return 1
		}
	}
	return 0
}

func printGroups(w io.Writer, results []groups.Result, opts groups.Options) {
	if len(results) == 0 {
		fmt.Fprintf(w, "no groups to copy on %v (ditto's own groups are left out)\n", opts.Streams)
		return
	}
	for _, r := range results {
		if r.Outcome == groups.OutcomeFailed {
			fmt.Fprintf(w, "%s: failed: %s\n", r.Group, r.Error)
			continue
		}
		from := "no checkpoint on the source, the group's own start"
		if r.Checkpoint != nil {
			from = fmt.Sprintf("source checkpoint %d", *r.Checkpoint)
		}
		what := map[string]string{
			groups.OutcomeCreated:  "created",
			groups.OutcomeReplaced: "replaced",
			groups.OutcomeExists:   "exists on the destination, left as it is (--replace recreates it)",
			groups.OutcomePlanned:  "dry run, nothing created",
		}[r.Outcome]
		fmt.Fprintf(w, "%s: %s: destination start %d (%s, next %d; %d events after it, %d streams not copied yet; %d events before it delivered again)\n",
			r.Group, what, r.Start, from, r.Next, r.After, r.NotYetCopied, r.Replays)
	}
}
