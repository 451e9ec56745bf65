package config

import (
	"reflect"
	"testing"
)

// The embedded default file restates some defaults of [log], [proxy],
// [dns] and [metrics] for operators to read; they must be the parser's
// own (an empty file), so that config holds each default once.
func TestDefaultFileRestatesDefaults(t *testing.T) {
	empty, err := Parse("", nil)
	if err != nil {
		t.Fatal(err)
	}
	def := Default()
	for _, c := range []struct {
		name      string
		got, want any
	}{
		{"[log]", def.Log, empty.Log},
		{"[proxy]", def.Proxy, empty.Proxy},
		{"[dns]", def.DNS, empty.DNS},
		{"[metrics]", def.Metrics, empty.Metrics},
		{"timezone", def.Timezone, empty.Timezone},
		{"default_action", def.DefaultAction, empty.DefaultAction},
		{"block_canaries", def.BlockCanaries, empty.BlockCanaries},
	} {
		if !reflect.DeepEqual(c.got, c.want) {
			t.Errorf("%s of the embedded default = %+v, want the parser's default %+v", c.name, c.got, c.want)
		}
	}
}

// Schedules are parsed once, by Parse: Spec hands the engine the windows
// kept in Schedule.Parsed, not the text (changing the text after Parse
// changes nothing).
func TestScheduleParsedOnce(t *testing.T) {
	c := mustParse(t, "", "[[schedule]]\nname = \"pauses\"\nwindows = [\"mon-fri 12:00-13:00\"]\n")
	want := c.Schedules[0].Parsed
	c.Schedules[0].Windows = []string{"not a window"}
	spec, err := c.Spec()
	if err != nil {
		t.Fatalf("Spec: %v", err)
	}
	if len(spec.Schedules) != 1 || !reflect.DeepEqual(spec.Schedules[0].Windows, want) {
		t.Errorf("Spec schedules = %+v, want %+v", spec.Schedules, want)
	}
}

// ServiceHosts is what the last Spec built: nil before, the first domain
// of every listed service after, without reading anything again.
func TestServiceHostsFromSpec(t *testing.T) {
	c := mustParse(t, "", "[[list]]\nname = \"jeux\"\ncategory = \"games\"\ndomains = [\"zz.example\", \"jeu.example\"]\n")
	if h := c.ServiceHosts(); h != nil {
		t.Errorf("ServiceHosts before Spec = %v, want nil", h)
	}
	p, err := c.Compile()
	if err != nil {
		t.Fatal(err)
	}
	h := c.ServiceHosts()
	if h["jeux"] != "jeu.example" {
		t.Errorf(`ServiceHosts()["jeux"] = %q, want "jeu.example"`, h["jeux"])
	}
	for _, id := range p.ServiceIDs() {
		if h[id] == "" {
			t.Errorf("service %q has no host", id)
		}
	}
	if len(h) != len(p.ServiceIDs()) {
		t.Errorf("ServiceHosts has %d services, the policy %d", len(h), len(p.ServiceIDs()))
	}
}
