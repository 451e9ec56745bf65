package config

import (
	"strings"
	"testing"
	"time"

	"github.com/balise-net/balise/internal/policy"
)

const creditGroups = `
[exceptions]

[[group]]
name = "personnel"
networks = ["10.0.0.0/8"]
`

func TestCreditParse(t *testing.T) {
	c := mustParse(t, "/etc/balise/balise.toml", creditGroups+`
[[credit]]
name = "pause-quart"
groups = ["personnel"]
categories = ["networking", "media-sharing"]
services = ["twitter"]
minutes = 30
per = "12h"

[[credit]]
name = "test"
groups = ["*"]
services = ["facebook"]
minutes = 0.1
`)
	if len(c.Credits) != 2 {
		t.Fatalf("Credits = %+v", c.Credits)
	}
	a, b := c.Credits[0], c.Credits[1]
	if a.Name != "pause-quart" || a.Minutes != 30*time.Minute || a.Per != 12*time.Hour || len(a.Categories) != 2 || len(a.Services) != 1 {
		t.Errorf("credit 1 = %+v", a)
	}
	if b.Minutes != 6*time.Second || b.Per != defaultCreditPer {
		t.Errorf("credit 2 = %+v, want 6s per the default window", b)
	}
	if !a.Covers(policy.Service{ID: "instagram", Category: "media-sharing"}) || a.Covers(policy.Service{ID: "dns.google", Category: "doh"}) ||
		a.Covers(policy.Service{ID: "linkedin", Category: "professional"}) {
		t.Error("Covers")
	}
	if got := c.CreditFor(policy.Service{ID: "facebook", Category: "networking"}, nil); len(got) != 1 || got[0].Name != "test" {
		t.Errorf("CreditFor(no group) = %+v, want the credit for everyone", got)
	}
	if got := c.CreditFor(policy.Service{ID: "facebook", Category: "networking"}, []string{"personnel"}); len(got) != 2 {
		t.Errorf("CreditFor(personnel) = %+v, want both", got)
	}
}

func TestCreditProblems(t *testing.T) {
	for _, tc := range []struct{ name, body, want string }{
		{"doh category", `categories = ["doh"]`, `credit.toml:11:15: credit[0].categories[0]: a credit never covers "doh"`},
		{"doh service", `services = ["doh"]`, `credit[0].services[0]: a credit never covers "doh"`},
		{"canaries", `categories = ["canaries"]`, `canaries`},
		{"nothing covered", ``, `covers nothing`},
		{"minutes zero", "services = [\"facebook\"]\nminutes = 0", `credit[0].minutes`},
		{"minutes longer than per", "services = [\"facebook\"]\nminutes = 90\nper = \"1h\"", `longer than the window`},
		{"minutes not a number", "services = [\"facebook\"]\nminutes = \"30\"", `credit[0].minutes: must be a number of minutes`},
		{"unknown group", "services = [\"facebook\"]\ngroups = [\"nobody\"]", `unknown group`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			groups := ""
			if !strings.Contains(tc.body, "groups") {
				groups = "groups = [\"personnel\"]\n"
			}
			doc := creditGroups + "\n[[credit]]\nname = \"p\"\n" + groups + tc.body + "\n"
			_, err := Parse("credit.toml", []byte(doc))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Parse:\n%s\nerror %v, want it to contain %q", doc, err, tc.want)
			}
		})
	}
}

func TestCreditNeedsExceptions(t *testing.T) {
	doc := "[[credit]]\nname = \"p\"\ngroups = [\"*\"]\nservices = [\"facebook\"]\n"
	if _, err := Parse("credit.toml", []byte(doc)); err == nil || !strings.Contains(err.Error(), "credit.toml:1:1: credit[0]: credit \"p\" needs [exceptions]") {
		t.Fatalf("Parse without [exceptions]: %v", err)
	}
}
