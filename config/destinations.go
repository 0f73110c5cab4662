package config

import (
	"fmt"
	"os"
	"regexp"
	"strings"

	"github.com/ditto-replicator/ditto/sinks"
)

// Destination is one destination of DITTO_DESTINATIONS: a named instance of
// a sink, whose settings are the sink's usual variables with the name
// inserted after DITTO_ (DITTO_EAST_DESTINATION_CONNECTION_STRING).
type Destination struct {
	Name     string         // as in DITTO_DESTINATIONS, e.g. east
	Sink     string         // the registered sink, e.g. eventstore
	Settings sinks.Settings // nil for a sink without settings, or in read-only mode
	// renames maps each of the sink's own variables to this destination's.
	renames map[string]string
}

// Prefix is the prefix of the destination's variables, e.g. DITTO_EAST.
func (d Destination) Prefix() string { return Prefix + "_" + strings.ToUpper(d.Name) }

// variableName matches the name of a DITTO_ variable in a message.
var variableName = regexp.MustCompile(`\bDITTO_[A-Z0-9_]+`)

// Rename rewrites the sink's own variable names in msg to the destination's:
// sinks name their un-prefixed variables in Validate's problems and in their
// errors, which for a destination of DITTO_DESTINATIONS must name the
// variable the operator sets.
func (d Destination) Rename(msg string) string {
	if len(d.renames) == 0 {
		return msg
	}
	return variableName.ReplaceAllStringFunc(msg, func(name string) string {
		if to, ok := d.renames[name]; ok {
			return to
		}
		return name
	})
}

// destinationName is what a destination may be called: it becomes part of
// variable names and metric labels.
var destinationName = regexp.MustCompile(`^[a-z0-9]+$`)

// ParseDestinations parses "name=sink,name=sink" and returns every problem
// with it; each sink must be registered.
func ParseDestinations(s string) ([]Destination, []string) {
	var dests []Destination
	var problems []string
	bad := func(format string, args ...any) {
		problems = append(problems, fmt.Sprintf("%s_DESTINATIONS=%q: %s", Prefix, s, fmt.Sprintf(format, args...)))
	}
	seen := map[string]bool{}
	for _, item := range strings.Split(s, ",") {
		item = strings.TrimSpace(item)
		name, sink, ok := strings.Cut(item, "=")
		name, sink = strings.TrimSpace(name), strings.TrimSpace(sink)
		switch {
		case !ok || sink == "":
			bad("%q is not name=sink", item)
			continue
		case !destinationName.MatchString(name):
			bad("destination name %q must be lowercase letters and digits (it becomes part of variable names: %s_<NAME>_...)", name, Prefix)
			continue
		case seen[name]:
			bad("destination %s is listed twice", name)
			continue
		}
		seen[name] = true
		if _, known := sinks.Lookup(sink); !known {
			bad("destination %s: %q is not a known sink: expected %s", name, sink, sinkNames())
			continue
		}
		dests = append(dests, Destination{Name: name, Sink: sink})
	}
	if len(dests) == 0 && len(problems) == 0 {
		bad("no destination given")
	}
	return dests, problems
}

// loadDestinations parses DITTO_DESTINATIONS and loads each destination's
// settings from its prefixed variables. A value that does not parse is
// returned as the error, alone, as in Load.
func (c *Config) loadDestinations() ([]string, error) {
	var problems []string
	if os.Getenv(Prefix+"_SINK") != "" {
		problems = append(problems, fmt.Sprintf("%s_DESTINATIONS and %s_SINK are both set: with %s_DESTINATIONS each destination names its sink; unset %s_SINK",
			Prefix, Prefix, Prefix, Prefix))
	}
	c.Sink = ""
	dests, bad := ParseDestinations(c.Destinations)
	problems = append(problems, bad...)
	if len(bad) > 0 || c.ReadOnly {
		// A read-only run opens no sink, so its variables are not read.
		c.DestinationList = dests
		return problems, nil
	}
	own := map[string]bool{}
	for _, v := range Variables() {
		own[v.Name] = true
	}
	unprefixed := map[string]bool{}
	writers := 0
	for i := range dests {
		d := &dests[i]
		p, _ := sinks.Lookup(d.Sink)
		writers = max(writers, p.Writers)
		if p.Settings == nil {
			continue
		}
		vars := fields(p.Settings(), p.Name)
		d.renames = make(map[string]string, len(vars))
		clash := false
		for _, v := range vars {
			to := d.Prefix() + strings.TrimPrefix(v.Name, Prefix)
			d.renames[v.Name] = to
			if own[to] {
				problems = append(problems, fmt.Sprintf("%s_DESTINATIONS: destination name %s makes %s, which is another variable of ditto's; choose another name", Prefix, d.Name, to))
				clash = true
			}
		}
		if clash {
			continue
		}
		settings, more, err := loadSettings(p, d.Prefix(), d.Rename, fmt.Sprintf("for destination %s (%s=%s)", d.Name, d.Name, d.Sink))
		if err != nil {
			return nil, err
		}
		d.Settings = settings
		problems = append(problems, more...)
		for _, v := range vars {
			if os.Getenv(v.Name) != "" && !unprefixed[v.Name] {
				unprefixed[v.Name] = true
				problems = append(problems, fmt.Sprintf("%s is set, but with %s_DESTINATIONS each destination reads its own (%s for destination %s); unset it", v.Name, Prefix, d.renames[v.Name], d.Name))
			}
		}
	}
	c.sinkWriters(writers)
	c.DestinationList = dests
	return problems, nil
}
