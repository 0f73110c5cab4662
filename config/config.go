// Package config loads ditto's settings from DITTO_* environment variables and
// validates all of them up front, so that a bad value stops the process at
// start with a message naming the variable.
package config

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"reflect"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/EventStore/EventStore-Client-Go/v4/esdb"
	"github.com/kelseyhightower/envconfig"

	"github.com/ditto-replicator/ditto/policy"
	"github.com/ditto-replicator/ditto/replicator/conflict"
	"github.com/ditto-replicator/ditto/sinks"
)

// Prefix is the prefix of every environment variable ditto reads.
const Prefix = "DITTO"

// Config is every setting of ditto. Each field is declared once, with its
// variable, default and description; `ditto config` and README's table are
// generated from these tags.
type Config struct {
	SourceConnectionString      string        `envconfig:"SOURCE_CONNECTION_STRING" ditto:"required" secret:"true" desc:"KurrentDB/EventStoreDB connection string of the source cluster (esdb://user:pass@host:2113?tls=true...)."`
	Subscriptions               string        `envconfig:"SUBSCRIPTIONS" ditto:"required" desc:"Comma-separated stream:group pairs to read, e.g. $ce-customer:ditto-customer,$ce-order:ditto-order. Escape a literal ',' or ':' in a name with a backslash."`
	Sink                        string        `envconfig:"SINK" default:"eventstore" desc:"Where events go: the name of a sink (eventstore appends to the original stream on a destination cluster); each sink's own variables are listed under it."`
	Destinations                string        `envconfig:"DESTINATIONS" desc:"Fan-out instead of DITTO_SINK: comma-separated name=sink pairs, e.g. dr=eventstore,feed=kinesis; an event is acked on the source only once every destination has it. Names are lowercase letters and digits. Each destination reads its sink's variables with its name, uppercased, inserted after DITTO_: DITTO_DR_DESTINATION_CONNECTION_STRING, DITTO_FEED_KINESIS_STREAM_NAME. DITTO_SINK and the un-prefixed variables of those sinks must then be unset."`
	BufferSize                  int           `envconfig:"BUFFER_SIZE" default:"10000" desc:"Persistent-subscription buffer size: events in flight per consumer connection (1-100000). Batches can only be as large as the events of one stream among those in flight, so with many interleaved streams a larger buffer means fewer, larger appends; memory grows by about 700 bytes plus the event's data and metadata per event in flight, and an event waits about buffer size / write rate before it is written, so keep that well below the group's message timeout."`
	ConsumersPerSubscription    int           `envconfig:"CONSUMERS_PER_SUBSCRIPTION" default:"1" desc:"Consumer connections per subscription group in this process (1-64)."`
	ReplicationThrottleInterval time.Duration `envconfig:"REPLICATION_THROTTLE_INTERVAL" default:"0s" desc:"Minimum pause between two writes of this process, to spare the destination (0 = no throttle)."`
	ReadOnly                    bool          `envconfig:"READ_ONLY" default:"false" desc:"Receive, log and ack events without writing anything (a dry run)."`
	CreateSubscriptions         bool          `envconfig:"CREATE_SUBSCRIPTIONS" default:"false" desc:"Create a missing subscription group (resolve links on, Pinned, from the start) instead of failing."`
	Writers                     int           `envconfig:"WRITERS" default:"32" desc:"Streams written concurrently (lanes in flight); events of one stream are always written in order (1-1024)."`
	BatchMaxEvents              int           `envconfig:"BATCH_MAX_EVENTS" default:"500" desc:"Most events of one stream written in one append (1-10000)."`
	BatchMaxBytes               int           `envconfig:"BATCH_MAX_BYTES" default:"1000000" desc:"Most bytes (data + metadata + type) in one append; keep it below the destination's maximum append size (1 MiB by default)."`
	WriteRetries                int           `envconfig:"WRITE_RETRIES" default:"8" desc:"Attempts at a write that fails transiently (or waits for an earlier event) before its events are handed back to the source for redelivery (1-1000)."`
	RetryBackoffMax             time.Duration `envconfig:"RETRY_BACKOFF_MAX" default:"5s" desc:"Longest pause between two attempts at a write; pauses grow exponentially from 50ms with jitter."`
	ShutdownTimeout             time.Duration `envconfig:"SHUTDOWN_TIMEOUT" default:"30s" desc:"On SIGTERM/SIGINT, how long in-flight writes may take to finish and be acked before the process exits anyway (unacked events are redelivered)."`
	RecoveryPointInterval       time.Duration `envconfig:"RECOVERY_POINT_INTERVAL" default:"15s" desc:"How often ditto_recovery_point_events and _seconds are refreshed: for each group, the events after its source checkpoint are read (up to 10,000) and looked up on the destination (0 = never; at least 1s)."`
	MetricsAddress              string        `envconfig:"METRICS_ADDRESS" default:":5000" desc:"Listen address of /metrics, /health/live and /health/ready (empty = off)."`
	LogLevel                    string        `envconfig:"LOG_LEVEL" default:"info" desc:"debug, info, warn or error. debug logs one line per written batch."`
	LogFormat                   string        `envconfig:"LOG_FORMAT" default:"json" desc:"json or console."`

	// Selective replication (package policy): they apply to every sink.
	IncludeStreams          string `envconfig:"INCLUDE_STREAMS" desc:"Replicate only original streams matching one of these comma-separated items: a prefix (customer-) or a RE2 regular expression between slashes (/^customer-\\d+$/); a backslash before a comma keeps it in the item. Whole streams are kept or dropped, so this keeps the plain copy's numbering."`
	ExcludeStreams          string `envconfig:"EXCLUDE_STREAMS" desc:"Do not replicate original streams matching one of these items (as DITTO_INCLUDE_STREAMS)."`
	IncludeEventTypes       string `envconfig:"INCLUDE_EVENT_TYPES" desc:"Replicate only events whose type matches one of these items (prefixes or /regexps/). Drops events inside streams: destination numbers become the destination's own, and provenance is written."`
	ExcludeEventTypes       string `envconfig:"EXCLUDE_EVENT_TYPES" desc:"Do not replicate events whose type matches one of these items (as DITTO_INCLUDE_EVENT_TYPES)."`
	IncludeMetadata         string `envconfig:"INCLUDE_METADATA" desc:"Replicate only events whose metadata is a JSON object with one of these comma-separated key=value pairs at its top level (a string equal to value, or a number, boolean or null written as value). Drops events inside streams, as DITTO_INCLUDE_EVENT_TYPES."`
	ExcludeMetadata         string `envconfig:"EXCLUDE_METADATA" desc:"Do not replicate events whose metadata holds one of these key=value pairs (as DITTO_INCLUDE_METADATA)."`
	IncludeSystemEventTypes bool   `envconfig:"INCLUDE_SYSTEM_EVENT_TYPES" default:"false" desc:"Where events are dropped inside streams or consolidated, $-prefixed event types are dropped too unless this is true. (A plain or mapped copy keeps every event of a kept stream.)"`
	StreamTemplate          string `envconfig:"STREAM_TEMPLATE" default:"{stream}" desc:"Name of the destination stream, from the original stream's {stream}, {category} (before its first '-') and {id} (after it), e.g. dr-{stream} or {category}-replica-{id}. A template with neither {stream} nor {id} (all-customers, {category}-all) consolidates many streams into one, in subscription order."`
	Provenance              bool   `envconfig:"PROVENANCE" default:"false" desc:"Add provenance to JSON-object metadata: $originalStreamId, $originalEventNumber, $originalCreated, $origin and a SHA-256 content $signature. Always on where events are filtered inside streams or consolidated."`
	OriginName              string `envconfig:"ORIGIN_NAME" desc:"A name for the source cluster, appended to the $origin chain of every event written with provenance."`
	DestinationName         string `envconfig:"DESTINATION_NAME" desc:"A name for the destination cluster, the one its own deployments give it in DITTO_ORIGIN_NAME. An event whose $origin chain holds it came from there and is not written back (acked, counted in ditto_events_filtered_total with reason origin), so that A→B and B→A do not loop. It also says the destination takes writes of its own: before ditto appends after an event it did not write or check, it checks that the destination's event there is the source's. Needs DITTO_ORIGIN_NAME and DITTO_PROVENANCE=true; not with DITTO_DESTINATIONS."`
	ConflictPolicy          string `envconfig:"CONFLICT_POLICY" default:"park" desc:"What becomes of the events of a destination stream that diverged (it holds other events at their numbers, e.g. written on both sides of an active/active pair): park (nack-park each with the reason), conflict-stream (append each, with the reason in its metadata, to DITTO_CONFLICT_STREAM on the destination, then ack) or skip (ack without writing, logged). Counted in ditto_events_conflicts_total; the diverged stream is never written over. conflict-stream is not for DITTO_DESTINATIONS."`
	ConflictStream          string `envconfig:"CONFLICT_STREAM" desc:"With DITTO_CONFLICT_POLICY=conflict-stream, the destination stream that conflicting events are appended to. Default ditto-conflicts-<DITTO_ORIGIN_NAME>-<DITTO_DESTINATION_NAME>, or ditto-conflicts where either is unset."`
	CopyStreamMetadata      bool   `envconfig:"COPY_STREAM_METADATA" default:"false" desc:"Copy each source stream's metadata ($maxAge, $maxCount, $cacheControl, custom keys; not $tb, not $acl) to its destination stream when ditto first writes it, and again within a minute of a change on the source. DITTO_TIME_TO_LIVE overrides $maxAge. Only for sinks that keep streams (eventstore), not for consolidated streams."`
	CopyStreamACL           bool   `envconfig:"COPY_STREAM_ACL" default:"false" desc:"With DITTO_COPY_STREAM_METADATA, copy $acl too (the destination must know the same users and roles)."`

	// Policy is the compiled selective-replication policy.
	Policy *policy.Policy `ignored:"true"`
	// Conflicts is the parsed DITTO_CONFLICT_POLICY; ConflictStream holds
	// its default once loaded.
	Conflicts conflict.Policy `ignored:"true"`

	// SinkSettings are the settings of the sink DITTO_SINK names, loaded
	// from its own variables (nil in read-only mode or for a sink without
	// settings).
	SinkSettings sinks.Settings `ignored:"true"`
	// DestinationList is the parsed DITTO_DESTINATIONS with each
	// destination's settings (nil without fan-out; Sink is then "").
	DestinationList []Destination `ignored:"true"`
}

// Subscription is one persistent subscription group to read.
type Subscription struct {
	Stream string
	Group  string
}

func (s Subscription) String() string { return s.Stream + ":" + s.Group }

// Error lists every problem found in the environment; each names its variable.
type Error struct{ Problems []string }

func (e *Error) Error() string {
	return "invalid configuration:\n  " + strings.Join(e.Problems, "\n  ")
}

// Load reads and validates the configuration from the environment, with the
// settings of the sink DITTO_SINK names. Every missing or invalid value is
// reported at once, except that a value that does not parse at all
// (envconfig stops at the first) is reported alone.
func Load() (*Config, error) {
	var c Config
	if err := process(&c); err != nil {
		return nil, err
	}
	problems := c.validate()
	if c.Destinations != "" {
		more, err := c.loadDestinations()
		if err != nil {
			return nil, err
		}
		if problems = append(problems, more...); len(problems) > 0 {
			return nil, &Error{Problems: problems}
		}
		return &c, nil
	}
	p, ok := sinks.Lookup(c.Sink)
	if !ok {
		problems = append(problems, fmt.Sprintf("%s_SINK=%q is not a known sink: expected %s", Prefix, c.Sink, sinkNames()))
	}
	if ok && c.CopyStreamMetadata && !p.StreamMetadata {
		problems = append(problems, fmt.Sprintf("%s_COPY_STREAM_METADATA=true: the %s sink has no stream metadata to set", Prefix, p.Name))
	}
	// A read-only run opens no sink, so its variables are not read.
	if ok && !c.ReadOnly {
		if p.Settings != nil {
			settings, more, err := loadSettings(p, Prefix, nil, fmt.Sprintf("when %s_SINK=%s", Prefix, p.Name))
			if err != nil {
				return nil, err
			}
			c.SinkSettings = settings
			problems = append(problems, more...)
		}
		c.sinkWriters(p.Writers)
	}
	if len(problems) > 0 {
		return nil, &Error{Problems: problems}
	}
	return &c, nil
}

// loadSettings loads the settings of sink p from its variables under
// prefix (DITTO, or DITTO_<NAME> for a destination of DITTO_DESTINATIONS)
// and lists what is wrong with them: each required variable that is unset
// (why says when it is required), then the problems Validate finds. rename,
// if set, turns the sink's own variable names into those read, in both. A
// value that does not parse is the error, alone, as in Load.
func loadSettings(p sinks.Plugin, prefix string, rename func(string) string, why string) (sinks.Settings, []string, error) {
	if rename == nil {
		rename = func(s string) string { return s }
	}
	settings := p.Settings()
	if err := processPrefix(prefix, settings); err != nil {
		return nil, nil, err
	}
	var problems []string
	for _, v := range fields(settings, p.Name) {
		if name := rename(v.Name); v.Required && os.Getenv(name) == "" {
			problems = append(problems, fmt.Sprintf("%s is required %s: %s", name, why, v.Description))
		}
	}
	for _, msg := range settings.Validate() {
		problems = append(problems, rename(msg))
	}
	return settings, problems, nil
}

// sinkWriters makes n, the sinks' own default of DITTO_WRITERS (0: none),
// the number of writers, unless DITTO_WRITERS is set.
func (c *Config) sinkWriters(n int) {
	if n > 0 && os.Getenv(Prefix+"_WRITERS") == "" {
		c.Writers = n
	}
}

// process loads spec's fields from the environment. A value that does not
// parse is reported with its variable (redacted if secret).
func process(spec any) error { return processPrefix(Prefix, spec) }

// processPrefix is process with the variables' prefix given: DITTO, or
// DITTO_<NAME> for a destination of DITTO_DESTINATIONS.
func processPrefix(prefix string, spec any) error {
	err := envconfig.Process(prefix, spec)
	if err == nil {
		return nil
	}
	var pe *envconfig.ParseError
	if errors.As(err, &pe) {
		shown, why := pe.Value, pe.Err.Error()
		if f, ok := reflect.TypeOf(spec).Elem().FieldByName(pe.FieldName); ok && f.Tag.Get("secret") == "true" {
			// The parser's error quotes the value too.
			shown, why = Redact(shown), RedactErr(pe.Err, pe.Value)
		}
		return &Error{Problems: []string{fmt.Sprintf("%s=%q is not a valid %s: %s", pe.KeyName, shown, typeName(pe.TypeName), why)}}
	}
	return &Error{Problems: []string{err.Error()}}
}

func sinkNames() string {
	var names []string
	for _, p := range sinks.Plugins() {
		names = append(names, p.Name)
	}
	switch len(names) {
	case 0:
		return "a registered sink"
	case 1:
		return names[0]
	}
	return strings.Join(names[:len(names)-1], ", ") + " or " + names[len(names)-1]
}

func typeName(goType string) string {
	switch goType {
	case "Duration", "time.Duration":
		return "duration (e.g. 500ms, 10s, 24h)"
	case "bool":
		return "boolean (true or false)"
	case "int":
		return "integer"
	}
	return goType
}

func (c *Config) validate() []string {
	var p []string
	for _, v := range fields(c, "") {
		if v.Required && os.Getenv(v.Name) == "" {
			p = append(p, fmt.Sprintf("%s is required: %s", v.Name, v.Description))
		}
	}
	bad := func(name, format string, args ...any) {
		msg := fmt.Sprintf(format, args...)
		if !strings.HasPrefix(msg, "=") {
			msg = " " + msg
		}
		p = append(p, Prefix+"_"+name+msg)
	}
	if c.SourceConnectionString != "" {
		if err := CheckConnectionString(c.SourceConnectionString); err != nil {
			bad("SOURCE_CONNECTION_STRING", "is not a valid connection string (%s): %s", Redact(c.SourceConnectionString), RedactErr(err, c.SourceConnectionString))
		}
	}
	if c.Subscriptions != "" {
		if _, err := ParseSubscriptions(c.Subscriptions); err != nil {
			bad("SUBSCRIPTIONS", "=%q: %v", c.Subscriptions, err)
		}
	}
	intRange := func(name string, v, lo, hi int) {
		if v < lo || v > hi {
			bad(name, "=%d is out of range: expected %d to %d", v, lo, hi)
		}
	}
	intRange("BUFFER_SIZE", c.BufferSize, 1, 100000)
	intRange("CONSUMERS_PER_SUBSCRIPTION", c.ConsumersPerSubscription, 1, 64)
	intRange("WRITERS", c.Writers, 1, 1024)
	intRange("BATCH_MAX_EVENTS", c.BatchMaxEvents, 1, 10000)
	intRange("BATCH_MAX_BYTES", c.BatchMaxBytes, 1024, 256<<20)
	intRange("WRITE_RETRIES", c.WriteRetries, 1, 1000)
	nonNegative := func(name string, d time.Duration) {
		if d < 0 {
			bad(name, "=%s must not be negative", d)
		}
	}
	nonNegative("REPLICATION_THROTTLE_INTERVAL", c.ReplicationThrottleInterval)
	if c.RetryBackoffMax < 50*time.Millisecond {
		bad("RETRY_BACKOFF_MAX", "=%s must be at least 50ms", c.RetryBackoffMax)
	}
	if c.RecoveryPointInterval != 0 && c.RecoveryPointInterval < time.Second {
		bad("RECOVERY_POINT_INTERVAL", "=%s must be 0 (off) or at least 1s", c.RecoveryPointInterval)
	}
	if c.ShutdownTimeout <= 0 {
		bad("SHUTDOWN_TIMEOUT", "=%s must be positive", c.ShutdownTimeout)
	}
	if c.MetricsAddress != "" {
		if _, _, err := net.SplitHostPort(c.MetricsAddress); err != nil {
			bad("METRICS_ADDRESS", "=%q is not a host:port listen address: %v", c.MetricsAddress, err)
		}
	}
	switch c.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		bad("LOG_LEVEL", "=%q: expected debug, info, warn or error", c.LogLevel)
	}
	switch c.LogFormat {
	case "json", "console":
	default:
		bad("LOG_FORMAT", "=%q: expected json or console", c.LogFormat)
	}
	p = append(p, c.checkConflicts()...)
	return append(p, c.compilePolicy()...)
}

// checkConflicts checks the active/active and conflict variables and sets
// c.Conflicts and the default of c.ConflictStream.
func (c *Config) checkConflicts() []string {
	var p []string
	var err error
	if c.Conflicts, err = conflict.Parse(c.ConflictPolicy); err != nil {
		p = append(p, fmt.Sprintf("%s_CONFLICT_POLICY=%q: %v", Prefix, c.ConflictPolicy, err))
	}
	switch {
	case c.ConflictStream != "" && err == nil && c.Conflicts != conflict.Stream:
		p = append(p, fmt.Sprintf("%s_CONFLICT_STREAM=%q is set, but %s_CONFLICT_POLICY=%s writes no conflicts stream: set %s_CONFLICT_POLICY=conflict-stream, or unset %s_CONFLICT_STREAM",
			Prefix, c.ConflictStream, Prefix, c.Conflicts, Prefix, Prefix))
	case strings.HasPrefix(c.ConflictStream, "$"):
		p = append(p, fmt.Sprintf("%s_CONFLICT_STREAM=%q: the conflicts stream must not start with '$' (system streams)", Prefix, c.ConflictStream))
	case strings.ContainsFunc(c.ConflictStream, func(r rune) bool { return r < ' ' || r == 0x7f }):
		p = append(p, fmt.Sprintf("%s_CONFLICT_STREAM=%q must not contain control characters", Prefix, c.ConflictStream))
	case c.ConflictStream == "":
		c.ConflictStream = conflict.StreamName(c.OriginName, c.DestinationName)
	}
	if c.Destinations != "" {
		// The policy stage runs before the fan-out, for every destination
		// at once.
		if c.DestinationName != "" {
			p = append(p, fmt.Sprintf("%s_DESTINATION_NAME=%q with %s_DESTINATIONS: an event from the named cluster would be dropped for every destination of the fan-out; run the link to that cluster as a deployment of its own",
				Prefix, c.DestinationName, Prefix))
		}
		if err == nil && c.Conflicts == conflict.Stream {
			p = append(p, fmt.Sprintf("%s_CONFLICT_POLICY=conflict-stream with %s_DESTINATIONS: the conflicts stream would be written to every destination, also those that took the event; use park or skip, or a deployment per destination",
				Prefix, Prefix))
		}
	}
	return p
}

// LoadPolicy reads and compiles only the selective-replication variables
// (with DITTO_SUBSCRIPTIONS), for commands such as ditto verify that need
// the policy ditto replicates under but not the rest of its settings.
func LoadPolicy() (*policy.Policy, error) {
	var c Config
	if err := process(&c); err != nil {
		return nil, err
	}
	if problems := c.compilePolicy(); len(problems) > 0 {
		return nil, &Error{Problems: problems}
	}
	return c.Policy, nil
}

// compilePolicy compiles the selective-replication variables into c.Policy.
func (c *Config) compilePolicy() []string {
	spec := policy.Spec{
		IncludeStreams: c.IncludeStreams, ExcludeStreams: c.ExcludeStreams,
		IncludeEventTypes: c.IncludeEventTypes, ExcludeEventTypes: c.ExcludeEventTypes,
		IncludeMetadata: c.IncludeMetadata, ExcludeMetadata: c.ExcludeMetadata,
		IncludeSystemEventTypes: c.IncludeSystemEventTypes,
		StreamTemplate:          c.StreamTemplate,
		Provenance:              c.Provenance,
		OriginName:              c.OriginName,
		DestinationName:         c.DestinationName,
	}
	for _, s := range c.SubscriptionList() {
		spec.Subscriptions = append(spec.Subscriptions, s.Stream)
	}
	pol, problems := policy.Compile(spec)
	c.Policy = pol
	if pol != nil && pol.Mode() == policy.Consolidated && c.CopyStreamMetadata {
		problems = append(problems, fmt.Sprintf("%s_COPY_STREAM_METADATA=true with %s_STREAM_TEMPLATE=%q: a consolidated stream has many source streams, whose metadata ditto cannot copy to one (DITTO_TIME_TO_LIVE still sets $maxAge)", Prefix, Prefix, c.StreamTemplate))
	}
	if c.CopyStreamACL && !c.CopyStreamMetadata {
		problems = append(problems, fmt.Sprintf("%s_COPY_STREAM_ACL=true needs %s_COPY_STREAM_METADATA=true", Prefix, Prefix))
	}
	return problems
}

// CheckConnectionString parses cs and checks what the client would only
// reject when connecting, over and over: userCertFile without userKeyFile
// (or the reverse), and a client certificate that does not load.
func CheckConnectionString(cs string) error {
	conf, err := esdb.ParseConnectionString(cs)
	if err != nil {
		return err
	}
	if err := conf.Validate(); err != nil {
		return err
	}
	if conf.UserCertFile != "" {
		if _, err := tls.LoadX509KeyPair(conf.UserCertFile, conf.UserKeyFile); err != nil {
			return fmt.Errorf("client certificate: %w", err)
		}
	}
	return nil
}

// SubscriptionList is the parsed DITTO_SUBSCRIPTIONS.
func (c *Config) SubscriptionList() []Subscription {
	subs, _ := ParseSubscriptions(c.Subscriptions)
	return subs
}

// ParseSubscriptions parses "stream:group,stream:group". A backslash escapes
// the next character, so names may contain ',' or ':'; an unescaped ':' splits
// stream from group at its last occurrence.
func ParseSubscriptions(s string) ([]Subscription, error) {
	var subs []Subscription
	seen := map[Subscription]bool{}
	for _, item := range splitEscaped(s, ',') {
		parts := splitEscaped(item, ':')
		if len(parts) < 2 {
			return nil, fmt.Errorf("%q is not stream:group", unescape(item))
		}
		stream := strings.Join(parts[:len(parts)-1], ":")
		sub := Subscription{Stream: strings.TrimSpace(unescape(stream)), Group: strings.TrimSpace(unescape(parts[len(parts)-1]))}
		if sub.Stream == "" || sub.Group == "" {
			return nil, fmt.Errorf("%q has an empty stream or group", unescape(item))
		}
		if seen[sub] {
			return nil, fmt.Errorf("%s is listed twice", sub)
		}
		seen[sub] = true
		subs = append(subs, sub)
	}
	if len(subs) == 0 {
		return nil, errors.New("no subscription given")
	}
	return subs, nil
}

// splitEscaped splits on sep where it is not preceded by a backslash; the
// escapes are kept for unescape.
func splitEscaped(s string, sep byte) []string {
	var out []string
	start := 0
	for i := 0; i < len(s); i++ {
		switch s[i] {
		case '\\':
			i++
		case sep:
			out = append(out, s[start:i])
			start = i + 1
		}
	}
	return append(out, s[start:])
}

func unescape(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+1 < len(s) {
			i++
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// PrintUsage writes every variable with its default and description: ditto's
// own, then each sink's under its name.
func PrintUsage(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "VARIABLE\tDEFAULT\tDESCRIPTION")
	for _, sec := range sections() {
		if sec.sink != nil {
			fmt.Fprintf(tw, "\nDITTO_SINK=%s: %s\n", sec.sink.Name, sec.sink.Summary)
		}
		for _, v := range sec.vars {
			def := v.Default
			if v.Required {
				def = "(required)"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\n", v.Name, def, v.Description)
		}
	}
	return tw.Flush()
}

// section is ditto's own variables (sink nil) or one sink's.
type section struct {
	sink *sinks.Plugin
	vars []Variable
}

func sections() []section {
	out := []section{{vars: fields(&Config{}, "")}}
	for _, p := range sinks.Plugins() {
		sec := section{sink: &p}
		if p.Settings != nil {
			sec.vars = fields(p.Settings(), p.Name)
		}
		out = append(out, sec)
	}
	return out
}

// Variable describes one environment variable.
type Variable struct {
	Name, Default, Description string
	Required, Secret           bool
	Sink                       string // the sink that reads it; "" for ditto's own
}

// Variables lists every environment variable ditto reads: its own in
// declaration order, then those of every registered sink, by sink name.
// Required sink variables are required only when DITTO_SINK names the sink.
func Variables() []Variable {
	var vars []Variable
	for _, sec := range sections() {
		vars = append(vars, sec.vars...)
	}
	return vars
}

// fields describes the variables of spec, a pointer to a settings struct.
func fields(spec any, sink string) []Variable {
	t := reflect.TypeOf(spec).Elem()
	vars := make([]Variable, 0, t.NumField())
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		if f.Tag.Get("ignored") == "true" || f.Tag.Get("envconfig") == "" {
			continue
		}
		vars = append(vars, Variable{
			Name:        Prefix + "_" + f.Tag.Get("envconfig"),
			Default:     f.Tag.Get("default"),
			Description: f.Tag.Get("desc"),
			Required:    f.Tag.Get("ditto") == "required",
			Secret:      f.Tag.Get("secret") == "true",
			Sink:        sink,
		})
	}
	return vars
}

// PrintMarkdown writes the variables as README's configuration tables:
// ditto's own, then one per sink.
func PrintMarkdown(w io.Writer) error {
	var b strings.Builder
	for _, sec := range sections() {
		if sec.sink != nil {
			fmt.Fprintf(&b, "\n`DITTO_SINK=%s` %s", sec.sink.Name, sec.sink.Summary)
			if len(sec.vars) == 0 {
				b.WriteString(" It has no settings of its own.\n")
				continue
			}
			b.WriteString("\n\n")
		}
		b.WriteString("| Variable | Default | Description |\n|---|---|---|\n")
		for _, v := range sec.vars {
			def := "`" + v.Default + "`"
			switch {
			case v.Required:
				def = "required"
			case v.Default == "":
				def = ""
			}
			fmt.Fprintf(&b, "| `%s` | %s | %s |\n", v.Name, def, strings.ReplaceAll(v.Description, "|", `\|`))
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}
