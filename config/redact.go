package config

import (
	"net/url"
	"regexp"
	"strings"
)

// userInfo matches the user:password@ part of a connection string, also in
// strings that url.Parse rejects (several hosts, bad ports).
var userInfo = regexp.MustCompile(`(://)([^/@:]*):([^/@]*)@`)

// Redact hides the password of a connection string, and a password query
// parameter, so the string can be logged.
func Redact(cs string) string {
	out := userInfo.ReplaceAllString(cs, "${1}${2}:xxxxx@")
	if i := strings.IndexByte(out, '?'); i >= 0 {
		q, err := url.ParseQuery(out[i+1:])
		if err == nil {
			changed := false
			for k := range q {
				if strings.EqualFold(k, "password") {
					q.Set(k, "xxxxx")
					changed = true
				}
			}
			if changed {
				out = out[:i+1] + q.Encode()
			}
		}
	}
	return out
}

// RedactErr returns err's text with the connection string's password removed,
// in case the parser quoted it.
func RedactErr(err error, cs string) string {
	msg := err.Error()
	if m := userInfo.FindStringSubmatch(cs); m != nil && m[3] != "" {
		msg = strings.ReplaceAll(msg, m[3], "xxxxx")
	}
	return strings.ReplaceAll(msg, cs, Redact(cs))
}
