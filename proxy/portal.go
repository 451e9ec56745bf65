package proxy

import (
	"bytes"
	"context"
	"fmt"
	"html/template"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/balise-net/balise/internal/policy"
)

// servePortal answers requests addressed to the proxy itself: the PAC
// file, the portal page and the reserved path.
func (p *Proxy) servePortal(w http.ResponseWriter, r *http.Request) {
	client := clientAddr(r.RemoteAddr)
	switch {
	case strings.HasPrefix(r.URL.Path, ReservedPath):
		p.serveReserved(w, r, client)
	case r.URL.Path == SignInPath:
		p.serveSignIn(w, r, client)
	case r.URL.Path == "/proxy.pac" || r.URL.Path == "/wpad.dat":
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		pac := p.pacFile(r.Host)
		w.Header().Set("Content-Type", "application/x-ns-proxy-autoconfig")
		w.Header().Set("Cache-Control", "max-age=300")
		w.Header().Set("Content-Length", strconv.Itoa(len(pac)))
		if r.Method == http.MethodGet {
			w.Write(pac)
		}
	case r.URL.Path == "/":
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		body := p.portalPage(client, p.opts.Clock(), r.Header.Get("Accept-Language"), r.URL.Query().Get("service"))
		h := w.Header()
		h.Set("Content-Type", "text/html; charset=utf-8")
		h.Set("Cache-Control", "no-store")
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; frame-ancestors 'none'")
		h.Set("Content-Length", strconv.Itoa(len(body)))
		if r.Method == http.MethodGet {
			w.Write(body)
		}
	default:
		http.NotFound(w, r)
	}
}

// pacFile generates the proxy auto-configuration script. requestHost is
// the address the client fetched it from, used when PACProxy is unset.
func (p *Proxy) pacFile(requestHost string) []byte {
	cfg := p.cfg()
	proxyAddr := cfg.PACProxy
	if proxyAddr == "" {
		proxyAddr = requestHost
	}
	if !validPACAddr(proxyAddr) {
		proxyAddr = "127.0.0.1:3128"
	}
	var b bytes.Buffer
	b.WriteString("// Balise proxy auto-configuration. Internal names and networks go DIRECT.\n")
	b.WriteString("function FindProxyForURL(url, host) {\n")
	b.WriteString("  if (isPlainHostName(host) || host == \"localhost\" || shExpMatch(host, \"127.*\") || host == \"::1\" || host == \"[::1]\") return \"DIRECT\";\n")
	for _, d := range cfg.DirectDomains {
		n, err := policy.NormalizeHost(d)
		if err != nil || !validPACName(n) {
			continue
		}
		fmt.Fprintf(&b, "  if (host == %q || dnsDomainIs(host, %q)) return \"DIRECT\";\n", n, "."+n)
	}
	if len(cfg.DirectNetworks) > 0 {
		b.WriteString("  var ip = dnsResolve(host);\n")
		for _, n := range cfg.DirectNetworks {
			n = n.Masked()
			if n.Addr().Is4() {
				mask := net.CIDRMask(n.Bits(), 32)
				fmt.Fprintf(&b, "  if (ip && isInNet(ip, %q, %q)) return \"DIRECT\";\n", n.Addr().String(), net.IP(mask).String())
			} else {
				fmt.Fprintf(&b, "  if (typeof isInNetEx == \"function\" && isInNetEx(host, %q)) return \"DIRECT\";\n", n.String())
			}
		}
	}
	fmt.Fprintf(&b, "  return %q;\n}\n", "PROXY "+proxyAddr)
	return b.Bytes()
}

func validPACName(s string) bool {
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '.' || c == '_') {
			return false
		}
	}
	return s != ""
}

func validPACAddr(s string) bool {
	host, port, err := net.SplitHostPort(s)
	if err != nil || port == "" {
		return false
	}
	if _, err := strconv.ParseUint(port, 10, 16); err != nil {
		return false
	}
	if a, err := netip.ParseAddr(host); err == nil {
		return a.IsValid()
	}
	return validPACName(strings.ToLower(host))
}

// serviceHost returns a host to decide on for a service: from the
// options, the service's own list, or one seen in traffic.
func (p *Proxy) serviceHost(id string, svc policy.Service) string {
	if m := p.serviceHosts.Load(); m != nil && (*m)[id] != "" {
		return (*m)[id]
	}
	if len(svc.Domains) > 0 {
		return svc.Domains[0]
	}
	if h, ok := p.seenHosts.Load(id); ok {
		return h.(string)
	}
	return ""
}

var portalTmpl = template.Must(template.New("portal").Parse(`<!DOCTYPE html>
<html lang="{{.Lang}}">
<head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>Balise</title>
<style>
body{margin:0;background:#f4f6f8;color:#1f2a36;font:16px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,Arial,sans-serif}
main{max-width:48rem;margin:2rem auto;padding:0 1rem}
h1{font-size:1.35rem;color:#0b3d62}
table{border-collapse:collapse;width:100%;background:#fff}
th,td{border:1px solid #d7dde3;padding:.4rem .6rem;text-align:left;vertical-align:top}
.allow{color:#2e7d4f;font-weight:600}.block{color:#a12622;font-weight:600}
.small{color:#52606d;font-size:.9rem}
</style></head>
<body><main>
{{if .Institution}}<p class="small">{{.Institution}}</p>{{end}}
<h1>{{if eq .Lang "en"}}What this workstation can reach now / Ce que ce poste peut joindre maintenant{{else}}Ce que ce poste peut joindre maintenant / What this workstation can reach now{{end}}</h1>
<p class="small">{{.Client}} — {{.Now}}</p>
{{if .NextBreakFR}}<p>{{if eq .Lang "en"}}{{.NextBreakEN}} / {{.NextBreakFR}}{{else}}{{.NextBreakFR}} / {{.NextBreakEN}}{{end}}</p>{{end}}
<table>
<tr><th>Service</th><th>Catégorie / Category</th><th>Maintenant / Now</th><th>Prochaine ouverture / Next opening</th></tr>
{{range .Rows}}<tr><td>{{.Name}}</td><td>{{.Category}}</td><td class="{{.Class}}">{{.Now}}</td><td>{{.Next}}{{if .Ask}} <a href="{{.Ask}}">Demander une exception / Request an exception</a>{{end}}</td></tr>
{{end}}</table>
{{if .Credit}}<section id="pause">{{.Credit}}</section>{{end}}
{{if .Form}}<section id="demande">{{.Form}}</section>{{end}}
<p class="small">Balise</p>
</main></body></html>
`))

// creditPanel is the register's break-credit list on the portal (an
// Exceptions that has one): the credit next to the scheduled windows.
type creditPanel interface {
	CreditPanel(ctx context.Context, client netip.Addr, lang string) template.HTML
}

type portalRow struct {
	Name, Category, Class, Now, Next string
	// Ask links to the exception-request form for a blocked service
	// ("" when the register is off or the service is reachable).
	Ask string
}

// portalPage shows the caller which listed services it may reach now
// and when the next break opens. When the exception register is on, each
// blocked service links to its request form, shown below the table when
// ask names that service (the form posts to the reserved path, which the
// portal answers too).
func (p *Proxy) portalPage(client netip.Addr, now time.Time, acceptLanguage, ask string) []byte {
	pol := p.opts.Policy.Load()
	var w who // the person signed in from this address, when exactly one is
	if a := p.cfg().Auth; a != nil && p.cfg().authClient(client) {
		if u, g, ok := a.Bound(client, now); ok {
			w = who{user: u, groups: g}
		}
	}
	data := struct {
		Lang, Institution, Client, Now, NextBreakFR, NextBreakEN string
		Rows                                                     []portalRow
		Form, Credit                                             template.HTML
	}{Lang: "fr", Institution: p.cfg().Institution, Client: client.String()}
	if preferEnglish(acceptLanguage) {
		data.Lang = "en"
	}
	if cp, ok := p.opts.Exceptions.(creditPanel); ok {
		data.Credit = cp.CreditPanel(context.Background(), client, data.Lang)
	}
	loc := pol.Location()
	data.Now = now.In(loc).Format("2006-01-02 15:04")
	var next time.Time
	for _, id := range pol.ServiceIDs() {
		svc, ok := pol.LookupService(id)
		if !ok {
			continue
		}
		name := svc.Name
		if name == "" {
			name = svc.ID
		}
		row := portalRow{Name: name, Category: svc.Category}
		host := p.serviceHost(id, svc)
		var d policy.Decision
		if host != "" {
			d = pol.Decide(w.query(host, client, now))
		}
		if d.Service != id {
			row.Now = "—"
			data.Rows = append(data.Rows, row)
			continue
		}
		if d.Verdict == policy.Allow {
			row.Class, row.Now = "allow", "autorisé / allowed"
		} else {
			row.Class, row.Now = "block", "bloqué / blocked"
			if p.opts.Exceptions != nil {
				row.Ask = "/?service=" + url.QueryEscape(id) + "#demande"
				if id == ask {
					data.Form = p.opts.Exceptions.Form(client, d, host, data.Lang)
				}
			}
			if at, ok := nextOpening(pol, policy.Query{Host: host, Client: client, Time: now}, d); ok {
				fr, en := reopenText(at, now, loc)
				row.Next = fr + " / " + en
				if next.IsZero() || at.Before(next) {
					next = at
				}
			}
		}
		data.Rows = append(data.Rows, row)
	}
	sort.SliceStable(data.Rows, func(i, j int) bool { return data.Rows[i].Name < data.Rows[j].Name })
	if !next.IsZero() {
		fr, en := reopenText(next, now, loc)
		data.NextBreakFR = "Prochaine ouverture : " + strings.TrimPrefix(fr, "Accès possible ")
		data.NextBreakEN = "Next opening: " + strings.TrimPrefix(en, "Access possible ")
	}
	var b bytes.Buffer
	if err := portalTmpl.Execute(&b, data); err != nil {
		return []byte("<!DOCTYPE html><title>Balise</title><p>Balise</p>")
	}
	return b.Bytes()
}
