package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/rs/zerolog"

	"github.com/ditto-replicator/ditto/config"
	"github.com/ditto-replicator/ditto/verify"
)

// verifyCmd runs `ditto verify`: it needs only the two connection strings;
// DITTO_SUBSCRIPTIONS, when set, gives the default categories to compare, and
// the selective-replication variables the policy the copy was made under.
func verifyCmd(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	var problems []string
	need := func(name string) string {
		v := os.Getenv(name)
		if v == "" {
			problems = append(problems, name+" is required by ditto verify")
		}
		return v
	}
	srcCS, dstCS := need("DITTO_SOURCE_CONNECTION_STRING"), need("DITTO_DESTINATION_CONNECTION_STRING")
	var categories []string
	if s := os.Getenv("DITTO_SUBSCRIPTIONS"); s != "" {
		subs, err := config.ParseSubscriptions(s)
		if err != nil {
			problems = append(problems, fmt.Sprintf("DITTO_SUBSCRIPTIONS=%q: %v", s, err))
		}
		for _, sub := range subs {
			categories = append(categories, sub.Stream)
		}
	}
	pol, err := config.LoadPolicy()
	var ce *config.Error
	if errors.As(err, &ce) {
		problems = append(problems, ce.Problems...)
	} else if err != nil {
		problems = append(problems, err.Error())
	}
	if len(problems) > 0 {
		fmt.Fprintln(stderr, "ditto verify: "+(&config.Error{Problems: problems}).Error())
		return verify.ExitError
	}
	src, err := newClient(srcCS, zerolog.Nop())
	if err != nil {
		fmt.Fprintf(stderr, "ditto verify: DITTO_SOURCE_CONNECTION_STRING: %v\n", err)
		return verify.ExitError
	}
	defer src.Close()
	dst, err := newClient(dstCS, zerolog.Nop())
	if err != nil {
		fmt.Fprintf(stderr, "ditto verify: DITTO_DESTINATION_CONNECTION_STRING: %v\n", err)
		return verify.ExitError
	}
	defer dst.Close()
	return verify.Main(ctx, src, dst, verify.Defaults{Categories: categories, Policy: pol}, args, stdout, stderr)
}
