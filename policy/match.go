package policy

import (
	"bytes"
	"fmt"
	"regexp"
	"slices"
	"strings"
)

// matcher is one filter item: a prefix, or a RE2 expression written between
// slashes.
type matcher struct {
	prefix string
	re     *regexp.Regexp
}

func (m matcher) match(s string) bool {
	if m.re != nil {
		return m.re.MatchString(s)
	}
	return strings.HasPrefix(s, m.prefix)
}

// matchers are the include and exclude items of one kind. A value passes if
// it matches an include (when any is set) and no exclude.
type matchers struct {
	include, exclude []matcher
}

func (ms matchers) empty() bool { return len(ms.include) == 0 && len(ms.exclude) == 0 }

func (ms matchers) match(s string) bool {
	if len(ms.include) > 0 && !anyMatch(ms.include, s) {
		return false
	}
	return !anyMatch(ms.exclude, s)
}

func anyMatch(ms []matcher, s string) bool {
	for _, m := range ms {
		if m.match(s) {
			return true
		}
	}
	return false
}

// parseMatchers parses a comma-separated list of prefixes and /regexps/.
func parseMatchers(name, value string) ([]matcher, []string) {
	var ms []matcher
	var problems []string
	for _, item := range items(value) {
		if len(item) >= 2 && item[0] == '/' && item[len(item)-1] == '/' {
			re, err := regexp.Compile(item[1 : len(item)-1])
			if err != nil {
				problems = append(problems, fmt.Sprintf("%s: %s is not a valid regular expression (RE2 syntax): %v", name, item, err))
				continue
			}
			ms = append(ms, matcher{re: re})
			continue
		}
		ms = append(ms, matcher{prefix: item})
	}
	return ms, problems
}

// items splits a comma-separated value. A backslash before a comma keeps the
// comma in the item (as in DITTO_SUBSCRIPTIONS); every other backslash is
// kept as it is, so that regular expressions such as /\d+/ need no doubling.
// Items are trimmed; empty ones are ignored.
func items(value string) []string {
	var out []string
	var b strings.Builder
	flush := func() {
		if s := strings.TrimSpace(b.String()); s != "" {
			out = append(out, s)
		}
		b.Reset()
	}
	for i := 0; i < len(value); i++ {
		switch {
		case value[i] == '\\' && i+1 < len(value) && value[i+1] == ',':
			b.WriteByte(',')
			i++
		case value[i] == ',':
			flush()
		default:
			b.WriteByte(value[i])
		}
	}
	flush()
	return out
}

// metaMatcher is one key=value item: the event's metadata is a JSON object
// whose top-level key holds a string equal to value, or a number, boolean or
// null whose JSON text equals value.
type metaMatcher struct {
	key, value string
}

type metaMatchers struct {
	include, exclude []metaMatcher
}

func parseMetaMatchers(name, value string) ([]metaMatcher, []string) {
	var ms []metaMatcher
	var problems []string
	for _, item := range items(value) {
		k, v, ok := strings.Cut(item, "=")
		k = strings.TrimSpace(k)
		if !ok || k == "" {
			problems = append(problems, fmt.Sprintf("%s: %q is not key=value", name, item))
			continue
		}
		ms = append(ms, metaMatcher{key: k, value: strings.TrimSpace(v)})
	}
	return ms, problems
}

func (ms metaMatchers) empty() bool { return len(ms.include) == 0 && len(ms.exclude) == 0 }

func (ms metaMatchers) match(metadata []byte) bool {
	if ms.empty() {
		return true
	}
	// Metadata that is not an object holds no key: it matches no include
	// and no exclude. Any Unicode white space around the object is ignored.
	var mb memberBuf
	obj, err := members(mb[:0], bytes.TrimSpace(metadata))
	if err != nil {
		obj = nil
	}
	if len(ms.include) > 0 && !anyMeta(ms.include, obj) {
		return false
	}
	return !anyMeta(ms.exclude, obj)
}

func anyMeta(ms []metaMatcher, obj []member) bool {
	for _, m := range ms {
		i := slices.IndexFunc(obj, func(o member) bool { return o.key == m.key })
		if i < 0 {
			continue
		}
		raw := obj[i].value
		if raw[0] == '"' {
			if s, err := decodeString(raw); err == nil && s == m.value {
				return true
			}
			continue
		}
		if string(raw) == m.value {
			return true
		}
	}
	return false
}
