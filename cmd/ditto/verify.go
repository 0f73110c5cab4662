package main

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/ditto-replicator/ditto/config"
	"github.com/ditto-replicator/ditto/verify"
)

// verifyCmd runs `ditto verify`: it needs only the two connection strings;
// DITTO_SUBSCRIPTIONS, when set, gives the default categories to compare, and
// the selective-replication variables the policy the copy was made under.
func verifyCmd(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	srcCS, dstCS, subs, problems := clusterVariables("ditto verify")
	var categories []string
	for _, sub := range subs {
		categories = append(categories, sub.Stream)
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
	src, dst, ok := connectClusters("ditto verify", srcCS, dstCS, stderr)
	if !ok {
		return verify.ExitError
	}
	defer src.Close()
	defer dst.Close()
	return verify.Main(ctx, src, dst, verify.Defaults{Categories: categories, Policy: pol}, args, stdout, stderr)
}
