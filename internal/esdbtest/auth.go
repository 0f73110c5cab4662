package esdbtest

import "context"

type userKey struct{}

// withUser records the authenticated user name on the call's context.
func withUser(ctx context.Context, user string) context.Context {
	return context.WithValue(ctx, userKey{}, user)
}

// userFromContext is the authenticated user of the call, or "anonymous".
func userFromContext(ctx context.Context) string {
	if u, ok := ctx.Value(userKey{}).(string); ok && u != "" {
		return u
	}
	return "anonymous"
}
