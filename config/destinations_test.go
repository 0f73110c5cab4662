package config

import (
	"os"
	"strings"
	"testing"
)

// fanOut is a valid fan-out configuration: two testsink destinations.
func fanOut() map[string]string {
	v := valid()
	delete(v, "DITTO_SINK")
	delete(v, "DITTO_TESTSINK_ENDPOINT")
	v["DITTO_DESTINATIONS"] = "east=testsink, west2=testsink"
	v["DITTO_EAST_TESTSINK_ENDPOINT"] = "https://127.0.0.1:1"
	v["DITTO_WEST2_TESTSINK_ENDPOINT"] = "https://127.0.0.1:2"
	v["DITTO_WEST2_TESTSINK_RECORDS"] = "7"
	return v
}

// setFanOut is setEnv that also clears the destinations' variables.
func setFanOut(t *testing.T, vars map[string]string) {
	t.Helper()
	for _, name := range []string{"EAST", "WEST2"} {
		for _, v := range []string{"ENDPOINT", "RECORDS"} {
			k := "DITTO_" + name + "_TESTSINK_" + v
			t.Setenv(k, "")
			os.Unsetenv(k)
		}
	}
	setEnv(t, vars)
	for k, v := range vars {
		if v == "" {
			os.Unsetenv(k)
		}
	}
}

func TestDestinationsLoadPrefixedSettings(t *testing.T) {
	setFanOut(t, fanOut())
	c, err := Load()
	if err != nil {
		t.Fatal(err)
	}
	if c.Sink != "" || c.SinkSettings != nil || len(c.DestinationList) != 2 {
		t.Fatalf("sink %q, settings %#v, destinations %+v", c.Sink, c.SinkSettings, c.DestinationList)
	}
	east, west := c.DestinationList[0], c.DestinationList[1]
	if east.Name != "east" || east.Sink != "testsink" || west.Name != "west2" || east.Prefix() != "DITTO_EAST" {
		t.Fatalf("destinations %+v", c.DestinationList)
	}
	es, ws := east.Settings.(*testSettings), west.Settings.(*testSettings)
	if es.Endpoint != "https://127.0.0.1:1" || es.Records != 500 || ws.Endpoint != "https://127.0.0.1:2" || ws.Records != 7 {
		t.Fatalf("settings east %+v, west2 %+v", es, ws)
	}
	if c.Writers != 256 {
		t.Fatalf("writers = %d, want testsink's 256", c.Writers)
	}
	if got := west.Rename("DITTO_TESTSINK_RECORDS=0 is out of range; DITTO_TESTSINK_RECORDSX and DITTO_BUFFER_SIZE stay"); got !=
		"DITTO_WEST2_TESTSINK_RECORDS=0 is out of range; DITTO_TESTSINK_RECORDSX and DITTO_BUFFER_SIZE stay" {
		t.Fatalf("Rename = %q", got)
	}
}

func TestDestinationsProblemsNameTheVariable(t *testing.T) {
	cases := []struct {
		name string
		set  map[string]string
		want []string
	}{
		{"with DITTO_SINK", map[string]string{"DITTO_SINK": "testsink"}, []string{"DITTO_DESTINATIONS and DITTO_SINK are both set"}},
		{"not name=sink", map[string]string{"DITTO_DESTINATIONS": "east"}, []string{`DITTO_DESTINATIONS="east": "east" is not name=sink`}},
		{"uppercase name", map[string]string{"DITTO_DESTINATIONS": "East=testsink"}, []string{`destination name "East" must be lowercase letters and digits`}},
		{"name with a dash", map[string]string{"DITTO_DESTINATIONS": "e-1=testsink"}, []string{`destination name "e-1" must be`}},
		{"empty name", map[string]string{"DITTO_DESTINATIONS": "=testsink"}, []string{`destination name "" must be`}},
		{"name twice", map[string]string{"DITTO_DESTINATIONS": "east=testsink,east=testsink"}, []string{"destination east is listed twice"}},
		{"unknown sink", map[string]string{"DITTO_DESTINATIONS": "east=testsink,west2=kafka2"}, []string{`destination west2: "kafka2" is not a known sink: expected testsink`}},
		{"only commas", map[string]string{"DITTO_DESTINATIONS": ",,"}, []string{`"" is not name=sink`}},
		{"setting missing", map[string]string{"DITTO_EAST_TESTSINK_ENDPOINT": ""}, []string{"DITTO_EAST_TESTSINK_ENDPOINT is required for destination east (east=testsink)"}},
		{"setting invalid", map[string]string{"DITTO_WEST2_TESTSINK_RECORDS": "501"}, []string{"DITTO_WEST2_TESTSINK_RECORDS=501 is out of range"}},
		{"setting not a number", map[string]string{"DITTO_EAST_TESTSINK_RECORDS": "many"}, []string{`DITTO_EAST_TESTSINK_RECORDS="many" is not a valid integer`}},
		{"un-prefixed setting", map[string]string{"DITTO_TESTSINK_RECORDS": "9"}, []string{"DITTO_TESTSINK_RECORDS is set, but with DITTO_DESTINATIONS each destination reads its own (DITTO_EAST_TESTSINK_RECORDS for destination east)"}},
		{"several at once", map[string]string{"DITTO_EAST_TESTSINK_ENDPOINT": "", "DITTO_WEST2_TESTSINK_RECORDS": "0", "DITTO_BUFFER_SIZE": "0"},
			[]string{"DITTO_EAST_TESTSINK_ENDPOINT is required", "DITTO_WEST2_TESTSINK_RECORDS=0", "DITTO_BUFFER_SIZE=0"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			vars := fanOut()
			for k, v := range tc.set {
				vars[k] = v
			}
			setFanOut(t, vars)
			_, err := Load()
			for _, w := range tc.want {
				if err == nil || !strings.Contains(err.Error(), w) {
					t.Fatalf("error %v, want it to contain %q", err, w)
				}
			}
		})
	}
}

// A destination may be called like its sink: its variables are then
// DITTO_TESTSINK_TESTSINK_..., apart from the sink's own.
func TestDestinationNamedLikeItsSink(t *testing.T) {
	vars := fanOut()
	vars["DITTO_DESTINATIONS"] = "testsink=testsink"
	vars["DITTO_TESTSINK_TESTSINK_ENDPOINT"] = "https://127.0.0.1:3"
	setFanOut(t, vars)
	c, err := Load()
	if err != nil {
		t.Fatal(err)
	}
	if s := c.DestinationList[0].Settings.(*testSettings); s.Endpoint != "https://127.0.0.1:3" {
		t.Fatalf("settings %+v", s)
	}
}

func TestDestinationsReadOnlyReadsNoSettings(t *testing.T) {
	vars := fanOut()
	vars["DITTO_READ_ONLY"] = "true"
	vars["DITTO_EAST_TESTSINK_ENDPOINT"] = ""
	setFanOut(t, vars)
	c, err := Load()
	if err != nil {
		t.Fatal(err)
	}
	if len(c.DestinationList) != 2 || c.DestinationList[0].Settings != nil {
		t.Fatalf("destinations %+v", c.DestinationList)
	}
}
