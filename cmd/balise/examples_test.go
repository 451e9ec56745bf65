package main

import (
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/balise-net/balise/config"
	"github.com/balise-net/balise/internal/policy"
)

// scenario is one question to an example configuration and the answer its
// institution's policy calls for.
type scenario struct {
	why           string // the policy's words, or what is checked
	client, host  string
	at            string
	verdict       string
	service, rule string
	reason        string
	until         string // "*" = not checked
}

func runScenarios(t *testing.T, file string, scenarios []scenario) {
	t.Helper()
	path := filepath.Join("..", "..", "deploy", "examples", file)
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	p, err := cfg.Compile()
	if err != nil {
		t.Fatalf("%s: compile: %v", file, err)
	}
	if _, stderr, code := runCmd("check", "--config", path); code != 0 {
		t.Errorf("balise check --config %s = %d, want 0; stderr:\n%s", path, code, stderr)
	}
	for _, s := range scenarios {
		r, err := explain(cfg, p, explainInput{Client: netip.MustParseAddr(s.client), Host: s.host, At: mustTime(t, s.at)})
		if err != nil {
			t.Errorf("%s: explain(%s, %s): %v", file, s.client, s.host, err)
			continue
		}
		q := policy.Query{Host: s.host, Client: netip.MustParseAddr(s.client), Time: mustTime(t, s.at)}
		if d := p.Decide(q); d.Verdict.String() != r.Verdict || d.Rule != r.Rule || d.Reason.String() != r.Reason || !slices.Equal(p.GroupsOf(q), r.Groups) {
			t.Errorf("%s: explain(%s, %s) = %+v disagrees with Decide %+v, groups %v", file, s.client, s.host, r, d, p.GroupsOf(q))
		}
		if r.Verdict != s.verdict || r.Service != s.service || r.Rule != s.rule || r.Reason != s.reason || (s.until != "*" && r.Until != s.until) {
			t.Errorf("%s: %s\nexplain(%s, %s, %s) = %s service=%q rule=%q reason=%s until=%q\nwant %s service=%q rule=%q reason=%s until=%q",
				file, s.why, s.client, s.host, s.at, r.Verdict, r.Service, r.Rule, r.Reason, r.Until,
				s.verdict, s.service, s.rule, s.reason, s.until)
		}
	}
}

// Tuesday 2026-05-12 is a working day (EDT, UTC-4).
const (
	tue0800 = "2026-05-12T08:00:00-04:00"
	tue1005 = "2026-05-12T10:05:00-04:00"
	tue1230 = "2026-05-12T12:30:00-04:00"
	tue1400 = "2026-05-12T14:00:00-04:00"
	tue1700 = "2026-05-12T17:00:00-04:00"
	sat1000 = "2026-05-16T10:00:00-04:00"
	sun0300 = "2026-05-17T03:00:00-04:00"
)

func TestExampleCoteNord(t *testing.T) {
	const staff, drhcaj, media, wifi, patient = "10.10.5.20", "10.10.30.5", "10.10.31.9", "10.11.4.4", "10.12.8.8"
	runScenarios(t, "cote-nord.toml", []scenario{
		{"bloqué sur tous les postes de travail: at lunch too (no break window)", staff, "www.facebook.com", tue1230, "block", "facebook", "postes", "rule", "2026-05-13T12:30:00-04:00"},
		{"bloqué sur tous les postes: at a break", staff, "www.instagram.com", tue1005, "block", "instagram", "postes", "rule", "*"},
		{"bloqué sur tous les postes: outside work hours", staff, "www.youtube.com", sat1000, "block", "youtube", "postes", "rule", "*"},
		{"utilisateurs autorisés (DRHCAJ)", drhcaj, "www.facebook.com", tue1400, "allow", "facebook", "autorises", "rule", "2026-05-13T14:00:00-04:00"},
		{"utilisateurs autorisés (relations médias)", media, "www.linkedin.com", sun0300, "allow", "linkedin", "autorises", "rule", "*"},
		{"authorized users do not get DNS-over-HTTPS bypasses (\"*\" never reaches doh)", drhcaj, "doh.cleanbrowsing.org", tue1400, "block", "doh", "", "default", "*"},
		{"nor Firefox's TRR", drhcaj, "mozilla.cloudflare-dns.com", tue1400, "block", "doh", "", "default", "*"},
		{"patients' \"*\" allow does not open DoH either", patient, "dns.google", tue1400, "block", "doh", "", "default", "*"},
		{"personal devices on the staff Wi-Fi are not restricted", wifi, "www.instagram.com", tue1400, "allow", "instagram", "wifi-personnel", "rule", "*"},
		{"usagers are not bound by the policy", patient, "www.tiktok.com", tue1400, "allow", "tiktok", "patients", "rule", "*"},
		{"encyclopedias are not named: Wikipedia stays reachable", staff, "fr.wikipedia.org", tue1400, "allow", "", "", "unlisted", ""},
		{"the browser DoH canary is blocked for everyone", patient, "use-application-dns.net", tue1400, "block", "", "", "canary", "*"},
		{"an unknown network falls to default_action", "192.0.2.44", "www.facebook.com", tue1230, "block", "facebook", "", "default", "*"},
	})
}

func TestExampleEstrie(t *testing.T) {
	const staff, staff6, comms, wifi, patient = "10.20.5.17", "2001:db8:20:5::17", "10.20.30.12", "10.21.7.7", "10.22.3.3"
	runScenarios(t, "estrie.toml", []scenario{
		{"autorisée pendant l'heure du dîner", staff, "www.facebook.com", tue1230, "allow", "facebook", "pauses", "rule", "2026-05-12T13:00:00-04:00"},
		{"interdite durant les heures de travail (until the 14:30 break)", staff, "www.facebook.com", tue1400, "block", "facebook", "heures-de-travail", "rule", "2026-05-12T14:30:00-04:00"},
		{"IPv6 workstation, same rule", staff6, "www.facebook.com", tue1400, "block", "facebook", "heures-de-travail", "rule", "2026-05-12T14:30:00-04:00"},
		{"autorisée pendant les pauses", staff, "www.reddit.com", tue1005, "allow", "reddit", "pauses", "rule", "2026-05-12T10:15:00-04:00"},
		{"the night shift's meal crosses midnight", staff, "www.facebook.com", "2026-05-13T00:15:00-04:00", "allow", "facebook", "pauses", "rule", "2026-05-13T00:30:00-04:00"},
		{"édimestres and communications: allowed at work", comms, "www.facebook.com", tue1400, "allow", "facebook", "autorises", "rule", "*"},
		{"communications: no DNS-over-HTTPS bypass", comms, "doh.opendns.com", tue1400, "block", "doh", "", "default", "*"},
		{"communications: no DoH at lunch either", comms, "dns.nextdns.io", tue1230, "block", "doh", "", "default", "*"},
		{"staff: the pauses rule does not open DoH", staff, "dns.google", tue1230, "block", "doh", "", "default", "*"},
		{"les encyclopédies collaboratives (Wikipedia)", staff, "fr.wikipedia.org", tue1400, "block", "wikipedia", "heures-de-travail", "rule", "*"},
		{"Wikipedia during a break", staff, "fr.wikipedia.org", tue1005, "allow", "wikipedia", "pauses", "rule", "2026-05-12T10:15:00-04:00"},
		{"les balados (podcasts)", staff, "podcasts.apple.com", tue1400, "block", "apple-podcasts", "heures-de-travail", "rule", "*"},
		{"les zones de commentaires", staff, "disqus.com", tue1400, "block", "media-comments", "heures-de-travail", "rule", "*"},
		{"technologies émergentes: the local list", staff, "bereal.com", tue1400, "block", "emergents", "heures-de-travail", "rule", "*"},
		{"WhatsApp, Telegram, WeChat: messaging", staff, "web.whatsapp.com", tue1400, "block", "whatsapp", "heures-de-travail", "rule", "*"},
		{"personal devices on the staff Wi-Fi", wifi, "www.facebook.com", tue1400, "allow", "facebook", "wifi-personnel", "rule", "*"},
		{"usagers are not bound by the regulation", patient, "www.tiktok.com", tue1400, "allow", "tiktok", "patients", "rule", "*"},
		{"embedded training videos stay reachable", staff, "player.vimeo.com", tue1400, "allow", "vimeo", "", "allowlist", "*"},
		{"the rest of the web is untouched", staff, "www.santeestrie.qc.ca", tue1400, "allow", "", "", "unlisted", ""},
	})
}

func TestExampleGaspesie(t *testing.T) {
	const staff, comms, phone, wifi, patient = "10.30.5.5", "10.30.30.4", "10.30.200.7", "10.31.2.2", "10.32.1.1"
	runScenarios(t, "gaspesie.toml", []scenario{
		{"utilisateurs autorisés durant leurs heures de travail", comms, "www.facebook.com", tue1005, "allow", "facebook", "autorises", "rule", "2026-05-12T16:30:00-04:00"},
		{"authorized users outside their work hours", comms, "www.facebook.com", tue1700, "block", "facebook", "postes", "rule", "2026-05-13T08:30:00-04:00"},
		{"authorized users before 8:30", comms, "www.facebook.com", tue0800, "block", "facebook", "postes", "rule", "2026-05-12T08:30:00-04:00"},
		{"authorized users on saturday (until bounded to 24 h)", comms, "www.facebook.com", sat1000, "block", "facebook", "postes", "rule", "2026-05-17T10:00:00-04:00"},
		{"le téléphone intelligent fourni par l'établissement", phone, "www.linkedin.com", tue1400, "allow", "linkedin", "autorises", "rule", "*"},
		{"authorized users: no DNS-over-HTTPS bypass", comms, "cloudflare-dns.com", tue1005, "block", "doh", "", "default", "*"},
		{"seuls les membres du personnel autorisés: no break window", staff, "www.facebook.com", tue1230, "block", "facebook", "postes", "rule", "*"},
		{"proscrite … sur les équipements personnels durant les heures de travail", wifi, "www.facebook.com", tue1230, "block", "facebook", "wifi-heures-de-travail", "rule", "2026-05-12T16:30:00-04:00"},
		{"personal devices after work hours", wifi, "www.facebook.com", tue1700, "allow", "facebook", "wifi-hors-heures", "rule", "2026-05-13T08:30:00-04:00"},
		{"personal devices on saturday", wifi, "www.youtube.com", sat1000, "allow", "youtube", "wifi-hors-heures", "rule", "*"},
		{"usagers are not bound by the policy", patient, "www.facebook.com", tue1230, "allow", "facebook", "patients", "rule", "*"},
		{"encyclopedias are not named", staff, "fr.wikipedia.org", tue1230, "allow", "", "", "unlisted", ""},
	})
}

func TestExampleIUCPQ(t *testing.T) {
	const staff, comms, wifi, patient = "10.40.5.5", "10.40.30.3", "10.41.9.9", "10.42.6.6"
	runScenarios(t, "iucpq.toml", []scenario{
		{"pas accessible à partir d'une station informatique", staff, "www.facebook.com", tue1230, "block", "facebook", "stations", "rule", "2026-05-13T12:30:00-04:00"},
		{"les encyclopédies en ligne (Wikipedia, etc.)", staff, "fr.wikipedia.org", tue1400, "block", "wikipedia", "stations", "rule", "*"},
		{"les outils de communications électroniques", staff, "web.whatsapp.com", tue1400, "block", "whatsapp", "stations", "rule", "*"},
		{"seuls les utilisateurs autorisés", comms, "fr.wikipedia.org", tue1400, "allow", "wikipedia", "autorises", "rule", "*"},
		{"authorized users at night", comms, "www.youtube.com", sun0300, "allow", "youtube", "autorises", "rule", "*"},
		{"authorized users: no DNS-over-HTTPS bypass", comms, "private.canadianshield.cira.ca", tue1400, "block", "doh", "", "default", "*"},
		{"bien personnel: the staff Wi-Fi", wifi, "www.facebook.com", tue1400, "allow", "facebook", "wifi-personnel", "rule", "*"},
		{"usagers are not bound by the charter", patient, "www.facebook.com", tue1400, "allow", "facebook", "patients", "rule", "*"},
	})
}

// TestExplainDoH: explain says why a DNS-over-HTTPS endpoint stays blocked
// for a group whose rule allows "*" (reason default, not default_action).
func TestExplainDoH(t *testing.T) {
	path := filepath.Join("..", "..", "deploy", "examples", "estrie.toml")
	out, stderr, code := runCmd("explain", "--config", path, "--client", "10.20.30.12", "--host", "dns.google", "--at", tue1400)
	if code != 0 {
		t.Fatalf("explain = %d\n%s", code, stderr)
	}
	for _, want := range []string{"verdict   block", "category  doh", "reason    default: no rule names the doh category or service"} {
		if !strings.Contains(out, want) {
			t.Errorf("explain dns.google for the authorized group:\n%s\nwant a line with %q", out, want)
		}
	}
}
